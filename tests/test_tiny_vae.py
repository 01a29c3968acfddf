"""The tiny VAE fast mode: ``sdrt build --tiny-vae`` and ``Pipeline(..., vae="tiny")``.

Parity is with diffusers' own use of ``AutoencoderTiny``: the ONNX graphs against eager
``AutoencoderTiny.decode``/``encode`` on the same inputs, and whole images against
``StableDiffusion(XL)Pipeline(vae=AutoencoderTiny(...))`` on the same weights and latents.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.errors import InputError
from sdrt.manifest import read_manifest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# ONNX graph vs eager AutoencoderTiny on the same float32 inputs: only float32 rounding
# differs (measured 2.2e-6 for the decoder on outputs up to 3.7 in size, 2026-12-02).
MAX_GRAPH_DIFF = 2e-5
# Whole images (float, [0, 1]) against diffusers with vae=AutoencoderTiny. The issue asks
# for 2/255; both sides compute in float32 on the same weights and latents (measured 5.2e-6,
# tiny model, 2026-12-02), so the exact-parity bound of tests/test_pipeline_parity.py holds.
MAX_IMAGE_DIFF = 1e-4
# The tiny and the full VAE are different networks: their images on the same latents must
# differ by far more than rounding, or a call's vae= was ignored.
MIN_TINY_FULL_DIFF = 0.05
STEPS = 3
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]


@pytest.fixture(scope="module")
def taesd(tmp_path_factory):
    from sdrt.export.random_tiny_vae import init_random_tiny_vae

    return init_random_tiny_vae("tiny-taesd", tmp_path_factory.mktemp("taesd") / "taesd", seed=0)


@pytest.fixture(scope="module")
def built(tiny_built, taesd, tmp_path_factory):
    """tiny_built rebuilt with the tiny VAE: its four graphs reused, the tiny pair exported."""
    from sdrt.export.build import BuildConfig, build

    output = tmp_path_factory.mktemp("tiny-vae") / "tiny"
    shutil.copytree(tiny_built, output)
    manifest = read_manifest(tiny_built)
    config = BuildConfig(
        source=manifest.source.path_or_id,
        output=output,
        min_size=manifest.build.min_size,
        max_size=manifest.build.max_size,
        force=True,
        tiny_vae=str(taesd),
    )
    result = build(config)
    actions = {r.name: r.action for r in result.components}
    assert actions["unet"] == "reused" and actions["vae_decoder_tiny"] == "exported"
    return result.output


@pytest.fixture(scope="module")
def sd(built):
    return sdrt.Pipeline.load(built)


@pytest.fixture(scope="module")
def eager_tiny(taesd):
    return diffusers.AutoencoderTiny.from_pretrained(str(taesd)).eval()


@pytest.fixture(scope="module")
def reference(tiny_source, eager_tiny):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_source), vae=eager_tiny, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(batch: int, height: int, width: int, seed: int) -> np.ndarray:
    shape = (batch, 4, height // 8, width // 8)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _test_image(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


# ---------------------------------------------------------------------------- graphs


def test_tiny_decoder_graph_equals_eager_autoencoder_tiny(sd, eager_tiny):
    latents = _latents(2, 64, 96, seed=1) * 2.0  # beyond the decoder's tanh clamp's knee too
    ours = sd._session("vae_decoder_tiny").run({"latent_sample": latents})["sample"]
    with torch.no_grad():
        theirs = eager_tiny.decode(torch.from_numpy(latents)).sample.numpy()
    assert ours.shape == (2, 3, 64, 96)
    assert float(np.abs(ours - theirs).max()) <= MAX_GRAPH_DIFF


def test_tiny_encoder_graph_equals_eager_autoencoder_tiny(sd, eager_tiny):
    pixels = np.random.default_rng(2).uniform(-1, 1, (1, 3, 64, 128)).astype(np.float32)
    ours = sd._session("vae_encoder_tiny").run({"sample": pixels})["latent_sample"]
    with torch.no_grad():
        theirs = eager_tiny.encode(torch.from_numpy(pixels)).latents.numpy()
    assert ours.shape == (1, 4, 8, 16)
    assert float(np.abs(ours - theirs).max()) <= MAX_GRAPH_DIFF


# ---------------------------------------------------------------------------- images


def test_txt2img_with_tiny_vae_equals_diffusers_with_autoencoder_tiny(sd, reference):
    latents = _latents(2, 64, 128, seed=3)
    settings = dict(
        num_inference_steps=STEPS, guidance_scale=7.5, height=64, width=128, output_type="np"
    )
    theirs = reference(PROMPTS, latents=torch.from_numpy(latents), **settings).images
    ours = sd(PROMPTS, latents=latents, vae="tiny", **settings).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF
    full = sd(PROMPTS, latents=latents, vae="full", **settings).images
    assert float(np.abs(full - ours).max()) >= MIN_TINY_FULL_DIFF


def test_img2img_with_tiny_vae_encodes_and_decodes_with_it(sd, reference, monkeypatch):
    """diffusers' img2img with vae=AutoencoderTiny encodes with it too (its latents, no
    distribution), scaled by its scaling factor 1.0."""
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as module

    height, width = 64, 128
    noise = _latents(1, height, width, seed=5)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == noise.shape, (shape, noise.shape)
        return torch.from_numpy(noise.copy())

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**reference.components)
    img2img.set_progress_bar_config(disable=True)
    image = _test_image(width, height)
    settings = dict(num_inference_steps=4, guidance_scale=7.5, strength=0.5, output_type="np")
    theirs = img2img(PROMPTS[0], image=image, **settings).images
    ours = sd(PROMPTS[0], image=image, latents=noise, vae="tiny", **settings).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF


def test_9_channel_inpainting_with_tiny_vae_equals_diffusers(
    taesd, eager_tiny, tmp_path_factory, monkeypatch
):
    """The image's and the masked image's latents both come from the tiny encoder."""
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as module
    from sdrt.export.build import BuildConfig, build
    from sdrt.export.random_model import init_random_model

    source = init_random_model("tiny-inpaint", tmp_path_factory.mktemp("inpaint-tiny") / "src")
    config = BuildConfig(
        source=str(source), output=source.parent / "built", min_size=64, max_size=128,
        tiny_vae=str(taesd),
    )  # fmt: skip
    sd = sdrt.Pipeline.load(build(config).output)
    height, width = 64, 128
    noise = _latents(1, height, width, seed=13)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == noise.shape, (shape, noise.shape)
        return torch.from_numpy(noise.copy())

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)
    inpaint = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
        str(source), vae=eager_tiny, safety_checker=None, requires_safety_checker=False
    )
    inpaint.set_progress_bar_config(disable=True)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : 3 * height // 4, width // 3 :] = 255
    image, mask = _test_image(width, height), Image.fromarray(mask, mode="L")
    settings = dict(num_inference_steps=STEPS, guidance_scale=7.5, strength=0.75)
    settings |= dict(height=height, width=width, output_type="np")  # diffusers: else 64x64
    theirs = inpaint(PROMPTS[0], image=image, mask_image=mask, **settings).images
    ours = sd(PROMPTS[0], image=image, mask_image=mask, latents=noise, vae="tiny", **settings)
    assert float(np.abs(ours.images - theirs).max()) <= MAX_IMAGE_DIFF


def test_xl_txt2img_with_tiny_vae_equals_diffusers(taesd, eager_tiny, tmp_path_factory):
    from sdrt.export.build import BuildConfig, build
    from sdrt.export.random_model import init_random_model

    source = init_random_model("tiny-xl", tmp_path_factory.mktemp("xl-tiny-vae") / "src")
    config = BuildConfig(
        source=str(source),
        output=source.parent / "built",
        min_size=64,
        max_size=128,
        tiny_vae=str(taesd),
    )
    sd = sdrt.Pipeline.load(build(config).output)
    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(str(source), vae=eager_tiny)
    reference.set_progress_bar_config(disable=True)
    latents = _latents(2, 64, 128, seed=7)
    settings = dict(
        num_inference_steps=STEPS, guidance_scale=7.5, height=64, width=128, output_type="np"
    )
    theirs = reference(PROMPTS, latents=torch.from_numpy(latents), **settings).images
    ours = sd(PROMPTS, latents=latents, vae="tiny", **settings).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF


# ---------------------------------------------------------------------------- records, errors


def test_sdrt_json_records_the_tiny_vae(built, taesd):
    manifest = read_manifest(built)
    tiny = manifest.tiny_vae
    assert tiny.class_name == "AutoencoderTiny" and tiny.source.path_or_id == str(taesd)
    assert tiny.scaling_factor == json.loads((taesd / "config.json").read_text())["scaling_factor"]
    assert len(tiny.source.content_sha256) == 64
    for name in ("vae_decoder_tiny", "vae_encoder_tiny"):
        component = manifest.components[name]
        assert component.verification.passed and component.verification.cases
        assert (built / name / "config.json").is_file()
    # the full VAE is still there, for calls that do not ask for the tiny one
    assert {"vae_decoder", "vae_encoder"} <= set(manifest.components)


def test_sdrt_info_shows_the_tiny_vae(built, tiny_built, capsys):
    from sdrt import cli

    assert cli.main(["info", str(built)]) == 0
    out = capsys.readouterr().out
    assert "tiny VAE       AutoencoderTiny from" in out and "vae_decoder_tiny" in out
    assert cli.main(["info", str(tiny_built)]) == 0
    assert "tiny VAE       none" in capsys.readouterr().out


def test_asking_for_the_tiny_vae_without_one_is_a_clear_error(tiny_built):
    sd = sdrt.Pipeline.load(tiny_built)
    with pytest.raises(InputError, match="built without a tiny VAE.*--tiny-vae"):
        sd("a fox", num_inference_steps=1, vae="tiny")
    with pytest.raises(InputError, match="vae: expected one of 'full', 'tiny', got 'small'"):
        sd("a fox", num_inference_steps=1, vae="small")


def test_generate_vae_tiny_without_one_exits_2_with_one_line(tiny_built, tmp_path, capsys):
    from sdrt import cli

    out = tmp_path / "fox.png"
    code = cli.main(["generate", str(tiny_built), "a fox", "-o", str(out), "--vae", "tiny"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--tiny-vae" in err
    assert not out.exists()


def test_generate_vae_tiny_writes_the_tiny_vae_image(built, tmp_path):
    from sdrt import cli

    paths = {vae: tmp_path / f"{vae}.png" for vae in ("tiny", "full")}
    for vae, path in paths.items():
        argv = ["generate", str(built), "a fox", "-o", str(path), "--steps", "2", "--seed", "3"]
        assert cli.main([*argv, "--vae", vae, "--no-progress"]) == 0
    tiny, full = (np.asarray(Image.open(p), dtype=np.float32) / 255 for p in paths.values())
    assert float(np.abs(tiny - full).max()) >= MIN_TINY_FULL_DIFF


def test_build_rejects_a_vae_that_is_not_autoencoder_tiny(tiny_source, tmp_path):
    from sdrt.export.build import BuildConfig, build

    output = tmp_path / "out"
    config = BuildConfig(
        source=str(tiny_source), output=output, min_size=64, max_size=128,
        tiny_vae=str(tiny_source / "vae"),
    )  # fmt: skip
    with pytest.raises(InputError, match="expected an AutoencoderTiny config, got 'AutoencoderKL'"):
        build(config)
    assert not output.exists() or not any(output.iterdir())


def test_build_rejects_a_tiny_vae_of_other_latent_channels(tiny_source, tmp_path):
    from sdrt.export.build import BuildConfig, build

    other = tmp_path / "taesd-16"
    other.mkdir()
    config = {"_class_name": "AutoencoderTiny", "latent_channels": 16}
    (other / "config.json").write_text(json.dumps(config))
    build_config = BuildConfig(
        source=str(tiny_source), output=tmp_path / "out", min_size=64, max_size=128,
        tiny_vae=str(other),
    )  # fmt: skip
    with pytest.raises(InputError, match="expected 4 latent channels .* got 16"):
        build(build_config)


# ---------------------------------------------------------------------------- init-model


@pytest.mark.parametrize("arch", ["taesd", "taesdxl"])
def test_the_published_tiny_vae_configs_are_diffusers_defaults(arch):
    """madebyollin/taesd and taesdxl are AutoencoderTiny's defaults (scaling factor 1.0)."""
    import inspect

    from sdrt.export.random_tiny_vae import TINY_VAE_ARCHITECTURES

    config = TINY_VAE_ARCHITECTURES[arch][1]
    defaults = inspect.signature(diffusers.AutoencoderTiny.__init__).parameters
    for key, value in config.items():
        default = defaults[key].default
        assert (list(default) if isinstance(default, tuple) else default) == value, key


def test_init_model_makes_a_tiny_vae_folder_diffusers_loads(taesd, tmp_path):
    from sdrt import cli

    vae = diffusers.AutoencoderTiny.from_pretrained(str(taesd))
    assert list(vae.config.decoder_block_out_channels) == [8, 8, 8, 8]
    assert cli.main(["init-model", "tiny-taesd", "--random-weights", str(tmp_path / "t")]) == 0
    again = diffusers.AutoencoderTiny.from_pretrained(str(tmp_path / "t"))
    for (name, a), (_, b) in zip(vae.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # seed 0 both times: the same weights


def test_the_service_takes_vae_and_names_it_in_a_400(sd, tiny_built):
    pytest.importorskip("fastapi")
    from sdrt.service.config import Limits
    from sdrt.service.errors import ApiError
    from sdrt.service.params import GENERATION_FIELDS, check_fields, make_generation

    body = check_fields({"prompt": "a fox", "size": "64x64", "vae": "tiny"}, GENERATION_FIELDS)
    assert make_generation(sd, body, Limits()).request.vae == "tiny"
    with pytest.raises(ApiError) as error:
        make_generation(sdrt.Pipeline.load(tiny_built), body, Limits())
    assert error.value.param == "vae" and "--tiny-vae" in str(error.value)
