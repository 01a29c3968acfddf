"""The public stage hook: every call's timings, per stage and step, and the callback."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.errors import InputError
from sdrt.pipeline import CALL_DEFAULTS
from sdrt.stages import STAGES, StageRecorder, StageTiming, summarize

STEPS = 3
FAST = dict(num_inference_steps=STEPS, height=64, width=64, output_type="np")


@pytest.fixture(scope="module")
def pipe(tiny_built):
    return sdrt.Pipeline.load(tiny_built, prompt_cache_size=0)


def _stages(result) -> list[tuple[str, int | None]]:
    return [(t.stage, t.step) for t in result.timings]


def test_txt2img_times_each_stage_in_order(pipe):
    result = pipe("a fox", negative_prompt="blurry", seed=0, scheduler="euler", **FAST)
    steps = [(name, i) for i in range(STEPS) for name in ("unet", "scheduler_step")]
    encode = [("tokenize", None), ("text_encoder", None)]
    # the prompt, then the negative prompt: each tokenized and encoded
    assert _stages(result) == encode + encode + steps + [("vae_decode", None)]
    assert all(t.seconds >= 0 for t in result.timings)
    assert set(summarize(result.timings)) <= set(STAGES)


def test_stage_callback_sees_the_same_timings_as_they_happen(pipe):
    seen: list[StageTiming] = []
    result = pipe(
        "a fox", seed=0, guidance_scale=1.0, scheduler="euler", stage_callback=seen.append, **FAST
    )
    assert tuple(seen) == result.timings
    assert [t.stage for t in seen].count("unet") == STEPS


def test_img2img_times_the_vae_encoder(pipe):
    image = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    result = pipe("a fox", image=image, strength=1.0, seed=0, **FAST)
    names = [t.stage for t in result.timings]
    assert names.count("vae_encode") == 1
    assert names.index("vae_encode") < names.index("unet")


def test_cached_prompts_skip_tokenizer_and_encoder(tiny_built):
    cached = sdrt.Pipeline.load(tiny_built)
    cached("a fox", seed=0, **FAST)
    again = cached("a fox", seed=0, **FAST)
    assert "text_encoder" not in {t.stage for t in again.timings}


def test_a_failed_stage_records_nothing():
    recorder = StageRecorder()
    with pytest.raises(RuntimeError), recorder.stage("unet", step=0):
        raise RuntimeError("boom")
    assert recorder.timings == []


def test_request_takes_the_call_defaults_and_rejects_unknown_arguments(pipe):
    request = pipe.request("a fox", num_inference_steps=4)
    assert request.num_inference_steps == 4
    assert request.guidance_scale == CALL_DEFAULTS["guidance_scale"] == 7.5
    with pytest.raises(InputError, match=r"unexpected arguments \['steps'\]"):
        pipe.request("a fox", steps=4)
