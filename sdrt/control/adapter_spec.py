"""The command line's ``--adapter-image [canny:]FILE[:SCALE[:FACTOR]]``: the T2I-Adapter's
image, and diffusers' ``adapter_conditioning_scale`` (default 1.0) and
``adapter_conditioning_factor`` (the fraction of the steps it feeds, default 1.0).

As ``--control`` (sdrt/control/spec.py, whose ControlSpec and image reading it shares):
``canny:`` makes the photo's canny edge map, and ``:`` separates the fields, so a file name
with a colon in it is refused with a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sdrt.control.spec import DETECTORS, ControlSpec, control_images
from sdrt.errors import InputError

OPTION = "--adapter-image"
SYNTAX = "[canny:]FILE[:SCALE[:FACTOR]]"


@dataclass(frozen=True)
class AdapterSpec:
    """One ``--adapter-image``: its image's source, scale and factor."""

    image: ControlSpec  # the file and its detector (scale: adapter_conditioning_scale)
    factor: float = 1.0  # adapter_conditioning_factor

    def call_arguments(self, read: Callable[[Path], object]) -> dict:
        """The Pipeline call's keyword arguments (diffusers' names, sdrt's adapter_image)."""
        (image,) = control_images([self.image], read)
        return {
            "adapter_image": image,
            "adapter_conditioning_scale": self.image.scale,
            "adapter_conditioning_factor": self.factor,
        }


def parse_adapter_image(text: str) -> AdapterSpec:
    """``"canny:photo.jpg:0.8:0.5"`` -> AdapterSpec(ControlSpec(Path("photo.jpg"), "canny",
    0.8), 0.5); InputError naming ``--adapter-image`` for anything else."""
    if ":" in text and Path(text).exists():
        raise InputError(
            f"{OPTION}: {text!r} names a file, but ':' separates the fields of {SYNTAX}; "
            "give the file a name without ':'"
        )
    fields = text.split(":")
    detector = None
    if len(fields) > 1 and fields[0] in DETECTORS:
        detector, fields = fields[0], fields[1:]
    path, numbers = fields[0], fields[1:]
    if not path or len(numbers) > 2:
        raise InputError(
            f"{OPTION}: expected {SYNTAX}: a FILE, then up to two numbers, got {text!r} "
            "(file names with ':' are not supported)"
        )
    values = [_number(field, text) for field in numbers] + [1.0, 1.0][len(numbers) :]
    scale, factor = values
    if not 0.0 <= factor <= 1.0:
        raise InputError(
            f"{OPTION}: expected FACTOR in [0, 1] (the fraction of the steps the adapter "
            f"feeds), got {factor:g} in {text!r}"
        )
    if not Path(path).is_file():
        raise InputError(f"{OPTION}: no such file {path!r} (from {text!r})")
    return AdapterSpec(ControlSpec(Path(path), detector, scale), factor)


def _number(field: str, text: str) -> float:
    try:
        value = float(field)
    except ValueError:
        raise InputError(
            f"{OPTION}: expected {SYNTAX} with SCALE and FACTOR numbers, got {field!r} in "
            f"{text!r} (file names with ':' are not supported)"
        ) from None
    if not math.isfinite(value):
        raise InputError(f"{OPTION}: expected finite numbers, got {field!r} in {text!r}")
    return value
