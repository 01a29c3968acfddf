"""Run-time LoRA on a folder built ``--lora-ready --controlnet``: the residual U-Net takes
the U-Net's LoRA feeds, so a ControlNet call with an adapter equals diffusers'
StableDiffusionControlNetPipeline with load_lora_weights (the LoRA on the U-Net and text
encoder, not the ControlNet, as diffusers applies it)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_CONTROLNETS
from controlnet_helpers import control_picture, controlnet_options, rebuild_with
from lora_helpers import SCHEDULER, write_peft_file
from test_lora_pipeline import IMAGE_TOLERANCE

import sdrt

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

PROMPT = "a red fox in snow"
STEPS = 3
EDGES = TINY_CONTROLNETS[0]


@pytest.fixture(scope="module")
def built(tiny_built_lora_ready, tiny_controlnet_sources, tmp_path_factory):
    """tiny_built_lora_ready rebuilt with a ControlNet (its graphs reused)."""
    output = tmp_path_factory.mktemp("cn-lora") / "tiny"
    controlnets = controlnet_options({EDGES: tiny_controlnet_sources[EDGES]})
    result = rebuild_with(tiny_built_lora_ready, output, lora_ready=True, controlnets=controlnets)
    assert {r.name for r in result.components if r.action == "exported"} == {
        "unet_controlnet",
        f"controlnet_{EDGES}",
    }
    return result.output


def test_run_time_lora_applies_to_the_residual_unet(
    built, tiny_source, tiny_controlnet_sources, tmp_path
):
    from sdrt.manifest import CONTROLNET_UNET

    lora = write_peft_file(tmp_path, tiny_source, seed=5)
    pipe = sdrt.Pipeline.load(built)
    unet, residual = (pipe.manifest.components[n] for n in ("unet", CONTROLNET_UNET))
    assert residual.lora_branches == unet.lora_branches and unet.lora_branches
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    image = control_picture(64, 64, seed=2)
    settings = dict(num_inference_steps=STEPS, guidance_scale=7.5, output_type="np")
    pipe.load_lora_weights(str(lora), adapter_name="p")
    ours = pipe(PROMPT, control_image=image, latents=latents, scheduler=SCHEDULER, **settings)

    controlnet = diffusers.ControlNetModel.from_pretrained(tiny_controlnet_sources[EDGES])
    reference = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        str(tiny_source), controlnet=controlnet, safety_checker=None
    )
    reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(lora), adapter_name="p")
    with torch.no_grad():
        theirs = reference(
            PROMPT, image=image, latents=torch.from_numpy(latents), **settings
        ).images
    assert float(np.abs(ours.images - theirs).max()) <= IMAGE_TOLERANCE
    pipe.unload_lora_weights()
    without = pipe(PROMPT, control_image=image, latents=latents, scheduler=SCHEDULER, **settings)
    assert float(np.abs(without.images - theirs).max()) > IMAGE_TOLERANCE
