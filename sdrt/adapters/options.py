"""The command line's adapter options: ``--lora FILE[:SCALE]`` and ``--embedding FILE[:TOKEN]``.

The suffix after the last ``:`` is the scale (a number) or the token, unless the whole text
names an existing file (a path with a colon in it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sdrt.errors import InputError


@dataclass(frozen=True)
class LoraOption:
    path: Path
    scale: float = 1.0


@dataclass(frozen=True)
class EmbeddingOption:
    path: Path
    token: str | None = None  # None: the file's own


def _split(text: str) -> tuple[str, str | None]:
    if Path(text).is_file() or ":" not in text:
        return text, None
    path, _, suffix = text.rpartition(":")
    return path, suffix


def _existing(path: str, option: str, text: str) -> Path:
    if not path or not Path(path).is_file():
        raise InputError(f"{option}: no such file {path!r} (from {text!r})")
    return Path(path)


def parse_lora_option(text: str, option: str = "--lora") -> LoraOption:
    """``"style.safetensors:0.8"`` -> LoraOption(Path("style.safetensors"), 0.8)."""
    path, suffix = _split(text)
    scale = 1.0
    if suffix is not None:
        try:
            scale = float(suffix)
        except ValueError:
            raise InputError(
                f"{option}: expected FILE[:SCALE] with SCALE a number, got {text!r}"
            ) from None
        if not math.isfinite(scale):
            raise InputError(f"{option}: expected a finite SCALE, got {suffix!r}")
    return LoraOption(_existing(path, option, text), scale)


def parse_embedding_option(text: str, option: str = "--embedding") -> EmbeddingOption:
    """``"cat.pt:<cat>"`` -> EmbeddingOption(Path("cat.pt"), "<cat>")."""
    path, token = _split(text)
    if token is not None and not token.strip():
        raise InputError(f"{option}: expected FILE[:TOKEN] with a non-empty TOKEN, got {text!r}")
    return EmbeddingOption(_existing(path, option, text), token)
