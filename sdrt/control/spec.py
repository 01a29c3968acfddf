"""The command line's ``--control [canny:]FILE[:SCALE[:START:END]]``: one control image per
ControlNet, and how strongly and over which part of the denoising it steers.

- ``FILE``: the control image (an edge map, a depth map, a pose drawing...), given to the
  ControlNet as it is (resized and scaled by sdrt.control.images);
- ``canny:FILE``: the canny edge map of the photo ``FILE``, made on the fly
  (sdrt.control.canny, OpenCV's default thresholds 100 and 200);
- ``SCALE``: diffusers' ``controlnet_conditioning_scale`` (default 1.0);
- ``START:END``: diffusers' ``control_guidance_start`` and ``control_guidance_end``, the
  fractions of the steps in which the ControlNet runs (default 0.0:1.0).

``:`` separates the fields, so a file name with a colon in it is refused with a clear error
(rename it), never read as a file and a number. Repeated ``--control`` options are matched
in order with the folder's ControlNets; ``call_arguments`` makes the lists the Pipeline
call takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdrt.errors import InputError

OPTION = "--control"
SYNTAX = "[canny:]FILE[:SCALE[:START:END]]"
DETECTORS = ("canny",)


@dataclass(frozen=True)
class ControlSpec:
    """One ``--control``: its image's source, and diffusers' settings for its ControlNet."""

    path: Path
    detector: str | None = None  # "canny": the image is made from the photo at ``path``
    scale: float = 1.0  # controlnet_conditioning_scale
    start: float = 0.0  # control_guidance_start
    end: float = 1.0  # control_guidance_end


def parse_control(text: str) -> ControlSpec:
    """``"canny:photo.jpg:0.8:0:0.5"`` -> ControlSpec(Path("photo.jpg"), "canny", 0.8, 0.0, 0.5);
    InputError naming ``--control`` for anything else."""
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
    if not path:
        raise InputError(f"{OPTION}: expected {SYNTAX} with a FILE, got {text!r}")
    if len(numbers) not in (0, 1, 3):
        what = "START without END" if len(numbers) == 2 else f"{len(numbers)} numbers"
        raise InputError(
            f"{OPTION}: expected {SYNTAX}: a FILE, then SCALE, or SCALE, START and END, got "
            f"{what} in {text!r}{_colon_hint(text)}"
        )
    values = [_number(field, text) for field in numbers]
    scale = values[0] if values else 1.0
    start, end = values[1:] if len(values) == 3 else (0.0, 1.0)
    if not 0.0 <= start < end <= 1.0:
        raise InputError(
            f"{OPTION}: expected 0 <= START < END <= 1 (fractions of the steps), got "
            f"START {start:g} and END {end:g} in {text!r}"
        )
    if not Path(path).is_file():
        raise InputError(f"{OPTION}: no such file {path!r} (from {text!r})")
    return ControlSpec(Path(path), detector, scale, start, end)


def _number(field: str, text: str) -> float:
    try:
        value = float(field)
    except ValueError:
        raise InputError(
            f"{OPTION}: expected {SYNTAX} with SCALE, START and END numbers, got {field!r} in "
            f"{text!r}{_colon_hint(text)}"
        ) from None
    if not math.isfinite(value):
        raise InputError(f"{OPTION}: expected finite numbers, got {field!r} in {text!r}")
    return value


def _colon_hint(text: str) -> str:
    """What a misplaced ':' most likely means: a file name with one, or another detector."""
    head = text.partition(":")[0]
    if len(head) == 1 and head.isalpha():
        return " (drive letters, and other file names with ':', are not supported)"
    if head.isidentifier() and not Path(head).exists():
        return (
            f" ({head!r} is not a detector: sdrt makes {', '.join(DETECTORS)}; run others "
            "yourself and pass their images; file names with ':' are not supported)"
        )
    return " (file names with ':' are not supported)"


def control_images(controls: Sequence[ControlSpec], read: Callable[[Path], object]) -> list:
    """Each control's image: ``read(path)`` (a PIL image), then its detector, if any."""
    images = []
    for control in controls:
        image = read(control.path)
        if control.detector == "canny":
            from sdrt.control.canny import canny

            image = canny(image)
        images.append(image)
    return images


def call_arguments(controls: Sequence[ControlSpec], images: Sequence) -> dict[str, list]:
    """The Pipeline call's keyword arguments (diffusers' names), one list entry per
    ControlNet in order: ``control_image``, ``controlnet_conditioning_scale``,
    ``control_guidance_start`` and ``control_guidance_end``."""
    if len(images) != len(controls):
        raise InputError(
            f"{OPTION}: expected one image per control ({len(controls)}), got {len(images)}"
        )
    return {
        "control_image": list(images),
        "controlnet_conditioning_scale": [c.scale for c in controls],
        "control_guidance_start": [c.start for c in controls],
        "control_guidance_end": [c.end for c in controls],
    }
