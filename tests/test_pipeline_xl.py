"""SDXL folders: two text encoders, pooled embeddings and time ids give diffusers' images."""

from __future__ import annotations

import numpy as np
import pytest

import sdrt

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# Max abs difference of float images in [0, 1]. Both sides compute in float32 on the same
# weights and noise, so only float32 rounding (different kernels, summation orders) can
# differ: see tests/test_pipeline_parity.py for what was measured.
MAX_IMAGE_DIFF = 1e-4
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]


@pytest.fixture(scope="module")
def tiny_xl(tiny_xl_source, tiny_xl_built):
    """(sdrt pipeline, diffusers pipeline) on the tiny SDXL architecture's weights."""
    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(str(tiny_xl_source))
    reference.set_progress_bar_config(disable=True)
    return sdrt.Pipeline.load(tiny_xl_built), reference


@pytest.mark.parametrize(
    ("negative_prompt", "guidance"),
    [(None, 7.5), (["blurry", "cartoon"], 7.5), (None, 1.0)],
    ids=["zeroed-negative", "negative-prompts", "no-guidance"],
)
def test_xl_txt2img_matches_diffusers(tiny_xl, negative_prompt, guidance):
    sd, reference = tiny_xl
    assert sd.manifest.family == "sdxl" and len(sd.prompt_encoders) == 2
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 16), dtype=np.float32)
    settings = dict(
        negative_prompt=negative_prompt,
        num_inference_steps=3,
        guidance_scale=guidance,
        height=64,
        width=128,
        output_type="np",
    )
    theirs = reference(PROMPTS, latents=torch.from_numpy(latents), **settings).images
    ours = sd(PROMPTS, latents=latents, **settings).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF


def _image_and_mask(width: int, height: int):
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : 3 * height // 4, width // 3 :] = 255
    return Image.fromarray(pixels.astype(np.uint8)), Image.fromarray(mask, mode="L")


def _same_noise_and_deterministic_encoder(monkeypatch, module, noise: np.ndarray) -> None:
    """diffusers draws ``noise`` (what sdrt gets as latents) and encodes with the VAE's mode."""
    original = module.retrieve_latents

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == noise.shape, (shape, noise.shape)
        return torch.from_numpy(noise.copy())

    def retrieve_latents(encoder_output, generator=None, sample_mode="sample"):
        return original(encoder_output, generator=generator, sample_mode="argmax")

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)
    monkeypatch.setattr(module, "retrieve_latents", retrieve_latents)


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_xl_img2img_and_inpainting_match_diffusers(tiny_xl, monkeypatch, mode):
    from diffusers.pipelines.stable_diffusion_xl import (
        pipeline_stable_diffusion_xl_img2img,
        pipeline_stable_diffusion_xl_inpaint,
    )

    sd, reference = tiny_xl
    height, width = 64, 128
    image, mask = _image_and_mask(width, height)
    noise = np.random.default_rng(4).standard_normal((1, 4, 8, 16), dtype=np.float32)
    settings = dict(num_inference_steps=4, guidance_scale=7.5, output_type="np")
    if mode == "img2img":
        module, cls = (
            pipeline_stable_diffusion_xl_img2img,
            diffusers.StableDiffusionXLImg2ImgPipeline,
        )
        settings |= dict(image=image, strength=0.5)
    else:
        module, cls = (
            pipeline_stable_diffusion_xl_inpaint,
            diffusers.StableDiffusionXLInpaintPipeline,
        )
        settings |= dict(image=image, mask_image=mask, strength=0.75, height=height, width=width)
    _same_noise_and_deterministic_encoder(monkeypatch, module, noise)
    pipe = cls(**reference.components)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPTS[0], **settings).images
    ours = sd(PROMPTS[0], latents=noise, **settings).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF


# ------------------------------------------------------------- given embeddings, walks


def test_xl_prompt_embeds_mean_what_they_mean_in_diffusers(tiny_xl):
    """Embeddings (and pooled ones) from embed_prompts give the prompt's image, and the same
    embeddings given to diffusers under the same names give diffusers' same image."""
    sd, reference = tiny_xl
    latents = np.random.default_rng(1).standard_normal((2, 4, 8, 8), dtype=np.float32)
    settings = dict(
        num_inference_steps=3, guidance_scale=7.5, height=64, width=64, output_type="np"
    )  # diffusers' SDXL default guidance is 5.0: given, not defaulted
    embeddings = sd.embed_prompts(PROMPTS)
    assert embeddings.pooled_prompt_embeds.shape[0] == 2
    given = dict(
        prompt_embeds=embeddings.prompt_embeds,
        pooled_prompt_embeds=embeddings.pooled_prompt_embeds,
    )
    ours = sd(latents=latents, **given, **settings).images
    np.testing.assert_array_equal(ours, sd(PROMPTS, latents=latents, **settings).images)
    theirs = reference(
        latents=torch.from_numpy(latents),
        **{k: torch.from_numpy(v) for k, v in given.items()},
        **settings,
    ).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF


def test_xl_prompt_embeds_need_their_pooled_embeddings(tiny_xl):
    from sdrt.errors import InputError

    sd, _ = tiny_xl
    embeddings = sd.embed_prompts(PROMPTS[0])
    with pytest.raises(
        InputError,
        match=r"pooled_prompt_embeds: expected the pooled embeddings that go with "
        r"prompt_embeds= \(an SDXL U-Net needs both, as in diffusers\); got None",
    ):
        sd(prompt_embeds=embeddings.prompt_embeds, num_inference_steps=1)
    with pytest.raises(InputError, match=r"pooled_prompt_embeds: expected an array of shape"):
        sd(
            prompt_embeds=embeddings.prompt_embeds,
            pooled_prompt_embeds=embeddings.prompt_embeds,
            num_inference_steps=1,
        )


def test_xl_walk_keyframes_are_plain_calls(tiny_xl):
    """Hidden states and pooled embeddings both interpolated; keyframes bit for bit."""
    sd, _ = tiny_xl
    settings = dict(num_inference_steps=2, height=64, width=64, output_type="np")
    out = sd.interpolate(PROMPTS, seeds=[3, 4], num_frames=3, batch_size=3, **settings)
    np.testing.assert_array_equal(out.images[0], sd(PROMPTS[0], seed=3, **settings).images[0])
    np.testing.assert_array_equal(out.images[2], sd(PROMPTS[1], seed=4, **settings).images[0])
    assert np.abs(out.images[1] - out.images[0]).mean() > 0.01
