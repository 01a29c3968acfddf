"""Image sizes as the command line spells them: ``N`` (square) or ``WxH`` pixels.

One parser for every command (generate, bench, engines), so ``--size 512`` and
``--size 512x768`` mean the same everywhere: width x height in pixels, as diffusers'
``width`` and ``height``. Whether a size suits a model folder (its size multiple and
built range) is checked where the folder is known (sdrt.request).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sdrt.errors import InputError


@dataclass(frozen=True)
class Size:
    width: int
    height: int

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"


_SIZE = re.compile(r"\s*([0-9]+)\s*(?:[xX]\s*([0-9]+)\s*)?")


def parse_size(text: str, option: str = "--size") -> Size:
    """``"512"`` -> 512x512, ``"512x768"`` -> width 512, height 768 (``X`` and spaces allowed)."""
    if not isinstance(text, str):
        raise InputError(f"{option}: expected N or WxH pixels as text, got {type(text).__name__}")
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InputError(f"{option}: expected N or WxH pixels (e.g. 512 or 512x768), got {text!r}")
    width = int(match.group(1))
    height = int(match.group(2)) if match.group(2) is not None else width
    if width < 1 or height < 1:
        raise InputError(f"{option}: expected sizes of at least 1 pixel, got {text!r}")
    return Size(width=width, height=height)


def add_size_arguments(add, default_help: str) -> None:
    """``--size N|WxH`` and diffusers' ``--width`` / ``--height`` (``add``: a parser's
    add_argument), read back together by ``size_from_options``."""
    add(
        "--size",
        default=None,
        metavar="N|WxH",
        help=f"image size in pixels, N (square) or WxH such as 512x768 (default: {default_help})",
    )
    for side in ("width", "height"):
        add(
            f"--{side}",
            type=int,
            metavar="PIXELS",
            default=None,
            help=f"image {side} in pixels, diffusers' {side}= (default: --size's {side})",
        )


def size_from_options(size: str | None, width: int | None, height: int | None):
    """(width, height) from ``--size`` and ``--width`` / ``--height``, None where neither
    gives one (the model folder's default applies); InputError where they disagree."""
    if size is None:
        return width, height
    parsed = parse_size(size)
    for option, given, from_size in (
        ("--width", width, parsed.width),
        ("--height", height, parsed.height),
    ):
        if given is not None and given != from_size:
            raise InputError(
                f"{option}: expected the same {option[2:]} as --size {size} ({from_size}) or "
                f"no {option}, got {given}"
            )
    return parsed.width, parsed.height
