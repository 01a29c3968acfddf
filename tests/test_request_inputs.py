"""Inputs as diffusers treats them, at the Request boundary (API and CLI alike): sizes
from images, guidance >= 0, strength that leaves a step; the shared size parser; the
A1111 parameters text."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.errors import InputError
from sdrt.infotext import GenerationParameters, quote, sampler_name
from sdrt.manifest import read_manifest
from sdrt.request import fit_size
from sdrt.schedulers import create_scheduler
from sdrt.sizes import Size, parse_size

FAST = dict(num_inference_steps=2, output_type="np", seed=0)


@pytest.fixture(scope="module")
def pipe(tiny_built):
    return sdrt.Pipeline.load(tiny_built)


@pytest.fixture(scope="module")
def manifest(tiny_built):
    return read_manifest(tiny_built)


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", Size(512, 512)), ("512x768", Size(512, 768)), (" 64 X 128 ", Size(64, 128))],
)
def test_parse_size(text, size):
    assert parse_size(text) == size
    assert parse_size(text).label == f"{size.width}x{size.height}"


@pytest.mark.parametrize("text", ["", "x", "64x", "x64", "64x64x64", "1.5", "-64", "²", "0", "0x8"])
def test_parse_size_rejects(text):
    with pytest.raises(InputError, match=r"^--size: expected"):
        parse_size(text)


def test_parse_size_names_the_option():
    with pytest.raises(InputError, match=r"^--static: expected N or WxH pixels"):
        parse_size("big", option="--static")


def _built(manifest, min_size, max_size, multiple=8):
    build = dataclasses.replace(
        manifest.build, min_size=min_size, max_size=max_size, size_multiple=multiple
    )
    return dataclasses.replace(manifest, build=build)


@pytest.mark.parametrize(
    ("image", "built", "fitted"),
    [
        ((70, 100), (64, 256, 8), (64, 96)),  # in range: rounded down, as VaeImageProcessor
        ((1024, 512), (64, 256, 8), (256, 128)),  # too large: scaled down, aspect kept
        ((8000, 6000), (256, 1024, 8), (1024, 768)),
        ((40, 50), (64, 256, 8), (64, 80)),  # too small: scaled up
        ((1000, 999), (64, 256, 64), (256, 192)),  # rounded down to the multiple after scaling
    ],
)
def test_fit_size(manifest, image, built, fitted):
    assert fit_size(*image, _built(manifest, *built)) == fitted


def test_fit_size_rejects_an_aspect_the_range_cannot_hold(manifest):
    with pytest.raises(InputError, match=r"got a 2000x40 image; pass height= and width="):
        fit_size(2000, 40, _built(manifest, 64, 256))


def test_a_large_image_is_scaled_into_the_built_range(pipe):
    image = Image.new("RGB", (1024, 512), (120, 60, 30))
    out = pipe("a fox", image=image, **FAST).images
    assert out.shape == (1, 128, 256, 3)
    out = pipe("a fox", image=image, height=64, width=128, **FAST).images  # as diffusers: resized
    assert out.shape == (1, 64, 128, 3)


# ------------------------------------------------------------------- guidance, strength


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(guidance_scale=-0.5), r"guidance_scale: expected a number >= 0 .*, got -0.5"),
        (
            dict(image=Image.new("RGB", (64, 64)), num_inference_steps=1, strength=0.3),
            r"strength: 0.3 of num_inference_steps 1 leaves no denoising step",
        ),
        (
            dict(image=Image.new("RGB", (64, 64)), num_inference_steps=3, strength=0.3),
            r"int\(3 \* 0.3\) = 0",
        ),
        (dict(eta=-0.1), r"^eta: expected a number >= 0, got -0.1$"),
        (dict(eta=float("inf")), r"^eta: expected a finite number, got inf$"),
        (dict(eta="0.3"), r"^eta: expected a finite number, got '0.3'$"),
        (dict(scheduler="ddim", eta=1.5), r"^DDIMScheduler: eta must be in \[0, 1\]; got 1.5$"),
        (  # the tiny folder's PNDM, steps_offset 1: timestep 1000 was an IndexError
            dict(num_inference_steps=1000),
            r"^PNDMScheduler: num_inference_steps=1000 plans timestep 1000, outside the "
            r"training timesteps 0 to 999 .*; expected num_inference_steps <= 999$",
        ),
        (dict(num_inference_steps=1001), r"num_inference_steps must be in \[1, 1000\]; got 1001"),
    ],
)
def test_rejected_before_any_graph_runs(pipe, monkeypatch, overrides, message):
    def no_graph(*args, **kwargs):
        raise RuntimeError("a graph ran before the input was checked")

    monkeypatch.setattr(pipe, "_session", no_graph)
    kwargs = {"prompt": "a fox", "height": 64, "width": 64, **FAST, **overrides}
    with pytest.raises(InputError, match=message):
        pipe.generate(pipe.request(**kwargs))


def test_steps_the_scheduler_cannot_run_are_a_400_under_a_high_server_limit(pipe):
    """`sdrt serve --max-steps 1000`: 1000 steps on the folder's scheduler were a 500."""
    pytest.importorskip("fastapi")
    from sdrt.service.config import Limits
    from sdrt.service.errors import ApiError
    from sdrt.service.params import make_generation

    body = {"prompt": "a fox", "size": "64x64", "num_inference_steps": 1000}
    with pytest.raises(ApiError) as refused:
        make_generation(pipe, body, Limits(max_steps=1000))
    assert refused.value.status == 400
    assert "num_inference_steps=1000 plans timestep 1000" in refused.value.message
    assert refused.value.param == "num_inference_steps"  # the field, not "scheduler"
    body["num_inference_steps"] = 999
    assert make_generation(pipe, body, Limits(max_steps=1000)).request.num_inference_steps == 999


def test_steps_beyond_the_schedulers_range_name_the_steps_field(pipe):
    pytest.importorskip("fastapi")
    from sdrt.service.config import Limits
    from sdrt.service.errors import ApiError
    from sdrt.service.params import make_generation

    body = {"prompt": "a fox", "size": "64x64", "num_inference_steps": 1001}
    with pytest.raises(ApiError) as refused:
        make_generation(pipe, body, Limits(max_steps=2000))
    assert refused.value.param == "num_inference_steps"
    assert refused.value.message.startswith("num_inference_steps: PNDMScheduler: num_inference")


def test_the_cli_refuses_steps_the_scheduler_cannot_run_with_exit_2(tiny_built, tmp_path, capsys):
    from sdrt.cli import main

    out = tmp_path / "x.png"
    assert main(["generate", str(tiny_built), "a fox", "--steps", "1000", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--steps=1000 plans timestep 1000" in err and "Traceback" not in err
    assert err.rstrip().endswith("expected --steps <= 999")
    assert not out.exists()


def test_guidance_zero_is_accepted(pipe):
    assert pipe("a fox", guidance_scale=0.0, height=64, width=64, **FAST).images.shape[0] == 1


# ---------------------------------------------------------------------- parameters text


def test_quote_as_a1111():
    assert quote("Euler a") == "Euler a"
    assert quote(7) == "7"
    assert quote("a, b") == '"a, b"'
    assert quote('x: "y"') == '"x: \\"y\\""'


@pytest.mark.parametrize(
    ("name", "a1111"),
    [
        ("euler_a", "Euler a"),
        ("euler", "Euler"),
        ("dpmpp_2m", "DPM++ 2M"),
        ("dpmpp_2m_karras", "DPM++ 2M Karras"),
        ("DDIMScheduler", "DDIM"),
        ("pndm", "PLMS"),
        ("unipc", "UniPC"),
    ],
)
def test_sampler_names(name, a1111):
    assert sampler_name(create_scheduler(name)) == a1111


def test_parameters_text_quotes_values_and_cleans_the_model_name():
    text = GenerationParameters(
        prompt="a fox\nin snow",
        negative_prompt="",
        steps=20,
        sampler="Euler a",
        cfg_scale=7.0,
        seed=3,
        width=512,
        height=768,
        model_hash="0123456789",
        model="my, model: v2",
        denoising_strength=0.75,
    ).text()
    assert text == (
        "a fox\nin snow\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 512x768, "
        "Model hash: 0123456789, Model: my model v2, Denoising strength: 0.75"
    )


def test_arrays_must_have_the_fitted_size(pipe):
    pixels = np.zeros((512, 1024, 3), np.uint8)
    with pytest.raises(
        InputError, match=r"image: expected an array of 256x128 pixels, got 1024x512"
    ):
        pipe("a fox", image=pixels, **FAST)
