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
