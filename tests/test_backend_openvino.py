"""The openvino backend: the same images as ort-cpu from the same folders (fp32, fp16, int8,
DeepCache, ToMe, tiny VAE), safe from threads, and clear errors for what it does not do."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import _build_tiny
from sdrt.engines.compare import psnr
from test_build_int8 import INT8_IMAGE_MIN_PSNR

import sdrt
from sdrt import cli
from sdrt.backends.registry import select_backend
from sdrt.errors import BackendUnavailableError, InputError

pytest.importorskip("openvino")
from sdrt.backends.openvino import OpenVinoOptions  # noqa: E402

SIZE = 64
STEPS = 6
# OpenVINO f32 against ONNX Runtime on the same fp32 graphs: both compute in float32, with
# different kernels and summation orders. Measured on the tiny model (256 px, 8 steps): a
# max pixel difference of 2.3e-6; the bound leaves room for other CPUs' kernels.
FP32_MAX_PIXEL_DIFFERENCE = 1e-4
# The same for an fp16 graph (OpenVINO computes its fp16 weights in f32, ONNX Runtime's CPU
# kernels in fp16 where it has them): a looser bound on a graph whose weights are rounded.
FP16_MAX_PIXEL_DIFFERENCE = 2e-2
# OpenVINO's int8 kernels against ONNX Runtime's on the same QDQ graph round differently;
# each is held to the fp32 image by the int8 build's own PSNR gate (test_build_int8.py).
# bf16 keeps about 3 significant digits of each activation: an image within this PSNR.
BF16_IMAGE_MIN_PSNR = 30.0  # dB


def _latents(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32)


def _image(pipe, latents=None, **options):
    return pipe(
        prompt="a red fox in snow",
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        latents=_latents() if latents is None else latents,
        output_type="np",
        **options,
    ).images


@pytest.fixture(scope="module")
def both(tiny_built):
    return (
        sdrt.Pipeline.load(tiny_built, backend="ort-cpu"),
        sdrt.Pipeline.load(tiny_built, backend="openvino"),
    )


def test_fp32_images_equal_ort_cpu(both):
    ort, openvino = both
    assert openvino.backend == "openvino"
    for scheduler in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler"):
        a = _image(ort, scheduler=scheduler)
        b = _image(openvino, scheduler=scheduler)
        assert np.abs(a - b).max() <= FP32_MAX_PIXEL_DIFFERENCE, scheduler


def test_img2img_and_negative_prompt_equal_ort_cpu(both):
    ort, openvino = both
    image = (np.random.default_rng(1).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    call = {"image": image, "strength": 0.6, "seed": 4, "negative_prompt": "blurry"}
    a = ort(prompt="a cat", num_inference_steps=STEPS, output_type="np", **call).images
    b = openvino(prompt="a cat", num_inference_steps=STEPS, output_type="np", **call).images
    assert np.abs(a - b).max() <= FP32_MAX_PIXEL_DIFFERENCE


def test_fp16_folder_runs_close_to_ort_cpu(tiny_built_fp16):
    a = _image(sdrt.Pipeline.load(tiny_built_fp16, backend="ort-cpu"))
    b = _image(sdrt.Pipeline.load(tiny_built_fp16, backend="openvino"))
    assert np.abs(a - b).max() <= FP16_MAX_PIXEL_DIFFERENCE


def test_bf16_is_close_and_not_exact_where_the_cpu_has_it(tiny_built, both):
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(BackendUnavailableError, match="needs a CPU with BF16"):
            sdrt.Pipeline.load(
                tiny_built, backend="openvino", backend_options=OpenVinoOptions(precision="bf16")
            )
        return
    bf16 = sdrt.Pipeline.load(
        tiny_built, backend="openvino", backend_options=OpenVinoOptions(precision="bf16")
    )
    exact, fast = _image(both[0]), _image(bf16)
    assert np.abs(fast - exact).max() > 0
    assert psnr(fast, exact) >= BF16_IMAGE_MIN_PSNR


def test_int8_deep_cache_and_tiny_vae_run_as_on_ort_cpu(
    tiny_built_all_modes, tiny_built_deep_cache
):
    """Each mode gives an image within the int8 gate's PSNR of exact fp32 (ort-cpu on the
    fp32 DeepCache folder), and the tiny VAE changes the image as it does on ort-cpu."""
    ort = sdrt.Pipeline.load(tiny_built_all_modes, backend="ort-cpu")
    openvino = sdrt.Pipeline.load(tiny_built_all_modes, backend="openvino")
    exact = sdrt.Pipeline.load(tiny_built_deep_cache, backend="ort-cpu")
    cached = {"deep_cache_interval": 3, "deep_cache_branch": 0}
    for options in ({}, cached):
        reference = _image(exact, **options)
        image = _image(openvino, **options)
        assert np.abs(image - reference).max() > 0  # its int8 U-Net did run
        assert psnr(image, reference) >= INT8_IMAGE_MIN_PSNR, options
    # the tiny decoder itself, on the same latents: an fp32 graph, so as exact as the others
    decoder = openvino.manifest.tiny_vae.decoder
    latents = {"latent_sample": _latents(7)}
    a = ort._session(decoder).run(latents)["sample"]
    b = openvino._session(decoder).run(latents)["sample"]
    assert np.abs(a - b).max() <= FP32_MAX_PIXEL_DIFFERENCE
    assert np.abs(_image(openvino, vae="tiny") - _image(openvino)).max() > 0.05  # it ran


@pytest.mark.heavy  # a ToMe build of its own
def test_token_merging_folder_equals_ort_cpu(tiny_source, tmp_path_factory):
    from sdrt.export.tome_options import TomeOptions

    folder = _build_tiny(
        tiny_source, tmp_path_factory, "tiny-openvino-tome", tome=TomeOptions(ratio=0.5)
    )
    a = _image(sdrt.Pipeline.load(folder, backend="ort-cpu"))
    b = _image(sdrt.Pipeline.load(folder, backend="openvino"))
    assert np.abs(a - b).max() <= FP32_MAX_PIXEL_DIFFERENCE


def test_calls_from_threads_each_get_their_own_image(both):
    openvino = both[1]
    seeds = (1, 2, 3, 4)
    alone = {s: _image(openvino, latents=_latents(s)) for s in seeds}
    together: dict[int, np.ndarray] = {}

    def call(seed):
        together[seed] = _image(openvino, latents=_latents(seed))

    threads = [threading.Thread(target=call, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in seeds:
        np.testing.assert_array_equal(together[seed], alone[seed])


def test_auto_never_picks_openvino(tiny_built):
    from sdrt.manifest import read_manifest

    assert select_backend("auto", read_manifest(tiny_built)).backend == "ort-cpu"


def test_without_openvino_installed_it_names_the_install(monkeypatch):
    from sdrt.backends import openvino

    monkeypatch.setattr(openvino, "_has_openvino", lambda: False)
    with pytest.raises(BackendUnavailableError, match=r"sdrt\[openvino\]"):
        select_backend("openvino")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "fp8"}, "expected one of f32, bf16, got 'fp8'"),
        ({"threads": -1}, "expected an integer >= 0, got -1"),
    ],
)
def test_bad_options_are_input_errors(options, message):
    with pytest.raises(InputError, match=message):
        OpenVinoOptions(**options)


def test_other_backends_options_are_refused(tiny_built):
    from sdrt.backends.ort_cpu_options import OrtOptions

    with pytest.raises(InputError, match="expected options of type OpenVinoOptions"):
        sdrt.Pipeline.load(tiny_built, backend="openvino", backend_options=OrtOptions())


def test_run_time_textual_inversion_is_refused(both, tmp_path):
    from safetensors.numpy import save_file

    width = both[1].manifest.components["text_encoder"].token_embedding.shape[1]
    save_file({"<cat>": np.ones((1, width), np.float32)}, tmp_path / "cat.safetensors")
    with pytest.raises(InputError, match="cannot be fed the token-embedding table"):
        both[1].load_textual_inversion(tmp_path / "cat.safetensors")


def test_a_lora_ready_folder_is_refused_with_what_to_use(tiny_built_lora_ready):
    with pytest.raises(BackendUnavailableError, match="cannot run a folder built --lora-ready"):
        sdrt.Pipeline.load(tiny_built_lora_ready, backend="openvino")


def test_generate_cli_runs_on_openvino(tiny_built, tmp_path):
    out = tmp_path / "fox.png"
    code = cli.main(
        [
            "generate",
            str(tiny_built),
            "a red fox",
            "-o",
            str(out),
            "--backend",
            "openvino",
            "--steps",
            "2",
            "--size",
            str(SIZE),
        ]
    )
    assert code == 0
    assert out.is_file()
