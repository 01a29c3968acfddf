"""LCM-distilled SDXL U-Nets: StableDiffusionXLPipeline's loop with the guidance embedding.

diffusers has no LCM pipeline class for SDXL: latent-consistency/lcm-sdxl's card runs its
U-Net in StableDiffusionXLPipeline with LCMScheduler, and that pipeline (and
StableDiffusionXLImg2ImgPipeline) drops the CFG batch and feeds ``timestep_cond`` whenever
the U-Net config sets ``time_cond_proj_dim``. The tiny random LCM SDXL model
(``init-model tiny-lcm-xl``) is built once for the module; sdrt's images equal those two
pipelines' on the same latents, with LCMScheduler's between-step noise patched to sdrt's
draws (as tests/test_pipeline_lcm.py does for SD 1.5).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import TINY_MAX_SIZE, TINY_MIN_SIZE
from parity_helpers import BatchRecorder, initial_latents, inject_noise, max_diff, step_noises

import sdrt
from sdrt.errors import InputError
from sdrt.guidance_embedding import GUIDANCE_EMBEDDING_INPUT

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# As tests/test_pipeline_lcm.py and tests/test_pipeline_xl.py: float32 rounding only.
MAX_IMAGE_DIFF = 1e-4
STEPS = 4  # LCM's usual step count
GUIDANCE = 8.5
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]
GUIDANCE_EMBED_DIM = 8  # TINY_LCM_XL_UNET's time_cond_proj_dim


@pytest.fixture(scope="module")
def lcm_xl_source(tmp_path_factory):
    from sdrt.export.random_model import init_random_model

    return init_random_model("tiny-lcm-xl", tmp_path_factory.mktemp("lcm-xl") / "src")


@pytest.fixture(scope="module")
def lcm_xl(lcm_xl_source):
    from sdrt.export.build import BuildConfig, build

    config = BuildConfig(
        source=str(lcm_xl_source),
        output=lcm_xl_source.parent / "built",
        min_size=TINY_MIN_SIZE,
        max_size=TINY_MAX_SIZE,
    )
    return sdrt.Pipeline.load(build(config).output)


@pytest.fixture(scope="module")
def reference(lcm_xl_source):
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(str(lcm_xl_source))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, diffusers.LCMScheduler)
    return pipe


def test_lcm_xl_unet_graph_takes_the_guidance_embedding_and_the_time_ids(lcm_xl):
    specs = {s.name: s for s in lcm_xl.manifest.components["unet"].inputs}
    assert specs[GUIDANCE_EMBEDDING_INPUT].shape[-1] == GUIDANCE_EMBED_DIM
    assert {"text_embeds", "time_ids"} <= set(specs)
    assert lcm_xl.manifest.family == "sdxl"
    assert lcm_xl.default_scheduler == "LCMScheduler"


def test_txt2img_equals_diffusers_sdxl_pipeline(lcm_xl, reference, monkeypatch):
    from diffusers.schedulers import scheduling_lcm

    height, width, seed = 64, 128, 5
    latents = initial_latents(lcm_xl, len(PROMPTS), height, width, seed=2)
    # The last step returns the estimate: STEPS - 1 draws, in diffusers as in sdrt.
    inject_noise(monkeypatch, scheduling_lcm, step_noises(seed, latents.shape, STEPS - 1))
    settings = dict(
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=height,
        width=width,
        output_type="np",
    )
    theirs = reference(PROMPTS, latents=torch.from_numpy(latents), **settings).images
    recorder = BatchRecorder(lcm_xl.session("unet"))
    replaced = lcm_xl.replace_session("unet", recorder)
    try:
        ours = lcm_xl(PROMPTS, latents=latents, seed=seed, **settings).images
    finally:
        lcm_xl.replace_session("unet", replaced)
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF
    # One U-Net call per step on the prompts alone (no unconditional rows), with SDXL's
    # added conditioning and the guidance embedding.
    assert [batch for batch, _ in recorder.calls] == [len(PROMPTS)] * STEPS
    wanted = {GUIDANCE_EMBEDDING_INPUT, "text_embeds", "time_ids"}
    assert all(wanted <= set(names) for _, names in recorder.calls)
    # The guidance scale matters through the embedding: another one gives another image.
    other = lcm_xl(PROMPTS, latents=latents, seed=seed, **{**settings, "guidance_scale": 2.0})
    assert max_diff(other.images, theirs) > MAX_IMAGE_DIFF


def _test_image(width: int, height: int):
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def test_img2img_equals_diffusers_sdxl_img2img_pipeline(lcm_xl, reference, monkeypatch):
    """StableDiffusionXLImg2ImgPipeline keeps its own schedule with LCMScheduler (the last
    steps of the full one, as for every scheduler), unlike SD 1.5's LCM img2img pipeline."""
    from diffusers.pipelines.stable_diffusion_xl import (
        pipeline_stable_diffusion_xl_img2img as module,
    )
    from diffusers.schedulers import scheduling_lcm

    height, width, seed, strength = 64, 128, 3, 0.5
    noise = initial_latents(lcm_xl, 1, height, width, seed=4)
    runs = int(STEPS * strength)
    inject_noise(monkeypatch, module, [noise])  # the image latents' forward noise
    inject_noise(monkeypatch, scheduling_lcm, step_noises(seed, noise.shape, runs - 1))
    original = module.retrieve_latents  # the VAE encoder's mode, as sdrt takes it
    monkeypatch.setattr(
        module,
        "retrieve_latents",
        lambda output, generator=None, sample_mode="sample": original(output, None, "argmax"),
    )
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**reference.components)
    img2img.set_progress_bar_config(disable=True)
    image = _test_image(width, height)
    settings = dict(
        num_inference_steps=STEPS, guidance_scale=GUIDANCE, strength=strength, output_type="np"
    )
    theirs = img2img(PROMPTS[0], image=image, **settings).images
    request = lcm_xl.request(PROMPTS[0], image=image, latents=noise, seed=seed, **settings)
    full = [int(t) for t in img2img.scheduler.timesteps]
    assert [int(t) for t in lcm_xl.plan(request)[1].timesteps] == full[STEPS - runs :]
    recorder = BatchRecorder(lcm_xl.session("unet"))
    replaced = lcm_xl.replace_session("unet", recorder)
    try:
        ours = lcm_xl(PROMPTS[0], image=image, latents=noise, seed=seed, **settings).images
    finally:
        lcm_xl.replace_session("unet", replaced)
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF
    assert [batch for batch, _ in recorder.calls] == [1] * runs


def test_negative_prompts_are_refused(lcm_xl):
    """No unconditional pass for them to go into (StableDiffusionXLPipeline drops them
    without a word where the U-Net has time_cond_proj_dim; sdrt says so instead)."""
    with pytest.raises(InputError, match="negative_prompt: expected none for this LCM"):
        lcm_xl.request("a fox", negative_prompt="blurry")
    embeds = lcm_xl.embed_prompts(["a fox"])
    with pytest.raises(InputError, match="negative_prompt_embeds: expected none"):
        lcm_xl.request(
            prompt_embeds=embeds.prompt_embeds,
            pooled_prompt_embeds=embeds.pooled_prompt_embeds,
            negative_prompt_embeds=embeds.prompt_embeds,
            negative_pooled_prompt_embeds=embeds.pooled_prompt_embeds,
        )


def test_conditioning_and_unet_must_agree_on_the_guidance_embedding(lcm_xl, tiny_xl_built):
    """A plain SDXL U-Net given an LCM conditioning (it has no timestep_cond input), and an
    LCM SDXL U-Net given one without the embedding: a clear error before the graph runs."""
    request = lcm_xl.request("a fox", num_inference_steps=STEPS, height=64, width=64)
    conditioning = lcm_xl.condition(request)
    sample = initial_latents(lcm_xl, 1, 64, 64, seed=0)
    timestep = lcm_xl.plan(request)[1].timesteps[0]
    plain = sdrt.Pipeline.load(tiny_xl_built)
    with pytest.raises(InputError, match="this U-Net is not LCM-distilled"):
        plain.predict_noise(sample, timestep, conditioning)
    without = dataclasses.replace(
        conditioning,
        added={k: v for k, v in conditioning.added.items() if k != GUIDANCE_EMBEDDING_INPUT},
    )
    with pytest.raises(InputError, match="expected the guidance embedding"):
        lcm_xl.predict_noise(sample, timestep, without)
    assert lcm_xl.predict_noise(sample, timestep, conditioning).shape == sample.shape


def test_an_lcm_pipeline_folder_with_an_sdxl_unet_is_refused_at_build(lcm_xl_source, tmp_path):
    """LatentConsistencyModelPipeline runs SD 1.x U-Nets only (it passes no SDXL added
    conditioning): such a folder is refused, naming the class an LCM SDXL folder has."""
    import json
    import shutil

    from sdrt.export.source import inspect_folder

    source = tmp_path / "src"
    shutil.copytree(lcm_xl_source, source)
    index = json.loads((source / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert inspect_folder(source, str(source)).family == "sdxl"
    index["_class_name"] = "LatentConsistencyModelPipeline"
    (source / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="expects an SD 1.x U-Net; this one is SDXL's") as e:
        inspect_folder(source, str(source))
    assert "An LCM SDXL folder is a StableDiffusionXLPipeline" in str(e.value)
