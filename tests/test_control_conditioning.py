"""Control images prepared as diffusers' ControlNet pipelines' prepare_image makes them
(VaeImageProcessor with do_convert_rgb=True, do_normalize=False; repeated for the batch,
doubled for guidance)."""

from __future__ import annotations

import numpy as np
import pytest
from controlnet_helpers import control_picture
from PIL import Image

from sdrt.control.conditioning import controlnet_cond

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# float32 rounding of one multiply-add: (2x - 1 + 1) / 2
MAX_PIXEL_DIFF = 1e-6


def _diffusers(image, width, height, batch, doubled):
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
    pixels = processor.preprocess(image, height=height, width=width).to(torch.float32)
    pixels = pixels.repeat_interleave(batch, dim=0)
    return (torch.cat([pixels] * 2) if doubled else pixels).numpy()


@pytest.mark.parametrize(("batch", "doubled"), [(1, False), (3, True)])
def test_rgb_control_images_are_prepared_as_diffusers_does(batch, doubled):
    image = control_picture(80, 48, seed=0)  # resized to 96x64 with Lanczos
    ours = controlnet_cond(image, 96, 64, 3, batch, doubled)
    theirs = _diffusers(image, 96, 64, batch, doubled)
    assert ours.shape == theirs.shape == (batch * (2 if doubled else 1), 3, 64, 96)
    assert float(np.abs(ours - theirs).max()) <= MAX_PIXEL_DIFF
    # a grey (L) image becomes RGB, as do_convert_rgb does
    grey = image.convert("L")
    assert (
        np.abs(
            controlnet_cond(grey, 96, 64, 3, 1, False) - _diffusers(grey, 96, 64, 1, False)
        ).max()
        <= MAX_PIXEL_DIFF
    )


def test_one_channel_controlnets_get_one_channel_in_unit_range():
    image = Image.fromarray(np.arange(64 * 96, dtype=np.uint32).reshape(64, 96).astype(np.uint8))
    from_pil = controlnet_cond(image, 96, 64, 1, 2, True)
    from_array = controlnet_cond(np.asarray(image), 96, 64, 1, 2, True)
    assert from_pil.shape == from_array.shape == (4, 1, 64, 96)
    expected = np.asarray(image, np.float32) / 255.0
    assert float(np.abs(from_pil[3, 0] - expected).max()) <= MAX_PIXEL_DIFF
    assert float(np.abs(from_array[0, 0] - expected).max()) <= MAX_PIXEL_DIFF
