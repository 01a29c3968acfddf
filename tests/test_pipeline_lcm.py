"""LCM-distilled U-Nets: the guidance embedding is a graph input and the loop has no CFG batch.

The tiny random LCM model (``init-model tiny-lcm``: the tiny U-Net with time_cond_proj_dim,
LCMScheduler) is built once for the module; sdrt's image equals diffusers'
LatentConsistencyModelPipeline's on the same latents, with LCMScheduler's between-step noise
patched to sdrt's draws (as tests/test_pipeline_parity.py does for ancestral samplers).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import TINY_MAX_SIZE, TINY_MIN_SIZE
from parity_helpers import BatchRecorder, initial_latents, inject_noise, max_diff

import sdrt
from sdrt.cli import main
from sdrt.errors import InputError
from sdrt.guidance_embedding import GUIDANCE_EMBEDDING_INPUT, guidance_scale_embedding
from sdrt.schedulers import create_scheduler

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# As tests/test_pipeline_parity.py: float32 rounding only (different kernels, summation orders).
MAX_IMAGE_DIFF = 1e-4
STEPS = 4  # LCM's usual step count
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]
GUIDANCE_EMBED_DIM = 8  # TINY_LCM_UNET's time_cond_proj_dim


@pytest.fixture(scope="module")
def lcm_source(tmp_path_factory):
    from sdrt.export.random_model import init_random_model

    return init_random_model("tiny-lcm", tmp_path_factory.mktemp("lcm") / "src")


@pytest.fixture(scope="module")
def lcm_built(lcm_source):
    from sdrt.export.build import BuildConfig, build

    config = BuildConfig(
        source=str(lcm_source),
        output=lcm_source.parent / "built",
        min_size=TINY_MIN_SIZE,
        max_size=TINY_MAX_SIZE,
    )
    return build(config).output


@pytest.fixture(scope="module")
def lcm(lcm_built):
    return sdrt.Pipeline.load(lcm_built)


@pytest.fixture(scope="module")
def reference(lcm_source):
    pipe = diffusers.LatentConsistencyModelPipeline.from_pretrained(
        str(lcm_source), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_lcm_unet_graph_takes_the_guidance_embedding(lcm):
    specs = {s.name: s for s in lcm.manifest.components["unet"].inputs}
    assert specs[GUIDANCE_EMBEDDING_INPUT].shape[-1] == GUIDANCE_EMBED_DIM
    assert lcm.default_scheduler == "LCMScheduler"


def test_guidance_embedding_equals_diffusers():
    w = torch.tensor([8.5 - 1.0, 8.5 - 1.0])
    for width in (GUIDANCE_EMBED_DIM, 7, 256):
        theirs = diffusers.LatentConsistencyModelPipeline.get_guidance_scale_embedding(
            None, w, embedding_dim=width
        ).numpy()
        ours = guidance_scale_embedding(8.5, 2, width)
        assert ours.dtype == np.float32
        # The angles reach 1000 * w = 7500 rad, where one float32 ulp is 4.9e-4: numpy's and
        # torch's float32 exp can round a frequency apart by an ulp, which moves a sine by
        # up to that (4.1e-4 measured at width 256). Two ulps of the largest angle, then.
        atol = 2 * float(np.spacing(np.float32(1000 * (8.5 - 1.0))))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol)
    wrong = guidance_scale_embedding(8.5 - 1.0, 2, 256)  # w off by one: not close
    assert np.abs(wrong - theirs).max() > 0.1


def test_txt2img_equals_diffusers_lcm_pipeline(lcm, reference, monkeypatch):
    from diffusers.schedulers import scheduling_lcm

    height, width, seed, guidance = 64, 128, 5, 8.5
    latents = initial_latents(lcm, len(PROMPTS), height, width, seed=2)
    # sdrt draws one noise array per step from the call's seed (latents are given); the
    # last step draws none in diffusers (it returns the estimate), so it takes STEPS - 1.
    rng = np.random.default_rng(seed)
    step_noises = [rng.standard_normal(latents.shape, dtype=np.float32) for _ in range(STEPS - 1)]
    inject_noise(monkeypatch, scheduling_lcm, step_noises)
    settings = dict(
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        height=height,
        width=width,
        output_type="np",
    )
    theirs = reference(PROMPTS, latents=torch.from_numpy(latents), **settings).images
    recorder = BatchRecorder(lcm.session("unet"))
    replaced = lcm.replace_session("unet", recorder)
    try:
        ours = lcm(PROMPTS, latents=latents, seed=seed, **settings).images
    finally:
        lcm.replace_session("unet", replaced)
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF
    # One U-Net call per step on the prompts alone (no unconditional rows), embedding fed.
    assert [batch for batch, _ in recorder.calls] == [len(PROMPTS)] * STEPS
    assert all(GUIDANCE_EMBEDDING_INPUT in names for _, names in recorder.calls)
    # The guidance scale matters through the embedding: another one gives another image.
    other = lcm(PROMPTS, latents=latents, seed=seed, **{**settings, "guidance_scale": 2.0})
    assert max_diff(other.images, theirs) > MAX_IMAGE_DIFF


def _test_image(width: int, height: int):
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def test_img2img_equals_diffusers_lcm_img2img_pipeline(lcm, reference, monkeypatch):
    """LCM img2img puts strength into LCMScheduler's schedule: all steps run, from a
    shortened distillation grid (not the last steps of the full schedule)."""
    from diffusers.pipelines.latent_consistency_models import (
        pipeline_latent_consistency_img2img as module,
    )
    from diffusers.schedulers import scheduling_lcm

    height, width, seed, strength = 64, 128, 3, 0.5
    noise = initial_latents(lcm, 1, height, width, seed=4)
    rng = np.random.default_rng(seed)
    step_noises = [rng.standard_normal(noise.shape, dtype=np.float32) for _ in range(STEPS - 1)]
    inject_noise(monkeypatch, module, [noise])  # the image latents' forward noise
    inject_noise(monkeypatch, scheduling_lcm, step_noises)
    original = module.retrieve_latents  # the VAE encoder's mode, as sdrt takes it
    monkeypatch.setattr(
        module,
        "retrieve_latents",
        lambda output, generator=None, sample_mode="sample": original(output, None, "argmax"),
    )
    img2img = diffusers.LatentConsistencyModelImg2ImgPipeline(**reference.components)
    img2img.set_progress_bar_config(disable=True)
    image = _test_image(width, height)
    settings = dict(
        num_inference_steps=STEPS, guidance_scale=8.5, strength=strength, output_type="np"
    )
    theirs = img2img(PROMPTS[0], image=image, **settings).images
    expected_timesteps = [int(t) for t in img2img.scheduler.timesteps]
    request = lcm.request(PROMPTS[0], image=image, latents=noise, seed=seed, **settings)
    assert [int(t) for t in lcm.plan(request)[1].timesteps] == expected_timesteps
    ours = lcm(PROMPTS[0], image=image, latents=noise, seed=seed, **settings).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF
    # The StableDiffusionImg2ImgPipeline schedule (the last steps of the full one) differs.
    assert len(create_scheduler("lcm").plan(STEPS, strength).timesteps) == STEPS // 2


@pytest.mark.parametrize(
    ("steps", "strength", "original_steps"),
    [(4, 0.5, 50), (2, 0.3, 50), (8, 0.8, 100), (4, 1.0, 50)],
)
def test_consistency_img2img_plan_equals_diffusers_set_timesteps(steps, strength, original_steps):
    config = {"original_inference_steps": original_steps}
    theirs = diffusers.LCMScheduler(**config)
    theirs.set_timesteps(steps, strength=strength)
    plan = create_scheduler("lcm", config).consistency_img2img_plan(steps, strength)
    assert plan.timesteps.tolist() == theirs.timesteps.tolist()


def test_lcm_img2img_needs_a_grid_as_long_as_the_steps(lcm):
    image = _test_image(64, 64)
    with pytest.raises(InputError, match="must be at most original_inference_steps"):
        lcm.plan(lcm.request("a fox", image=image, num_inference_steps=20, strength=0.2))


def test_negative_prompt_is_refused(lcm):
    with pytest.raises(InputError, match="negative_prompt: expected none for this LCM"):
        lcm.request("a fox", negative_prompt="blurry")
    embeds = lcm.embed_prompts(["blurry"]).prompt_embeds
    with pytest.raises(InputError, match="negative_prompt_embeds: expected none"):
        lcm.request(prompt_embeds=embeds, negative_prompt_embeds=embeds)


def test_cli_negative_prompt_exits_2_with_one_line(lcm_built, tmp_path, capsys):
    out = tmp_path / "fox.png"
    argv = ["generate", str(lcm_built), "a fox", "--negative-prompt", "blurry", "-o", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--negative-prompt: expected none for this LCM-distilled model" in err
    assert not out.exists()


def test_conditioning_without_the_embedding_is_refused(lcm):
    request = lcm.request("a fox", num_inference_steps=STEPS, height=64, width=64)
    conditioning = lcm.condition(request)
    sched, plan = lcm.plan(request)
    sample = initial_latents(lcm, 1, 64, 64, seed=0)
    assert lcm.predict_noise(sample, plan.timesteps[0], conditioning).shape == sample.shape
    without = dataclasses.replace(conditioning, added={})
    with pytest.raises(InputError, match="expected the guidance embedding"):
        lcm.predict_noise(sample, plan.timesteps[0], without)


def test_folder_without_guidance_embedding_refuses_lcm_conditioning(lcm, tiny_built):
    """A U-Net that was not LCM-distilled asked for LCM's guidance embedding: a clear error."""
    sd = sdrt.Pipeline.load(tiny_built)
    request = lcm.request("a fox", num_inference_steps=STEPS, height=64, width=64)
    sample = initial_latents(lcm, 1, 64, 64, seed=0)
    with pytest.raises(InputError, match="this U-Net is not LCM-distilled"):
        sd.predict_noise(sample, 999, lcm.condition(request))
    # And a plain folder guides by CFG, with a negative prompt, as before.
    assert not sd.request("a fox", negative_prompt="blurry").guidance_embedding


def test_lcm_scheduler_on_a_plain_unet_runs_with_cfg_as_diffusers(
    tiny_source, tiny_built, monkeypatch
):
    """A U-Net without a guidance embedding asked for LCMScheduler (LCM-LoRA's recipe) is
    no error: StableDiffusionPipeline runs it with a CFG batch, and so does sdrt."""
    from diffusers.schedulers import scheduling_lcm

    sd = sdrt.Pipeline.load(tiny_built)
    reference = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_source), safety_checker=None, requires_safety_checker=False
    )
    reference.scheduler = diffusers.LCMScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    height, width, seed, guidance = 64, 64, 7, 1.5
    latents = initial_latents(sd, 1, height, width, seed=6)
    rng = np.random.default_rng(seed)
    step_noises = [rng.standard_normal(latents.shape, dtype=np.float32) for _ in range(STEPS - 1)]
    inject_noise(monkeypatch, scheduling_lcm, step_noises)
    settings = dict(
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        height=height,
        width=width,
        output_type="np",
    )
    theirs = reference(PROMPTS[0], latents=torch.from_numpy(latents), **settings).images
    recorder = BatchRecorder(sd.session("unet"))
    sd.replace_session("unet", recorder)
    ours = sd(PROMPTS[0], latents=latents, seed=seed, scheduler="LCMScheduler", **settings)
    assert max_diff(ours.images, theirs) <= MAX_IMAGE_DIFF
    assert [batch for batch, _ in recorder.calls] == [2] * STEPS  # uncond + cond rows
    assert not any(GUIDANCE_EMBEDDING_INPUT in names for _, names in recorder.calls)


def test_lcm_pipeline_folder_without_guidance_embedding_is_refused_at_build(
    tiny_source, tmp_path, capsys
):
    """model_index.json says LatentConsistencyModelPipeline but the U-Net has no
    time_cond_proj_dim: diffusers' pipeline fails at its first call (a TypeError from a
    None embedding width); sdrt build says why in one line and exits 2."""
    import json
    import shutil

    source = tmp_path / "src"
    shutil.copytree(tiny_source, source)
    index = json.loads((source / "model_index.json").read_text())
    index["_class_name"] = "LatentConsistencyModelPipeline"
    (source / "model_index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    assert main(["build", str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "a LatentConsistencyModelPipeline expects an LCM-distilled U-Net" in err
    assert "time_cond_proj_dim" in err
    assert not out.exists()
