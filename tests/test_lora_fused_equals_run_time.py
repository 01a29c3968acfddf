"""The two ways to use a LoRA agree: a folder built with it fused (`sdrt build --lora
FILE:SCALE`) gives the image of a LoRA-ready folder with the same file loaded at run time
(`load_lora_weights` + `set_adapters(name, SCALE)`), for the U-Net and the text encoder."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_MAX_SIZE, TINY_MIN_SIZE
from lora_helpers import write_peft_file

import sdrt

pytest.importorskip("peft")

# The bound for images in [0, 1]; both sides are float32 ONNX Runtime.
MAX_IMAGE_DIFF = 2 / 255
# The LoRA must move the image by more than this, or the comparison tests nothing.
MIN_LORA_EFFECT = 1e-2
SCALE = 0.7
STEPS = 3
PROMPT = "a red fox in snow"


def _image(pipe) -> np.ndarray:
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    return pipe(
        PROMPT,
        num_inference_steps=STEPS,
        latents=latents,
        scheduler="EulerDiscreteScheduler",
        output_type="np",
    ).images


def test_a_fused_build_equals_the_same_lora_at_run_time(
    tiny_source, tiny_built_lora_ready, tmp_path_factory
):
    from sdrt.export.build import BuildConfig, build

    from sdrt.adapters.options import LoraOption

    lora = write_peft_file(tmp_path_factory.mktemp("lora"), tiny_source, seed=3)
    fused_folder = build(
        BuildConfig(
            source=str(tiny_source),
            output=tmp_path_factory.mktemp("fused") / "tiny",
            min_size=TINY_MIN_SIZE,
            max_size=TINY_MAX_SIZE,
            loras=(LoraOption(lora, SCALE),),
        )
    ).output
    fused = _image(sdrt.Pipeline.load(fused_folder))

    pipe = sdrt.Pipeline.load(tiny_built_lora_ready, backend="ort-cpu")
    base = _image(pipe)
    name = pipe.load_lora_weights(lora, adapter_name="fox")
    pipe.set_adapters(name, SCALE)
    run_time = _image(pipe)

    assert np.abs(fused - base).max() > MIN_LORA_EFFECT
    assert np.abs(fused - run_time).max() <= MAX_IMAGE_DIFF
