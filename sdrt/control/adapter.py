"""T2I-Adapter at run time: diffusers' StableDiffusion(XL)AdapterPipeline's arguments.

The folder's graphs come from ``sdrt build --t2i-adapter`` (export/t2i_adapter.py). The
adapter runs once per call, not per step: its features, times ``adapter_conditioning_scale``,
repeated for every image of the call and doubled for classifier-free guidance, go to the
U-Net that takes them (diffusers' ``down_intrablock_additional_residuals``) at the U-Net
calls ``i < int(num_inference_steps * adapter_conditioning_factor)``; the later calls run
the plain U-Net, as diffusers calls its U-Net without them.

diffusers' pipelines name the adapter image ``image``; sdrt's ``image`` is img2img's init
image, so here it is ``adapter_image``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from sdrt.control.conditioning import controlnet_cond
from sdrt.errors import ParameterError
from sdrt.images import image_size
from sdrt.manifest import Manifest, T2IAdapter, adapter_feature

NAME = "adapter_image"
DEFAULT_SCALE = 1.0
DEFAULT_FACTOR = 1.0

# (feeds) -> the adapter graph's outputs by name
RunAdapter = Callable[[dict[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class AdapterSettings:
    """A call's adapter image and settings, checked against the folder's adapter."""

    adapter: T2IAdapter
    image: Any  # as given: a PIL image or an HWC / 1HWC / HW array
    scale: float  # adapter_conditioning_scale: the features' weight
    factor: float  # adapter_conditioning_factor: the fraction of steps they feed


def check_adapter(
    manifest: Manifest, adapter_image: Any, scale: Any, factor: Any
) -> AdapterSettings | None:
    """The call's adapter settings, None without an adapter image, or a ParameterError
    naming what was expected and what came."""
    if adapter_image is None:
        return None
    if manifest.t2i_adapter is None:
        raise ParameterError(
            "{adapter_image}: this model folder was built without a T2I-Adapter (rebuild it "
            "with `sdrt build --t2i-adapter [NAME=]FOLDER`); got an adapter image"
        )
    adapter = manifest.t2i_adapter
    _check_channels(adapter_image, adapter)
    scale = _finite(scale, "adapter_conditioning_scale")
    factor = _finite(factor, "adapter_conditioning_factor")
    if not 0.0 <= factor <= 1.0:
        raise ParameterError(
            "{adapter_conditioning_factor}: expected a fraction of the steps in [0, 1], got "
            "{value:g}",
            value=factor,
        )
    return AdapterSettings(adapter, adapter_image, scale, factor)


def adapter_default_size(
    settings: AdapterSettings, given: tuple[Any, Any], size: tuple[int, int]
) -> tuple[int, int]:
    """``size`` with the sides the call left out (None in ``given``) rounded down to the
    adapter's downscale_factor, as diffusers' ``_default_height_width``; no lower than it."""
    multiple = settings.adapter.downscale_factor
    return tuple(
        side if asked is not None else max(multiple, side // multiple * multiple)
        for asked, side in zip(given, size, strict=True)
    )


def check_adapter_size(settings: AdapterSettings | None, height: int, width: int) -> None:
    """The output size must be a multiple of the adapter's pixel unshuffle (8; SDXL's 16)."""
    if settings is None:
        return
    multiple = settings.adapter.downscale_factor
    if height % multiple or width % multiple:
        raise ParameterError(
            "{height} and {width}: expected multiples of {multiple} for the T2I-Adapter "
            "{name!r} (its downscale_factor), got {got}",
            multiple=multiple,
            name=settings.adapter.name,
            got=f"{height}x{width}",
        )


def _check_channels(image: Any, adapter: T2IAdapter) -> None:
    """A PIL image converts to the adapter's 1 or 3 channels; an array must have them."""
    if isinstance(image, (list, tuple)):
        raise ParameterError(
            "{adapter_image}: expected one image (a PIL image or an array, used for every "
            "image of the call; several adapters at once are not supported), got a list of "
            "{count}",
            count=len(image),
        )
    image_size(image, NAME)  # a PIL image or an image-shaped array
    if isinstance(image, Image.Image):
        return
    array = image[0] if image.ndim == 4 else image
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels != adapter.in_channels:
        raise ParameterError(
            "{adapter_image}: expected {wanted} channel(s) for the T2I-Adapter {name!r} (its "
            "in_channels), got an array of {channels}",
            wanted=adapter.in_channels,
            name=adapter.name,
            channels=channels,
        )


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ParameterError(f"{{{name}}}: expected a finite number, got {{value!r}}", value=value)
    return float(value)


class AdapterFeatures:
    """One call's adapter features, made once, and the U-Net calls they feed."""

    def __init__(
        self,
        settings: AdapterSettings,
        width: int,
        height: int,
        batch: int,
        guided: bool,
        num_inference_steps: int,
        run: RunAdapter,
        xp,
    ):
        adapter = settings.adapter
        # diffusers' _preprocess_adapter_image: resized (Lanczos) to the output size, in
        # [0, 1], not normalised: the control image's preparation, with the adapter's channels
        pixels = controlnet_cond(
            settings.image, width, height, adapter.in_channels, 1, doubled=False
        )
        outputs = run({"adapter_image": xp.asarray(pixels)})
        scale = xp.float32(settings.scale)
        self.features = {}
        for k in range(adapter.features):
            feature = outputs[adapter_feature(k)].astype(xp.float32) * scale
            feature = xp.concatenate([feature] * batch, axis=0)
            if guided:  # the same features for the unconditional half
                feature = xp.concatenate([feature, feature], axis=0)
            self.features[adapter_feature(k)] = feature
        # diffusers: i < int(num_inference_steps * adapter_conditioning_factor)
        self.calls = int(num_inference_steps * settings.factor)

    def at(self, step: int) -> dict[str, Any] | None:
        """The features for U-Net call ``step``, or None where the plain U-Net runs."""
        return self.features if step < self.calls else None
