"""sdrt.Pipeline gives diffusers' images on the same weights, initial noise and settings.

diffusers runs the tiny random model's source folder in torch; sdrt runs the folder built
from it on ONNX Runtime. Randomness is made the same on both sides: the initial noise is
passed as ``latents``, and where diffusers would draw noise itself (ancestral steps,
img2img's forward noise) its draw is patched, test-scoped, to return sdrt's draws. The
VAE encoder is made deterministic on the diffusers side (``sample_mode="argmax"``, the
mode sdrt uses).
"""

from __future__ import annotations

import numpy as np
import pytest
from parity_helpers import initial_latents, inject_noise, max_diff
from PIL import Image

import sdrt

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# Max abs difference of float images in [0, 1]. Both sides compute in float32 on the same
# weights and noise, so only float32 rounding (different kernels, summation orders) can
# differ: the worst measured is 5.3e-6 (tiny model, 2026-12-02). 1e-4 leaves room for that and
# still fails for a wrong scheduler (LMS in place of Euler moves the image by 1.9e-3 in
# test_tolerance_tells_schedulers_apart), which 2/255 did not.
MAX_IMAGE_DIFF = 1e-4
STEPS = 3
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]
NEGATIVES = ["blurry, low quality", "cartoon"]


@pytest.fixture(scope="module")
def sd(tiny_built):
    return sdrt.Pipeline.load(tiny_built)


@pytest.fixture(scope="module")
def reference(tiny_source):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_source), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _scheduled(reference, scheduler: str):
    """The reference pipeline with another scheduler class from the same config."""
    cls = getattr(diffusers, scheduler)
    return diffusers.StableDiffusionPipeline(
        **{**reference.components, "scheduler": cls.from_config(reference.scheduler.config)}
    )


def _deterministic_vae_encoder(monkeypatch, module) -> None:
    original = module.retrieve_latents

    def retrieve_latents(encoder_output, generator=None, sample_mode="sample"):
        return original(encoder_output, generator=generator, sample_mode="argmax")

    monkeypatch.setattr(module, "retrieve_latents", retrieve_latents)


@pytest.mark.parametrize(
    ("scheduler", "guidance", "height", "width"),
    [
        ("EulerDiscreteScheduler", 7.5, 64, 128),
        ("DDIMScheduler", 1.0, 128, 64),
        ("HeunDiscreteScheduler", 7.5, 64, 64),
    ],
)
def test_txt2img_batch_with_negative_prompts(sd, reference, scheduler, guidance, height, width):
    latents = initial_latents(sd, len(PROMPTS), height, width, seed=1)
    settings = dict(
        negative_prompt=NEGATIVES,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        height=height,
        width=width,
        output_type="np",
    )
    theirs = _scheduled(reference, scheduler)(
        PROMPTS, latents=torch.from_numpy(latents), **settings
    ).images
    ours = sd(PROMPTS, latents=latents, scheduler=scheduler, **settings).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF


def test_tolerance_tells_schedulers_apart(sd, reference):
    """LMS in sdrt against Euler in diffusers, all else equal, is outside the tolerance."""
    latents = initial_latents(sd, 1, 64, 64, seed=1)
    settings = dict(num_inference_steps=STEPS, guidance_scale=7.5, output_type="np")
    theirs = _scheduled(reference, "EulerDiscreteScheduler")(
        PROMPTS[0], latents=torch.from_numpy(latents), height=64, width=64, **settings
    ).images
    ours = sd(PROMPTS[0], latents=latents, scheduler="lms", height=64, width=64, **settings)
    assert max_diff(ours.images, theirs) > MAX_IMAGE_DIFF


def test_txt2img_ancestral_with_injected_noise(sd, reference, monkeypatch):
    from diffusers.schedulers import scheduling_euler_ancestral_discrete

    height, width, seed = 128, 64, 7
    latents = initial_latents(sd, 2, height, width, seed=3)
    # sdrt draws one noise array per step from the call's seed (latents are given).
    rng = np.random.default_rng(seed)
    step_noises = [rng.standard_normal(latents.shape, dtype=np.float32) for _ in range(STEPS)]
    inject_noise(monkeypatch, scheduling_euler_ancestral_discrete, step_noises)
    settings = dict(
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        height=height,
        width=width,
        num_images_per_prompt=2,
        output_type="np",
    )
    theirs = _scheduled(reference, "EulerAncestralDiscreteScheduler")(
        PROMPTS[0], latents=torch.from_numpy(latents), **settings
    ).images
    ours = sd(PROMPTS[0], latents=latents, seed=seed, scheduler="euler_a", **settings).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF
    # The noise mattered: another seed gives another image.
    other = sd(PROMPTS[0], latents=latents, seed=seed + 1, scheduler="euler_a", **settings)
    assert max_diff(other.images, theirs) > MAX_IMAGE_DIFF


@pytest.mark.parametrize(
    ("scheduler", "eta", "steps", "guidance", "draws"),
    [
        ("TCDScheduler", 0.3, 4, 1.0, 3),  # TCD draws no noise at its last step
        ("TCDScheduler", 0.0, 4, 7.5, 0),
        ("DDIMScheduler", 0.5, STEPS, 7.5, STEPS),  # DDIM draws at every step
        ("EulerDiscreteScheduler", 0.7, STEPS, 7.5, 0),  # takes no eta: ignored by both
    ],
)
def test_txt2img_eta_with_injected_noise(
    sd, reference, monkeypatch, scheduler, eta, steps, guidance, draws
):
    """diffusers' ``eta`` (passed to a step that takes it), with sdrt's step noise."""
    from diffusers.schedulers import scheduling_ddim, scheduling_tcd

    height, width, seed = 64, 128, 11
    latents = initial_latents(sd, 1, height, width, seed=4)
    # sdrt draws one noise array per U-Net call from the call's seed where the step adds
    # noise (latents are given); diffusers draws only for the steps that use it.
    rng = np.random.default_rng(seed)
    step_noises = [rng.standard_normal(latents.shape, dtype=np.float32) for _ in range(draws)]
    for module in (scheduling_ddim, scheduling_tcd):
        inject_noise(monkeypatch, module, step_noises)
    settings = dict(
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=height,
        width=width,
        eta=eta,
        output_type="np",
    )
    theirs = _scheduled(reference, scheduler)(
        PROMPTS[0], latents=torch.from_numpy(latents), **settings
    ).images
    ours = sd(PROMPTS[0], latents=latents, seed=seed, scheduler=scheduler, **settings).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF
    # With noise, the noise mattered (another seed, another image); without, eta is inert.
    other = sd(PROMPTS[0], latents=latents, seed=seed + 1, scheduler=scheduler, **settings)
    assert (max_diff(other.images, theirs) > MAX_IMAGE_DIFF) == (draws > 0)


def _test_image(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def test_img2img_half_strength(sd, reference, monkeypatch):
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as module

    height, width = 64, 128
    image = _test_image(width, height)
    noise = initial_latents(sd, 1, height, width, seed=5)
    inject_noise(monkeypatch, module, [noise])
    _deterministic_vae_encoder(monkeypatch, module)
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**reference.components)
    img2img.set_progress_bar_config(disable=True)
    settings = dict(num_inference_steps=4, guidance_scale=7.5, strength=0.5, output_type="np")
    theirs = img2img(PROMPTS[0], image=image, **settings).images
    ours = sd(PROMPTS[0], image=image, latents=noise, **settings).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF


def _inpaint_mask(width: int, height: int) -> Image.Image:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : 3 * height // 4, width // 3 :] = 255
    return Image.fromarray(mask, mode="L")


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_inpainting_4_channel(sd, reference, monkeypatch, strength):
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as module

    height, width = 64, 128
    image, mask = _test_image(width, height), _inpaint_mask(width, height)
    noise = initial_latents(sd, 1, height, width, seed=9)
    inject_noise(monkeypatch, module, [noise])
    _deterministic_vae_encoder(monkeypatch, module)
    inpaint = diffusers.StableDiffusionInpaintPipeline(**reference.components)
    inpaint.set_progress_bar_config(disable=True)
    settings = dict(
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        strength=strength,
        height=height,
        width=width,
        output_type="np",
    )
    theirs = inpaint(PROMPTS[1], image=image, mask_image=mask, **settings).images
    ours = sd(PROMPTS[1], image=image, mask_image=mask, latents=noise, **settings).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF


@pytest.fixture(scope="module")
def tiny_inpaint(tmp_path_factory):
    """(source, built) folders of the tiny model with a 9-channel inpainting U-Net."""
    from sdrt.export.build import BuildConfig, build
    from sdrt.export.random_model import init_random_model

    source = init_random_model("tiny-inpaint", tmp_path_factory.mktemp("inpaint") / "src")
    config = BuildConfig(
        source=str(source), output=source.parent / "built", min_size=64, max_size=128
    )
    return source, build(config).output


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_inpainting_9_channel(tiny_inpaint, monkeypatch, strength):
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as module

    source, built = tiny_inpaint
    sd = sdrt.Pipeline.load(built)
    assert sd.manifest.unet_in_channels == 9
    height, width = 64, 128
    image, mask = _test_image(width, height), _inpaint_mask(width, height)
    noise = initial_latents(sd, 2, height, width, seed=13)
    inject_noise(monkeypatch, module, [noise])
    _deterministic_vae_encoder(monkeypatch, module)
    inpaint = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
        str(source), safety_checker=None, requires_safety_checker=False
    )
    inpaint.set_progress_bar_config(disable=True)
    settings = dict(
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        strength=strength,
        height=height,
        width=width,
        num_images_per_prompt=2,
        output_type="np",
    )
    theirs = inpaint(PROMPTS[0], image=image, mask_image=mask, **settings).images
    ours = sd(PROMPTS[0], image=image, mask_image=mask, latents=noise, **settings).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF
