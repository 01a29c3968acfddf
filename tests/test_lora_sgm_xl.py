"""kohya SDXL LoRA files with U-Net modules in the SGM layout (``lora_unet_input_blocks_…``),
as kohya's sd-scripts write them, on the tiny SDXL model: at run time against diffusers'
load_lora_weights of the same file, fused at build time against run time, and SGM names that
match no module."""

from __future__ import annotations

import numpy as np
import pytest
from lora_helpers import diffusers_xl_images, write_sgm_kohya_file
from safetensors.numpy import save_file

import sdrt
from sdrt.adapters.safetensors_file import read_safetensors
from sdrt.errors import InputError

pytest.importorskip("peft")

# Images against diffusers, in 0..1 (the 2/255).
IMAGE_TOLERANCE = 2 / 255
PROMPT = "a red fox in snow"
STEPS = 3
SCHEDULER = "EulerDiscreteScheduler"  # what diffusers_xl_images sets
SIZE = 64
SCALE = 0.7  # the build-time fusing scale


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    """(source folder, LoRA-ready build, the SGM-layout kohya file)."""
    from sdrt.export.build import BuildConfig, build
    from sdrt.export.random_model import init_random_model

    root = tmp_path_factory.mktemp("sgm-xl")
    source = init_random_model("tiny-xl", root / "src")
    config = BuildConfig(
        source=str(source), output=root / "ready", min_size=SIZE, max_size=SIZE, lora_ready=True
    )
    built = build(config).output
    return source, built, write_sgm_kohya_file(root / "sgm.safetensors", source, seed=5)


@pytest.fixture(scope="module")
def latents():
    return np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)


def _ours(pipe, latents) -> np.ndarray:
    return pipe(
        PROMPT, num_inference_steps=STEPS, latents=latents, output_type="np", scheduler=SCHEDULER
    ).images


def _close(ours, theirs) -> float:
    return float(np.abs(ours - theirs).max())


def test_the_file_is_in_the_sgm_layout(xl):
    tensors, _ = read_safetensors(xl[2])
    unet = {k.split(".")[0] for k in tensors if k.startswith("lora_unet_")}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in unet
    assert "lora_unet_middle_block_1_proj_in" in unet
    assert any(k.startswith("lora_unet_output_blocks_") for k in unet)
    assert not any(k.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks")) for k in unet)
    assert any(k.startswith("lora_te1_") for k in tensors)
    assert any(k.startswith("lora_te2_") for k in tensors)


def test_sgm_file_matches_diffusers_load_lora_weights(xl, latents):
    source, built, lora = xl
    base_theirs, _ = diffusers_xl_images(source, None, PROMPT, latents, STEPS)
    theirs, touched = diffusers_xl_images(source, lora, PROMPT, latents, STEPS)
    assert touched == ["text_encoder", "text_encoder_2", "unet"]  # diffusers took all of it
    pipe = sdrt.Pipeline.load(built, backend="ort-cpu")
    assert _close(_ours(pipe, latents), base_theirs) <= IMAGE_TOLERANCE
    name = pipe.load_lora_weights(lora, adapter_name="sgm")
    assert pipe.get_list_adapters() == {
        "unet": [name],
        "text_encoder": [name],
        "text_encoder_2": [name],
    }
    assert _close(_ours(pipe, latents), theirs) <= IMAGE_TOLERANCE
    # The adapter changes the image far beyond the tolerance: the check can fail.
    assert _close(theirs, base_theirs) > 3 * IMAGE_TOLERANCE


@pytest.mark.heavy
def test_a_fused_build_of_the_sgm_file_equals_it_at_run_time(xl, latents):
    from sdrt.export.build import BuildConfig, build

    from sdrt.adapters.options import LoraOption

    source, built, lora = xl
    config = BuildConfig(
        source=str(source),
        output=built.parent.parent / "fused",
        min_size=SIZE,
        max_size=SIZE,
        loras=(LoraOption(lora, SCALE),),
    )
    fused = _ours(sdrt.Pipeline.load(build(config).output), latents)
    pipe = sdrt.Pipeline.load(built, backend="ort-cpu")
    base = _ours(pipe, latents)
    pipe.set_adapters(pipe.load_lora_weights(lora), SCALE)
    run_time = _ours(pipe, latents)
    assert _close(fused, run_time) <= IMAGE_TOLERANCE
    assert _close(fused, base) > 3 * IMAGE_TOLERANCE


def _with_module(lora, path, module: str):
    """``lora``'s tensors plus one rank-2 module ``module`` (out/in from an existing one)."""
    tensors, _ = read_safetensors(lora)
    like = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    down, up = tensors[f"{like}.lora_down.weight"], tensors[f"{like}.lora_up.weight"]
    tensors[f"{module}.lora_down.weight"] = np.ascontiguousarray(down[:2])
    tensors[f"{module}.lora_up.weight"] = np.ascontiguousarray(up[:, :2])
    tensors[f"{module}.alpha"] = np.array(2.0, np.float32)
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    ("module", "message"),
    [
        # block 4 of level 1 has one transformer block: maps to a module the model lacks
        (
            "lora_unet_input_blocks_4_1_transformer_blocks_7_attn1_to_q",
            r"match no module.*unet:input_blocks_4_1_transformer_blocks_7_attn1_to_q "
            r"\(as down_blocks_1_attentions_0_transformer_blocks_7_attn1_to_q\)",
        ),
        # SDXL's middle block has blocks 0 to 2
        (
            "lora_unet_middle_block_5_proj_in",
            r"module 'lora_unet_middle_block_5_proj_in' names no block of an SDXL U-Net",
        ),
    ],
)
def test_sgm_names_that_match_no_module_are_named(xl, latents, tmp_path, module, message):
    _, built, lora = xl
    bad = _with_module(lora, tmp_path / "bad.safetensors", module)
    pipe = sdrt.Pipeline.load(built, backend="ort-cpu")
    before = pipe.lora_weights
    with pytest.raises(InputError, match=r"bad\.safetensors: .*" + message):
        pipe.load_lora_weights(bad, adapter_name="bad")
    assert pipe.lora_weights is before
    assert pipe.get_list_adapters() == {} and pipe.get_active_adapters() == []
    # the name is free: the good file loads under it
    assert pipe.load_lora_weights(lora, adapter_name="bad") == "bad"
