"""A call's ControlNet arguments, checked against the folder: diffusers' names and rules.

``control_image`` is an image, or a list of images, one per ControlNet the call runs;
``controlnet`` picks them by the names ``sdrt build --controlnet`` gave (default: all, in
build order), matched in order with the images. ``controlnet_conditioning_scale``,
``control_guidance_start`` and ``control_guidance_end`` are a number for all or a list with
one per ControlNet (as diffusers' MultiControlNet; the scale's default, None, is diffusers'
default of the pipeline the call matches: 1.0, 0.8 with ``image``, 0.5 with ``mask_image``
(SDXL: 1.0));
``guess_mode`` runs the ControlNets on the conditional half of the guidance batch only,
with diffusers' scale ramp.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sdrt.errors import ParameterError
from sdrt.images import image_size
from sdrt.manifest import ControlNet, Manifest

# controlnet_conditioning_scale=None: diffusers' default of the pipeline the call matches
# (StableDiffusion(XL)ControlNetPipeline 1.0, ...Img2ImgPipeline 0.8, SD's InpaintPipeline
# 0.5, SDXL's 1.0)
DEFAULT_SCALES = {"txt2img": 1.0, "img2img": 0.8, "inpaint": 0.5, "inpaint-sdxl": 1.0}
DEFAULT_START = 0.0
DEFAULT_END = 1.0


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet a call runs, with its image and settings."""

    controlnet: ControlNet  # the folder's record: name, graph, conditioning channels
    image: Any  # as given: a PIL image or an HWC / 1HWC / HW array
    scale: float  # controlnet_conditioning_scale
    start: float  # control_guidance_start: the fraction of steps before it starts
    end: float  # control_guidance_end: the fraction of steps after which it stops


@dataclass(frozen=True)
class ControlSettings:
    units: tuple[ControlUnit, ...]
    guess_mode: bool  # as asked, or forced by a ControlNet with global_pool_conditions

    def keeps(self, step: int, steps: int) -> tuple[bool, ...]:
        """Whether each ControlNet runs at U-Net call ``step`` of ``steps``: diffusers'
        ``controlnet_keep`` (1.0 - float(i / n < start or (i + 1) / n > end))."""
        return tuple(not (step / steps < u.start or (step + 1) / steps > u.end) for u in self.units)

    @property
    def first_image(self) -> Any:
        return self.units[0].image


def check_control(
    manifest: Manifest,
    control_image: Any,
    controlnet: Any,
    scale: Any,
    start: Any,
    end: Any,
    guess_mode: Any,
    mode: str = "txt2img",
) -> ControlSettings | None:
    """The call's ControlNets and their settings, None without a control image, or a
    ParameterError naming what was expected and what came."""
    if control_image is None:
        if controlnet is not None:
            raise ParameterError(
                "{controlnet}: expected {control_image=} with it (a ControlNet runs on a "
                "control image); got {controlnet} {value!r} alone",
                value=controlnet,
            )
        return None
    if not manifest.controlnets:
        raise ParameterError(
            "{control_image}: this model folder was built without ControlNets (rebuild it "
            "with `sdrt build --controlnet [NAME=]FOLDER`); got a control image"
        )
    records = _chosen(manifest, controlnet)
    images = _images(control_image, records)
    count = len(records)
    if scale is None:
        scale = DEFAULT_SCALES.get(f"{mode}-{manifest.family}", DEFAULT_SCALES[mode])
    scales = _per_controlnet(scale, "controlnet_conditioning_scale", count)
    starts = _per_controlnet(start, "control_guidance_start", count)
    ends = _per_controlnet(end, "control_guidance_end", count)
    for s, e in zip(starts, ends, strict=True):
        if not 0.0 <= s < e <= 1.0:  # diffusers' check_inputs
            raise ParameterError(
                "{control_guidance_start} and {control_guidance_end}: expected 0 <= start < "
                "end <= 1, got start {start:g} and end {end:g}",
                start=s,
                end=e,
            )
    if not isinstance(guess_mode, (bool, np.bool_)):
        raise ParameterError(
            "{guess_mode}: expected True or False, got {value!r}", value=guess_mode
        )
    units = tuple(
        ControlUnit(r, image, sc, s, e)
        for r, image, sc, s, e in zip(records, images, scales, starts, ends, strict=True)
    )
    # As diffusers: a ControlNet with pooled conditions (shuffle) runs in guess mode; its
    # pipelines read the flag of the (first) ControlNet.
    forced = records[0].global_pool_conditions
    return ControlSettings(units, bool(guess_mode) or forced)


def _chosen(manifest: Manifest, controlnet: Any) -> tuple[ControlNet, ...]:
    """The folder's ControlNets the call names (default: all, in build order)."""
    built = {c.name: c for c in manifest.controlnets}
    if controlnet is None:
        return tuple(manifest.controlnets)
    names = [controlnet] if isinstance(controlnet, str) else controlnet
    if not isinstance(names, (list, tuple)) or not names:
        raise ParameterError(
            "{controlnet}: expected a ControlNet's name or a non-empty list of names (of "
            "{known}), got {value!r}",
            known=", ".join(built),
            value=controlnet,
        )
    for name in names:
        if not isinstance(name, str) or name not in built:
            raise ParameterError(
                "{controlnet}: expected names of this folder's ControlNets ({known}), got "
                "{value!r}",
                known=", ".join(built),
                value=name,
            )
    return tuple(built[n] for n in names)


def _images(control_image: Any, records: tuple[ControlNet, ...]) -> tuple[Any, ...]:
    """One image per chosen ControlNet, each of the channels it takes."""
    images = list(control_image) if isinstance(control_image, (list, tuple)) else [control_image]
    names = ", ".join(r.name for r in records)
    if len(images) != len(records):
        raise ParameterError(
            "{control_image}: expected {expected} image(s), one per ControlNet the call runs "
            "({names}; pick others with {controlnet=}), got {got}",
            expected=len(records),
            names=names,
            got=len(images),
        )
    for image, record in zip(images, records, strict=True):
        check_channels(image, record)
    return tuple(images)


def check_channels(image: Any, record: ControlNet) -> None:
    """A PIL image converts to any 1 or 3 channels; an array must have the ControlNet's."""
    image_size(image, "control_image")  # a PIL image or an image-shaped array
    wanted = record.conditioning_channels
    if isinstance(image, Image.Image):
        if wanted not in (1, 3):
            raise ParameterError(
                "{control_image}: the ControlNet {name!r} takes {wanted} channels, which a PIL "
                "image cannot give; pass an (H, W, {wanted}) array",
                name=record.name,
                wanted=wanted,
            )
        return
    array = image[0] if image.ndim == 4 else image
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels != wanted:
        raise ParameterError(
            "{control_image}: expected {wanted} channel(s) for the ControlNet {name!r} (its "
            "conditioning channels), got an array of {channels}",
            wanted=wanted,
            name=record.name,
            channels=channels,
        )


def _per_controlnet(value: Any, name: str, count: int) -> tuple[float, ...]:
    """A number for every ControlNet, or a list with one each."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ParameterError(
            f"{{{name}}}: expected a number or a list of {count} (one per ControlNet the call "
            "runs), got a list of {got}",
            got=len(values),
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ParameterError(f"{{{name}}}: expected finite numbers, got {{value!r}}", value=v)
    return tuple(float(v) for v in values)
