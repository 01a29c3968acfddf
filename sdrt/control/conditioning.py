"""A control image as diffusers' ControlNet pipelines' ``prepare_image`` makes it: resized
to the output size, RGB (or the ControlNet's channels), in [0, 1] without normalisation,
repeated for the batch, and doubled for classifier-free guidance unless in guess mode.

(The minimal preparation the ControlNet loop needs; sdrt/control/images.py is the fuller
one that the CLI and service share.)"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sdrt.images import preprocess_image

NAME = "control_image"


def prepare_control_image(
    image: Any, width: int, height: int, channels: int, batch: int, doubled: bool
) -> np.ndarray:
    """(batch, or 2 * batch when ``doubled``, channels, height, width) float32 in [0, 1]."""
    if channels == 3:
        # preprocess_image's RGB pixels in [-1, 1] (PIL images resized with Lanczos, as
        # VaeImageProcessor does), taken back to [0, 1]: do_normalize=False.
        pixels = (preprocess_image(image, width, height, NAME) + 1.0) / 2.0
    else:
        pixels = _other_channels(image, width, height, channels)
    pixels = np.repeat(pixels, batch, axis=0)
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
