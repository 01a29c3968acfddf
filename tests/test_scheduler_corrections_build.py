"""A build of a model with an outdated scheduler config writes, records and shows the
corrections, and its images equal diffusers' (which corrects the config on load)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import sdrt
from sdrt.cli import main
from sdrt.manifest import read_manifest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# As tests/test_pipeline_parity.py: float32 rounding only (worst measured 5.3e-6).
MAX_IMAGE_DIFF = 1e-4
# The uncorrected config must move the image by more than this, or the parity would not
# show the correction (measured: DDIM with steps_offset 0 and clip_sample true, 3 steps).
MIN_UNCORRECTED_DIFF = 1e-3
STEPS = 3
PROMPT = "a red fox in the snow"

OUTDATED_DDIM = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 0,
}


@pytest.fixture(scope="module")
def outdated(tiny_source, tiny_built, tmp_path_factory):
    """(source folder, built folder) of the tiny model with OUTDATED_DDIM as its scheduler.
    The build reuses tiny_built's graphs (same weights), so only the configs are new."""
    root = tmp_path_factory.mktemp("outdated")
    source = root / "source"
    shutil.copytree(tiny_source, source)
    (source / "scheduler" / "scheduler_config.json").write_text(json.dumps(OUTDATED_DDIM))
    index = json.loads((source / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDIMScheduler"]  # the class diffusers instantiates
    (source / "model_index.json").write_text(json.dumps(index))
    built = root / "built"
    shutil.copytree(tiny_built, built)
    from sdrt.export.build import BuildConfig, build

    result = build(
        BuildConfig(source=str(source), output=built, min_size=64, max_size=256, force=True)
    )
    assert {c.action for c in result.components} == {"reused"}
    return source, built


def test_corrections_are_written_and_recorded(outdated):
    _, built = outdated
    written = json.loads((built / "scheduler" / "scheduler_config.json").read_text())
    assert written == {**OUTDATED_DDIM, "steps_offset": 1, "clip_sample": False}
    recorded = {(c.component, c.key, c.old, c.new) for c in read_manifest(built).config_corrections}
    assert recorded == {
        ("scheduler", "steps_offset", 0, 1),
        ("scheduler", "clip_sample", True, False),
    }


def test_info_shows_the_corrections(outdated, tiny_built, capsys):
    assert main(["info", str(outdated[1])]) == 0
    out = capsys.readouterr().out
    assert "scheduler steps_offset: 0 -> 1" in out
    assert "scheduler clip_sample: true -> false" in out
    assert main(["info", str(tiny_built)]) == 0
    assert "corrections    none" in capsys.readouterr().out


def test_images_equal_diffusers_corrected_pipeline(outdated):
    source, built = outdated
    reference = diffusers.StableDiffusionPipeline.from_pretrained(
        str(source), safety_checker=None, requires_safety_checker=False
    )
    reference.set_progress_bar_config(disable=True)
    assert reference.scheduler.config.steps_offset == 1  # diffusers corrected it on load
    pipe = sdrt.Pipeline.load(built)
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8), dtype=np.float32)
    settings = dict(num_inference_steps=STEPS, guidance_scale=7.5, output_type="np")
    ours = pipe(PROMPT, latents=latents, **settings).images
    theirs = reference(PROMPT, latents=torch.from_numpy(latents), **settings).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF
    # Without the correction (the scheduler as written) diffusers gives another image.
    reference.scheduler = diffusers.DDIMScheduler.from_config(OUTDATED_DDIM)
    uncorrected = reference(PROMPT, latents=torch.from_numpy(latents), **settings).images
    assert float(np.abs(ours - uncorrected).max()) > MIN_UNCORRECTED_DIFF


@pytest.fixture(scope="module")
def without_offset(tiny_source, tiny_built, tmp_path_factory):
    """(source, built) of the tiny model whose PNDM config has no steps_offset at all:
    diffusers fills in PNDM's default 0 (noting it in ``_use_default_values``) and its
    pipeline corrects that to 1. The build reuses tiny_built's graphs."""
    root = tmp_path_factory.mktemp("no-offset")
    source = root / "source"
    shutil.copytree(tiny_source, source)
    path = source / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    del config["steps_offset"]
    path.write_text(json.dumps(config))
    built = root / "built"
    shutil.copytree(tiny_built, built)
    from sdrt.export.build import BuildConfig, build

    build(BuildConfig(source=str(source), output=built, min_size=64, max_size=256, force=True))
    return source, built


def test_a_swapped_scheduler_drops_the_defaulted_key_as_diffusers(without_offset):
    source, built = without_offset
    reference = diffusers.StableDiffusionPipeline.from_pretrained(
        str(source), safety_checker=None, requires_safety_checker=False
    )
    reference.set_progress_bar_config(disable=True)
    corrected = dict(reference.scheduler.config)
    assert corrected["steps_offset"] == 1 and "steps_offset" in corrected["_use_default_values"]
    recorded = read_manifest(built).config_corrections
    assert [(c.key, c.old, c.new) for c in recorded] == [("steps_offset", None, 1)]
    pipe = sdrt.Pipeline.load(built)
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8), dtype=np.float32)
    settings = dict(num_inference_steps=STEPS, guidance_scale=7.5, output_type="np")

    def theirs():
        return reference(PROMPT, latents=torch.from_numpy(latents), **settings).images

    # The folder's own scheduler (PNDM) keeps the corrected steps_offset, as diffusers'.
    assert float(np.abs(pipe(PROMPT, latents=latents, **settings).images - theirs()).max()) <= (
        MAX_IMAGE_DIFF
    )
    # A swap takes DDIM's default 0, as diffusers' from_config of the corrected config does.
    reference.scheduler = diffusers.DDIMScheduler.from_config(reference.scheduler.config)
    assert reference.scheduler.config.steps_offset == 0
    ours = pipe(PROMPT, latents=latents, scheduler="DDIMScheduler", **settings).images
    assert float(np.abs(ours - theirs()).max()) <= MAX_IMAGE_DIFF
    # Keeping the corrected value would give another image.
    kept = {k: v for k, v in corrected.items() if k != "_use_default_values"}
    reference.scheduler = diffusers.DDIMScheduler.from_config(kept)
    assert reference.scheduler.config.steps_offset == 1
    assert float(np.abs(ours - theirs()).max()) > MIN_UNCORRECTED_DIFF
