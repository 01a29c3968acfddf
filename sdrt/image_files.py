"""Image files out: the format by suffix, a check that the place is writable, numbered
names for several images, and atomic writes that carry the generation parameters.

Formats: ``.png`` (parameters in a ``parameters`` tEXt/iTXt chunk), ``.jpg`` / ``.jpeg``
and ``.webp`` (parameters as the EXIF UserComment, "UNICODE" + UTF-16BE, as A1111 and
piexif write it). ``read_parameters`` reads either back.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import ExifTags, Image, PngImagePlugin

from sdrt.errors import InputError
from sdrt.files import atomic_write

# suffix -> Pillow format name
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
DEFAULT_QUALITY = 90  # JPEG and WebP
_UNICODE = b"UNICODE\x00"  # EXIF UserComment character code (8 bytes), then UTF-16BE
_ASCII = b"ASCII\x00\x00\x00"


def image_format(path: Path, option: str = "-o") -> str:
    """Pillow's format name for ``path``'s suffix; InputError naming the accepted ones."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(
            f"{option}: expected a file name ending in {', '.join(FORMATS)}, got {str(path)!r}"
        )
    return fmt


def check_writable(path: Path, option: str = "-o") -> None:
    """InputError unless a file can be created at ``path`` (its folder may not exist yet).

    Tries a temporary file in the nearest existing folder (what read-only folders,
    read-only file systems such as /proc and permissions all answer to), then removes it.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise InputError(f"{option}: expected a file name, got {str(path)!r}, which is a folder")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(
            f"{option}: expected a file name in a folder, got {str(path)!r}, "
            f"but {str(existing)!r} is a file"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".sdrt-write-check-", dir=existing)
    except OSError as e:
        raise InputError(
            f"{option}: expected a place where files can be written, got {str(path)!r} "
            f"(creating a file in {str(existing)!r} failed: {e.strerror or e})"
        ) from None
    os.close(fd)
    os.unlink(probe)


def numbered_paths(output: Path, count: int) -> list[Path]:
    """``out.png`` for one image; ``out-00.png``, ``out-01.png``, ... for several (at least
    two digits, more when ``count`` needs them, so the names sort in order)."""
    if count == 1:
        return [output]
    width = max(2, len(str(count - 1)))
    return [output.with_name(f"{output.stem}-{i:0{width}d}{output.suffix}") for i in range(count)]


def save_image(
    image: Image.Image,
    path: Path,
    *,
    parameters: str | None = None,
    quality: int = DEFAULT_QUALITY,
) -> None:
    """Write ``image`` atomically in the format of ``path``'s suffix, with ``parameters``."""
    fmt = image_format(path)
    options: dict = {}
    if fmt == "PNG":
        if parameters is not None:
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", parameters)  # tEXt, or iTXt for non-Latin-1 text
            options["pnginfo"] = info
    else:
        options["quality"] = quality
        if parameters is not None:
            exif = Image.Exif()
            comment = _UNICODE + parameters.encode("utf-16-be")
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
            options["exif"] = exif
    if fmt == "JPEG" and image.mode != "RGB":
        image = image.convert("RGB")
    try:
        atomic_write(path, lambda f: image.save(f, format=fmt, **options), binary=True)
    except OSError as e:
        raise InputError(f"-o: cannot write {str(path)!r}: {e.strerror or e}") from None


def read_parameters(path: Path) -> str | None:
    """The generation parameters an image file carries (PNG text or EXIF UserComment)."""
    with Image.open(path) as image:
        text = image.info.get("parameters")
        if isinstance(text, str):
            return text
        comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if isinstance(comment, str):
        return comment
    if not isinstance(comment, bytes):
        return None
    if comment.startswith(_UNICODE):
        return comment[len(_UNICODE) :].decode("utf-16-be", errors="replace")
    if comment.startswith(_ASCII):
        return comment[len(_ASCII) :].decode("ascii", errors="replace")
    return comment.decode("utf-8", errors="replace")
