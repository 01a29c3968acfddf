"""SDXL ControlNet: sdrt's images equal diffusers' StableDiffusionXLControlNetPipeline's on
the tiny SDXL architecture with a random ControlNet of its U-Net (tests/controlnet_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest
from controlnet_helpers import (
    control_picture,
    controlnet_options,
    make_tiny_controlnet,
    rebuild_with,
)
from parity_helpers import max_diff
from test_pipeline_parity import MAX_IMAGE_DIFF

import sdrt

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]
HEIGHT, WIDTH = 64, 128


@pytest.fixture(scope="module")
def xl_controlnet(tiny_xl_source, tiny_xl_built, tmp_path_factory):
    """(sdrt pipeline, eager ControlNet): tiny_xl_built rebuilt with a ControlNet."""
    root = tmp_path_factory.mktemp("xl-controlnet")
    controlnet = make_tiny_controlnet(tiny_xl_source, root / "canny", seed=3)
    controlnets = controlnet_options({"canny": controlnet})
    output = rebuild_with(tiny_xl_built, root / "built", controlnets=controlnets).output
    eager = diffusers.ControlNetModel.from_pretrained(str(controlnet)).eval()
    return sdrt.Pipeline.load(output), eager


@pytest.mark.parametrize("guess_mode", [False, True])
def test_xl_txt2img_with_controlnet_equals_diffusers(tiny_xl_source, xl_controlnet, guess_mode):
    sd, eager = xl_controlnet
    reference = diffusers.StableDiffusionXLControlNetPipeline.from_pretrained(
        str(tiny_xl_source), controlnet=eager
    )
    reference.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 16), dtype=np.float32)
    image = control_picture(WIDTH, HEIGHT, seed=0)
    settings = dict(
        num_inference_steps=3,
        guidance_scale=7.5,
        height=HEIGHT,
        width=WIDTH,
        guess_mode=guess_mode,
        controlnet_conditioning_scale=0.9,
        output_type="np",
    )
    theirs = reference(PROMPTS, image=image, latents=torch.from_numpy(latents), **settings).images
    ours = sd(PROMPTS, control_image=image, latents=latents, **settings).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF
    plain = sd(PROMPTS, latents=latents, **dict(settings, guess_mode=False)).images
    assert max_diff(plain, theirs) > 100 * MAX_IMAGE_DIFF


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_xl_img2img_and_inpainting_with_controlnet_equal_diffusers(
    tiny_xl_source, xl_controlnet, monkeypatch, mode
):
    """Both at diffusers' default scale of the pipeline (0.8 for img2img, 1.0 inpainting)."""
    from diffusers.pipelines.controlnet import (
        pipeline_controlnet_inpaint_sd_xl,
        pipeline_controlnet_sd_xl_img2img,
    )
    from test_pipeline_xl import _image_and_mask, _same_noise_and_deterministic_encoder

    sd, eager = xl_controlnet
    image, mask = _image_and_mask(WIDTH, HEIGHT)
    control = control_picture(WIDTH, HEIGHT, seed=1)
    noise = np.random.default_rng(4).standard_normal((1, 4, 8, 16), dtype=np.float32)
    settings = dict(num_inference_steps=4, guidance_scale=7.5, output_type="np", image=image)
    if mode == "img2img":
        module = pipeline_controlnet_sd_xl_img2img
        cls = diffusers.StableDiffusionXLControlNetImg2ImgPipeline
        settings |= dict(strength=0.5)
    else:
        module = pipeline_controlnet_inpaint_sd_xl
        cls = diffusers.StableDiffusionXLControlNetInpaintPipeline
        settings |= dict(mask_image=mask, strength=0.75, height=HEIGHT, width=WIDTH)
    _same_noise_and_deterministic_encoder(monkeypatch, module, noise)
    reference = cls.from_pretrained(str(tiny_xl_source), controlnet=eager)
    reference.set_progress_bar_config(disable=True)
    theirs = reference(PROMPTS[0], control_image=control, **settings).images
    ours = sd(PROMPTS[0], control_image=control, latents=noise, **settings).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF
