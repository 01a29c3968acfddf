"""Images in and out of the pipeline, as diffusers' VaeImageProcessor prepares them.

Inputs are PIL images or numpy arrays (HWC or 1HWC; uint8, or float in [0, 1]). Images
become float32 NCHW in [-1, 1]; masks become float32 N1HW binarized at 0.5 (white =
repaint). PIL inputs of another size are resized with Lanczos (diffusers' default
resample); arrays must already have the size asked for. Outputs are float32 NHWC in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sdrt.errors import InputError

MASK_THRESHOLD = 0.5


def image_size(value: Any, name: str) -> tuple[int, int]:
    """(width, height) of a PIL image or an HWC / 1HWC / HW array; InputError for anything else."""
    if isinstance(value, Image.Image):
        return value.size
    if isinstance(value, np.ndarray):
        shape = value.shape
        if value.ndim == 4 and shape[0] == 1:
            shape = shape[1:]
        if value.ndim in (2, 3, 4) and len(shape) in (2, 3) and min(shape[:2]) > 0:
            return shape[1], shape[0]
        raise InputError(
            f"{name}: expected an array of shape (H, W), (H, W, C) or (1, H, W, C), got {value.shape}"
        )
    raise InputError(f"{name}: expected a PIL image or a numpy array, got {type(value).__name__}")


def _array_in_unit_range(value: np.ndarray, name: str) -> np.ndarray:
    """A float32 HWC array in [0, 1] from uint8 or float input."""
    array = value[0] if value.ndim == 4 else value
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{name}: expected uint8 or float pixels, got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"{name}: the array contains NaN or Inf")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise InputError(
            f"{name}: expected float pixels in [0, 1], got values in [{low:.3g}, {high:.3g}]"
        )
    return array


def _pixels(value: Any, name: str, width: int, height: int, mode: str) -> np.ndarray:
    """HWC float32 in [0, 1] at (width, height); mode "RGB" (3 channels) or "L" (1)."""
    if isinstance(value, Image.Image):
        if value.size != (width, height):
            value = value.resize((width, height), resample=Image.Resampling.LANCZOS)
        array = np.asarray(value.convert(mode), dtype=np.float32) / 255.0
        return array[:, :, None] if array.ndim == 2 else array
    size = image_size(value, name)
    if size != (width, height):
        raise InputError(
            f"{name}: expected an array of {width}x{height} pixels, got {size[0]}x{size[1]} "
            "(resize it, or pass a PIL image to have it resized)"
        )
    array = _array_in_unit_range(value, name)
    channels = array.shape[2]
    if mode == "L":
        if channels == 1:
            return array
        if channels in (3, 4):  # ITU-R 601-2 luma, as PIL's convert("L")
            return array[:, :, :3] @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
    elif channels == 3:
        return array
    elif channels == 4:
        return array[:, :, :3]
    elif channels == 1:
        return np.repeat(array, 3, axis=2)
    raise InputError(f"{name}: expected 1, 3 or 4 channels, got {channels}")


def preprocess_image(value: Any, width: int, height: int, name: str = "image") -> np.ndarray:
    """(1, 3, H, W) float32 in [-1, 1]."""
    pixels = _pixels(value, name, width, height, "RGB")
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None] * 2.0 - 1.0, dtype=np.float32)


def preprocess_mask(value: Any, width: int, height: int, name: str = "mask_image") -> np.ndarray:
    """(1, 1, H, W) float32 of 0 (keep) and 1 (repaint)."""
    pixels = _pixels(value, name, width, height, "L")
    binary = (pixels >= MASK_THRESHOLD).astype(np.float32)
    return np.ascontiguousarray(binary.transpose(2, 0, 1)[None])


def mask_to_latent_size(mask: np.ndarray, scale_factor: int) -> np.ndarray:
    """Nearest downsampling, as torch.nn.functional.interpolate's default: pixel 8*i."""
    return np.ascontiguousarray(mask[:, :, ::scale_factor, ::scale_factor])


def postprocess(decoded, xp=np):
    """VAE output (N, 3, H, W) in about [-1, 1] -> (N, H, W, 3) float32 in [0, 1]."""
    images = xp.clip(decoded.astype(xp.float32) / 2 + 0.5, 0.0, 1.0)
    return xp.ascontiguousarray(images.transpose(0, 2, 3, 1))


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """NHWC float in [0, 1] -> PIL images, rounded as diffusers' numpy_to_pil."""
    pixels = (images * 255).round().astype(np.uint8)
    return [Image.fromarray(image) for image in pixels]


def outpaint_canvas(
    image: Image.Image,
    *,
    left: int = 0,
    top: int = 0,
    right: int = 0,
    bottom: int = 0,
    overlap: int = 8,
    multiple: int = 8,
) -> tuple[Image.Image, Image.Image]:
    """Extend ``image`` by margins in pixels for outpainting; returns (canvas, mask).

    Outpainting is inpainting on a larger canvas: pass the two on as ``image=`` and
    ``mask_image=`` (``sdrt generate --image IN --outpaint LEFT,TOP,RIGHT,BOTTOM`` does)::

        canvas, mask = outpaint_canvas(Image.open("fox.png"), right=128)
        out = pipe("a fox in a wide snowy field", image=canvas, mask_image=mask, strength=1.0)

    The new area is filled by repeating the edge pixels (it gives the U-Net the colours
    to continue); the mask is white (repaint) over the new area and ``overlap`` pixels
    into the original on each extended side, so the seam is repainted too, and black
    elsewhere. The canvas grows on the right and bottom to a multiple of ``multiple``
    (the folder's size multiple, ``manifest.build.size_multiple``). A 9-channel
    inpainting U-Net continues the picture best; a text-to-image U-Net repaints the new
    area at the given strength and keeps the rest. Margins are integers >= 0; InputError
    for anything else.
    """
    if not isinstance(image, Image.Image):
        raise InputError(f"image: expected a PIL image, got {type(image).__name__}")
    margins = {"left": left, "top": top, "right": right, "bottom": bottom, "overlap": overlap}
    for name, value in margins.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"{name}: expected an integer >= 0, got {value!r}")
    if not isinstance(multiple, int) or multiple < 1:
        raise InputError(f"multiple: expected an integer >= 1, got {multiple!r}")
    width, height = image.size
    new_width = -(-(left + width + right) // multiple) * multiple
    new_height = -(-(top + height + bottom) // multiple) * multiple
    right, bottom = new_width - width - left, new_height - height - top
    pixels = np.asarray(image.convert("RGB"))
    canvas = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.full((new_height, new_width), 255, dtype=np.uint8)
    keep = (
        slice(top + (overlap if top else 0), top + height - (overlap if bottom else 0)),
        slice(left + (overlap if left else 0), left + width - (overlap if right else 0)),
    )
    mask[keep] = 0
    return Image.fromarray(canvas), Image.fromarray(mask, mode="L")
