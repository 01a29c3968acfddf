"""Control images for ControlNet, prepared as diffusers' ControlNet pipelines prepare them.

diffusers' ``StableDiffusionControlNetPipeline.prepare_image`` runs the image through
``VaeImageProcessor(vae_scale_factor, do_convert_rgb=True, do_normalize=False)`` and then
repeats it for the batch; ``prepare_control_image`` does the same in numpy:

- a PIL image is resized to (width, height) with Lanczos (the processor's default
  resample, Pillow's own ``resize``), then converted to RGB, then scaled to [0, 1];
- a numpy array is NHWC as diffusers takes numpy arrays: (H, W, C) or (N, H, W, C), float
  in [0, 1] or uint8 (scaled to [0, 1], as a PIL image's pixels are), resized with
  nearest neighbour as ``torch.nn.functional.interpolate``'s default picks pixels;
- a list of either stacks into a batch;
- the result is float32 (N, 3, H, W) in [0, 1], not normalised to [-1, 1].

Where diffusers would pass a bad image on to the ControlNet (a grayscale array, a uint8
array as 0..255 floats, an NCHW array read as NHWC), this module says what was wrong
instead: ``ParameterError`` naming ``{control_image}``, which the CLI spells ``--control``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sdrt.errors import ParameterError

CONTROL_CHANNELS = 3  # ControlNetModel's conditioning_channels: RGB control images
# diffusers' VaeImageProcessor default (resample="lanczos", reducing_gap=None)
RESAMPLE = Image.Resampling.LANCZOS


def prepare_control_image(
    image: Any,
    width: int,
    height: int,
    batch_size: int,
    num_images_per_prompt: int,
    *,
    do_classifier_free_guidance: bool = False,
    guess_mode: bool = False,
    vae_scale_factor: int = 8,
) -> np.ndarray:
    """The ControlNet's ``controlnet_cond``: float32 (rows, 3, H, W) in [0, 1].

    The arguments are diffusers' ``prepare_image``'s: ``batch_size`` is the number of
    images the call makes (prompts x ``num_images_per_prompt``). One control image is
    repeated for every image; several (one per prompt) each ``num_images_per_prompt``
    times. The rows are doubled (for the unconditional half of the batch) when
    ``do_classifier_free_guidance`` and not ``guess_mode``.
    """
    if not (
        num_images_per_prompt >= 1 and batch_size >= 1 and batch_size % num_images_per_prompt == 0
    ):
        raise ParameterError(
            "batch_size: expected a multiple >= 1 of {num_images_per_prompt} ({per_prompt}), "
            "got {batch_size_value}",
            per_prompt=num_images_per_prompt,
            batch_size_value=batch_size,
        )
    width, height = (x - x % vae_scale_factor for x in (width, height))
    if width <= 0 or height <= 0:
        raise ParameterError(
            "{control_image}: expected an output size of at least {scale} pixels a side, "
            "got {width}x{height}",
            scale=vae_scale_factor,
            width=width,
            height=height,
        )
    pixels = control_pixels(image, width, height)
    count = pixels.shape[0]
    prompts = batch_size // num_images_per_prompt
    if count == 1:
        repeat_by = batch_size
    elif count == prompts:
        repeat_by = num_images_per_prompt
    else:
        raise ParameterError(
            "{control_image}: expected 1 image, or one per prompt ({prompts}), got {count}",
            prompts=prompts,
            count=count,
        )
    pixels = np.repeat(pixels, repeat_by, axis=0)
    if do_classifier_free_guidance and not guess_mode:
        pixels = np.concatenate([pixels, pixels])
    return np.ascontiguousarray(pixels, dtype=np.float32)


def control_pixels(image: Any, width: int, height: int) -> np.ndarray:
    """float32 (N, 3, height, width) in [0, 1] from a PIL image, an array or a list of
    either (VaeImageProcessor.preprocess without the batch repeat)."""
    images = image if isinstance(image, (list, tuple)) else [image]
    if not images:
        raise ParameterError("{control_image}: expected at least one image, got an empty list")
    kinds = {type(item) for item in images}
    if all(isinstance(item, Image.Image) for item in images):
        # Resize first, then RGB, as the processor does (the order shows at the edges of an
        # RGBA or palette image).
        rgb = [item.resize((width, height), resample=RESAMPLE).convert("RGB") for item in images]
        batch = np.stack([np.asarray(item, dtype=np.float32) / 255.0 for item in rgb])
    elif all(isinstance(item, np.ndarray) for item in images):
        batch = _resize_nearest(_stack_arrays(images), width, height)
    else:
        names = sorted(kind.__name__ for kind in kinds)
        raise ParameterError(
            "{control_image}: expected PIL images or numpy arrays, all of one kind, got {names}",
            names=", ".join(names),
        )
    return batch.transpose(0, 3, 1, 2)


def _stack_arrays(arrays: list[np.ndarray]) -> np.ndarray:
    """(N, H, W, 3) float32 in [0, 1] from HWC or NHWC arrays (diffusers: 3-D arrays are
    stacked, 4-D ones concatenated)."""
    ranks = {array.ndim for array in arrays}
    if not ranks <= {3, 4} or len(ranks) > 1:
        hint = ""
        if 2 in ranks:
            hint = " (for a grayscale (H, W) array use np.stack([a] * 3, axis=-1))"
        raise ParameterError(
            "{control_image}: expected arrays of shape (H, W, 3) or (N, H, W, 3), all of one "
            "rank, got {shapes}{hint}",
            shapes=", ".join(str(array.shape) for array in arrays),
            hint=hint,
        )
    for array in arrays:
        _check_channels(array)
    shapes = {array.shape[-3:] for array in arrays}
    if len(shapes) > 1:
        raise ParameterError(
            "{control_image}: expected arrays of one size, got {shapes}",
            shapes=", ".join(str(shape) for shape in sorted(shapes)),
        )
    batch = np.concatenate(arrays) if ranks == {4} else np.stack(arrays)
    return _unit_range(batch)


def _check_channels(array: np.ndarray) -> None:
    channels = array.shape[-1]
    if channels == CONTROL_CHANNELS:
        return
    hint = ""
    if array.ndim == 4 and array.shape[1] == CONTROL_CHANNELS:
        hint = " (numpy arrays are NHWC, as in diffusers: for NCHW use a.transpose(0, 2, 3, 1))"
    elif array.ndim == 3 and array.shape[0] == CONTROL_CHANNELS:
        hint = " (numpy arrays are HWC, as in diffusers: for CHW use a.transpose(1, 2, 0))"
    raise ParameterError(
        "{control_image}: expected {expected} channels (RGB) in the last axis, got shape "
        "{shape}{hint}",
        expected=CONTROL_CHANNELS,
        shape=array.shape,
        hint=hint,
    )


def _unit_range(batch: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: uint8 divided by 255; floats checked to be in [0, 1]."""
    if batch.dtype == np.uint8:
        return batch.astype(np.float32) / 255.0
    if not np.issubdtype(batch.dtype, np.floating):
        raise ParameterError(
            "{control_image}: expected uint8 pixels, or floats in [0, 1], got dtype {dtype}",
            dtype=batch.dtype,
        )
    batch = batch.astype(np.float32)
    if batch.size and not np.isfinite(batch).all():
        raise ParameterError("{control_image}: expected finite pixels, got NaN or Inf")
    if batch.size and (batch.min() < 0.0 or batch.max() > 1.0):
        raise ParameterError(
            "{control_image}: expected float pixels in [0, 1], got values in [{low}, {high}]",
            low=f"{float(batch.min()):.3g}",
            high=f"{float(batch.max()):.3g}",
        )
    return batch


def _resize_nearest(batch: np.ndarray, width: int, height: int) -> np.ndarray:
    """NHWC to (height, width) picking pixels as torch's nearest interpolation does."""
    if min(batch.shape[1:3]) <= 0:
        raise ParameterError(
            "{control_image}: expected an image of at least 1x1 pixels, got shape {shape}",
            shape=batch.shape,
        )
    rows = _nearest_sources(batch.shape[1], height)
    cols = _nearest_sources(batch.shape[2], width)
    return batch[:, rows][:, :, cols]


def _nearest_sources(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index, as ATen's nearest_idx: the same size and 2x are
    exact; otherwise floor(i * in/out) in float32, clamped to the last pixel."""
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    sources = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(sources, in_size - 1)
