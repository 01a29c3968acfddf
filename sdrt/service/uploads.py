"""Uploaded images (``/v1/images/edits``, multipart as OpenAI's): read, held to the
limits, decoded. A mask is white where to repaint (diffusers); a mask with transparency
follows OpenAI's convention instead: fully transparent pixels are the ones to repaint."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from sdrt.service.config import Limits
from sdrt.service.errors import bad_request, too_large


async def read_upload(form, name: str, limits: Limits, required: bool):
    """The PIL image uploaded as ``name`` (None if absent and not required)."""
    upload = form.get(name)
    if upload is None:
        if required:
            raise bad_request(f"{name}: required, got none", param=name)
        return None
    return await read_file(upload, name, limits)


async def read_file(upload, name: str, limits: Limits) -> Image.Image:
    """The PIL image of one uploaded part named ``name`` (a field may be repeated)."""
    if isinstance(upload, str) or not hasattr(upload, "read"):
        raise bad_request(f"{name}: expected a file upload, got a text field", param=name)
    data = await upload.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise too_large(
            f"{name}: expected an image of at most {limits.max_upload_bytes} bytes (this "
            "server's limit), got more",
            param=name,
        )
    return decode_image(data, name, limits)


def decode_image(data: bytes, name: str, limits: Limits) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_upload_pixels:
                raise too_large(
                    f"{name}: expected an image of at most {limits.max_upload_pixels} pixels "
                    f"(this server's limit), got {width}x{height}",
                    param=name,
                )
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_large(f"{name}: the image is too large to decode", param=name) from None
    except UnidentifiedImageError:  # its message names a BytesIO object and its address
        raise bad_request(
            f"{name}: expected a PNG, JPEG or WebP image, got data in no image format this "
            "server reads",
            param=name,
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise bad_request(
            f"{name}: expected a PNG, JPEG or WebP image, could not read it ({e})", param=name
        ) from None
    return image


def as_image(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def as_mask(mask: Image.Image) -> Image.Image:
    """L mask, white = repaint; from alpha (transparent = repaint) where it has any."""
    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha.point(lambda a: 255 if a == 0 else 0)
    return mask.convert("L")
