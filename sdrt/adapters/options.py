"""The command line's adapter options: ``--lora FILE[:SCALE]`` and ``--embedding FILE[:TOKEN]``.

One parser per option for every command that takes it (build fuses the LoRA, generate
applies it at run time), so a value is accepted or refused the same way everywhere, before
any model loads. The suffix after the last ``:`` is the scale (a number) or the token,
unless the whole text names an existing path (a path with a colon in it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sdrt.adapters.lora_files import lora_file_path
from sdrt.errors import InputError


@dataclass(frozen=True)
class LoraOption:
    path: Path  # the .safetensors file (diffusers' file name resolved in a folder)
    scale: float = 1.0


@dataclass(frozen=True)
class EmbeddingOption:
    path: Path
    token: str | None = None  # None: the file's own


def _split(text: str) -> tuple[str, str | None]:
    if Path(text).exists() or ":" not in text:
        return text, None
    path, _, suffix = text.rpartition(":")
    return path, suffix


def _existing(path: str, option: str, text: str) -> Path:
    if not path or not Path(path).is_file():
        raise InputError(f"{option}: no such file {path!r} (from {text!r})")
    return Path(path)


def parse_lora_option(text: str, option: str = "--lora") -> LoraOption:
    """``"style.safetensors:0.8"`` -> LoraOption(Path("style.safetensors"), 0.8); a folder
    stands for diffusers' pytorch_lora_weights.safetensors in it."""
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
            raise InputError(f"{option}: expected a finite SCALE, got {suffix!r} (from {text!r})")
    if not path:
        raise InputError(f"{option}: expected FILE[:SCALE], got {text!r}")
    try:
        resolved = lora_file_path(path, None)
    except InputError as e:
        raise InputError(f"{option}: {e}") from None
    return LoraOption(resolved, scale)


def parse_embedding_option(text: str, option: str = "--embedding") -> EmbeddingOption:
    """``"cat.pt:<cat>"`` -> EmbeddingOption(Path("cat.pt"), "<cat>")."""
    path, token = _split(text)
    if token is not None and not token.strip():
        raise InputError(f"{option}: expected FILE[:TOKEN] with a non-empty TOKEN, got {text!r}")
    return EmbeddingOption(_existing(path, option, text), token)


def apply_loras(pipe, options: tuple[LoraOption, ...]) -> list[str]:
    """Load each file into ``pipe`` as an adapter named after it and activate them all with
    their scales (run-time LoRA: sdrt generate --lora)."""
    names: list[str] = []
    for option in options:
        name = option.path.stem
        while name in names:
            name += "_"
        names.append(pipe.load_lora_weights(option.path, adapter_name=name))
    if names:
        pipe.set_adapters(names, [o.scale for o in options])
    return names
