"""The build corrects outdated scheduler (and unet) configs exactly as diffusers' pipelines do.

Each rule is checked against diffusers itself: the pipeline class is constructed around a
scheduler made from the outdated config, and the config it ends up holding must equal ours.
Then the corrections must matter: the scheduler loop (the stand-in U-Net of the scheduler
tests) run by sdrt on the corrected config equals diffusers' corrected pipeline's, and the
uncorrected config gives another result.
"""

from __future__ import annotations

import numpy as np
import pytest
from scheduler_oracle import relative_error, run_diffusers, run_sdrt
from sdrt.export.architectures import TINY_UNET
from sdrt.export.scheduler_corrections import correct_scheduler_config, correct_unet_config

diffusers = pytest.importorskip("diffusers")

# The scheduler tests' latent tolerance (float32 rounding only, see test_schedulers_parity).
LATENT_RTOL = 1e-5
# An uncorrected config must move the final latents by more than this (relative), or the
# parity above would not show that the correction is what makes them equal.
MIN_UNCORRECTED_EFFECT = 1e-3
STEPS = 10
LATENT_SHAPE = (1, 4, 8, 8)

SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
INPAINT = "StableDiffusionInpaintPipeline"
XL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")

BASE = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
}
# Outdated configs as older or community models ship them.
OUTDATED = {
    "ddim-offset0-clip": {
        **BASE,
        "_class_name": "DDIMScheduler",
        "steps_offset": 0,
        "clip_sample": True,
    },
    "ddim-no-keys": {**BASE, "_class_name": "DDIMScheduler"},  # class defaults: 0 and true
    "ddpm-clip": {**BASE, "_class_name": "DDPMScheduler", "clip_sample": True, "steps_offset": 1},
    "lcm-clip": {**BASE, "_class_name": "LCMScheduler", "clip_sample": True, "steps_offset": 1},
    "pndm-old": {
        **BASE,
        "_class_name": "PNDMScheduler",
        "steps_offset": 0,
        "skip_prk_steps": False,
        "clip_sample": True,  # not a PNDM key, but kept by diffusers and corrected
    },
    "euler-offset0": {**BASE, "_class_name": "EulerDiscreteScheduler", "steps_offset": 0},
    "current": {
        **BASE,
        "_class_name": "PNDMScheduler",
        "steps_offset": 1,
        "clip_sample": False,
        "skip_prk_steps": True,
    },
}


def _diffusers_pipeline(pipeline_class: str, scheduler=None, unet=None):
    """The pipeline class around ``scheduler``/``unet`` only: its __init__ applies its rules."""
    cls = getattr(diffusers, pipeline_class)
    modules = {"vae": None, "text_encoder": None, "tokenizer": None, "unet": unet}
    if pipeline_class.startswith("StableDiffusionXL"):
        modules |= {"text_encoder_2": None, "tokenizer_2": None, "add_watermarker": False}
        if "Img2Img" in pipeline_class:
            modules |= {"requires_aesthetics_score": False}
    else:
        modules |= {"safety_checker": None, "feature_extractor": None}
        modules |= {"requires_safety_checker": False}
    return cls(scheduler=scheduler, **modules)


def _diffusers_corrected(raw: dict, pipeline_class: str) -> dict:
    scheduler = getattr(diffusers, raw["_class_name"]).from_config(raw)
    pipe = _diffusers_pipeline(pipeline_class, scheduler=scheduler)
    return {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}


def _as_diffusers_reads(config: dict) -> dict:
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    return {k: v for k, v in scheduler.config.items() if not k.startswith("_")}


@pytest.mark.parametrize("pipeline_class", [*SD_PIPELINES, INPAINT, *XL_PIPELINES])
@pytest.mark.parametrize("case", list(OUTDATED))
def test_corrected_config_is_what_the_diffusers_pipeline_holds(case, pipeline_class):
    raw = OUTDATED[case]
    corrected, corrections = correct_scheduler_config(raw, pipeline_class)
    assert _as_diffusers_reads(corrected) == _diffusers_corrected(raw, pipeline_class)
    # Only corrected keys change; each correction says from what to what.
    changed = {k for k in corrected if corrected[k] != raw.get(k)}
    assert changed == {c.key for c in corrections}
    for c in corrections:
        assert (c.component, c.old, corrected[c.key]) == ("scheduler", raw.get(c.key), c.new)


def test_each_rule_fires_where_diffusers_corrects():
    """The cases above are not all no-ops: the keys each pipeline class corrects."""

    def keys(case, pipeline_class):
        return {c.key for c in correct_scheduler_config(OUTDATED[case], pipeline_class)[1]}

    assert keys("ddim-offset0-clip", "StableDiffusionPipeline") == {"steps_offset", "clip_sample"}
    assert keys("ddim-no-keys", "StableDiffusionImg2ImgPipeline") == {
        "steps_offset",
        "clip_sample",
    }
    assert keys("pndm-old", INPAINT) == {"steps_offset", "skip_prk_steps"}
    assert keys("pndm-old", "StableDiffusionPipeline") == {"steps_offset", "clip_sample"}
    assert keys("ddim-offset0-clip", "StableDiffusionXLPipeline") == set()
    assert keys("current", "StableDiffusionPipeline") == set()
    absent = correct_scheduler_config(OUTDATED["ddim-no-keys"], "StableDiffusionPipeline")[1]
    assert {(c.key, c.old, c.old_effective, c.new) for c in absent} == {
        ("steps_offset", None, 0, 1),
        ("clip_sample", None, True, False),
    }


@pytest.mark.parametrize(
    ("version", "size"), [("0.8.0", 8), ("0.8.0", 64), ("0.9.0", 8), (None, 8)]
)
@pytest.mark.parametrize("pipeline_class", ["StableDiffusionPipeline", INPAINT, *XL_PIPELINES])
def test_old_unet_sample_size_as_diffusers(version, size, pipeline_class):
    raw = {**TINY_UNET, "sample_size": size}
    if version is not None:
        raw["_diffusers_version"] = version
    corrected, corrections = correct_unet_config(raw, pipeline_class)
    unet_class = diffusers.UNet2DConditionModel
    kept = [k for k in ("_diffusers_version",) if k in raw]  # from_config drops it otherwise
    unet = unet_class.from_config(raw)
    for key in kept:
        unet.register_to_config(**{key: raw[key]})
    pipe = _diffusers_pipeline(pipeline_class, scheduler=None, unet=unet)
    assert corrected["sample_size"] == pipe.unet.config.sample_size
    assert bool(corrections) == (corrected["sample_size"] != size)


@pytest.mark.parametrize(
    ("case", "scheduler"),
    [
        ("ddim-offset0-clip", "DDIMScheduler"),
        ("ddim-no-keys", "DDIMScheduler"),
        ("ddpm-clip", "DDPMScheduler"),
        ("lcm-clip", "LCMScheduler"),
        ("pndm-old", "PNDMScheduler"),
    ],
)
def test_sdrt_on_the_corrected_config_steps_as_the_diffusers_pipeline(case, scheduler, monkeypatch):
    raw = OUTDATED[case]
    corrected, corrections = correct_scheduler_config(raw, "StableDiffusionPipeline")
    assert corrections
    theirs_config = _diffusers_corrected(raw, "StableDiffusionPipeline")
    rng = np.random.default_rng(3)
    initial = rng.standard_normal(LATENT_SHAPE, dtype=np.float32)
    noises = [rng.standard_normal(LATENT_SHAPE, dtype=np.float32) for _ in range(2 * STEPS)]
    image = np.zeros(LATENT_SHAPE, dtype=np.float32)
    args = (STEPS, 1.0, initial, image, noises)
    theirs, _, _ = run_diffusers(scheduler, theirs_config, *args, monkeypatch)
    ours, _ = run_sdrt(scheduler, corrected, *args)
    assert relative_error(ours, theirs) <= LATENT_RTOL
    uncorrected, _ = run_sdrt(scheduler, dict(raw), *args)
    assert relative_error(uncorrected, theirs) > MIN_UNCORRECTED_EFFECT
