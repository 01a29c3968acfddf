"""Canny edge maps, the control image of the canny ControlNets, as diffusers' docs make them.

diffusers' ControlNet guide runs ``cv2.Canny(np.array(image), 100, 200)`` on the RGB
image's uint8 pixels and stacks the one-channel edges into three; ``canny`` does exactly
that. OpenCV comes from the ``control`` extra (``opencv-python-headless``), imported only
here, when an edge map is made.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
from PIL import Image

from sdrt.errors import ParameterError, SdrtError

# diffusers' ControlNet guide's thresholds (and lllyasviel's canny annotator's)
LOW_THRESHOLD = 100
HIGH_THRESHOLD = 200
INSTALL_HINT = "pip install 'sdrt[control]'"


def canny(
    image: Image.Image, low_threshold: float = LOW_THRESHOLD, high_threshold: float = HIGH_THRESHOLD
) -> Image.Image:
    """The RGB edge map of ``image``: white (255) edges on black, the same in all three
    channels. Gradients above ``high_threshold`` start an edge; those above
    ``low_threshold`` continue one (OpenCV's hysteresis)."""
    check_thresholds(low_threshold, high_threshold)
    if not isinstance(image, Image.Image):
        raise ParameterError("{image}: expected a PIL image, got {kind}", kind=type(image).__name__)
    cv2 = import_cv2()
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low_threshold, high_threshold)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def check_thresholds(low_threshold: float, high_threshold: float) -> None:
    """ParameterError unless both are finite numbers >= 0 with low <= high (OpenCV would
    swap them silently; a user who did so most likely meant something else)."""
    for name, value in (("low_threshold", low_threshold), ("high_threshold", high_threshold)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0:
            raise ParameterError(
                "{" + name + "}: expected a number >= 0, got {value!r}", value=value
            )
    if low_threshold > high_threshold:
        raise ParameterError(
            "{low_threshold}: expected at most {high_threshold} ({high:g}), got {low:g}",
            low=low_threshold,
            high=high_threshold,
        )


def import_cv2() -> ModuleType:
    """OpenCV, or an error that says which extra installs it."""
    try:
        import cv2
    except ImportError as e:
        raise SdrtError(f"canny edge maps need OpenCV ({INSTALL_HINT}): {e}") from None
    return cv2
