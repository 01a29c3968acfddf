"""The ControlNets' ``controlnet_cond`` for a call: a 3-channel ControlNet's control image
prepared as diffusers' ControlNet pipelines prepare it (sdrt/control/images.py), and the
1-channel (or other) ControlNets' images taken to their channel count, in [0, 1]; repeated
for the batch, doubled for classifier-free guidance unless in guess mode."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sdrt.control.images import prepare_control_image
from sdrt.images import preprocess_image

NAME = "control_image"


def controlnet_cond(
    image: Any, width: int, height: int, channels: int, batch: int, doubled: bool
) -> np.ndarray:
    """(batch, or 2 * batch when ``doubled``, channels, height, width) float32 in [0, 1]."""
    if channels == 3:
        return prepare_control_image(
            image, width, height, batch, 1, do_classifier_free_guidance=doubled
        )
    pixels = np.repeat(_other_channels(image, width, height, channels), batch, axis=0)
    if doubled:
        pixels = np.concatenate([pixels, pixels], axis=0)
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _other_channels(image: Any, width: int, height: int, channels: int) -> np.ndarray:
    """(1, C, H, W) in [0, 1] of a 1-channel PIL image or an array of the right size (the
    channel count is checked with the call's arguments, sdrt/control/settings.py)."""
    if isinstance(image, Image.Image):
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        array = np.asarray(image.convert("L"), dtype=np.float32)[:, :, None] / 255.0
    else:
        # an array of the asked size: the RGB path checks its size and range on 3 of its
        # channels' worth; here each channel is checked the same way by preprocess_image.
        array = np.stack(
            [
                (preprocess_image(_plane(image, c), width, height, NAME)[0, 0] + 1.0) / 2.0
                for c in range(channels)
            ],
            axis=-1,
        )
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


def _plane(image: np.ndarray, channel: int) -> np.ndarray:
    array = image[0] if image.ndim == 4 else image
    return array if array.ndim == 2 else array[:, :, channel]
