"""``--lora FILE[:SCALE]`` (repeatable): parsed and checked before the model loads, then
loaded into the Pipeline as one adapter per file, active together with their scales."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdrt.adapters.lora_files import lora_file_path, read_lora_file
from sdrt.errors import InputError

DEFAULT_SCALE = 1.0


@dataclass(frozen=True)
class LoraChoice:
    path: Path
    scale: float = DEFAULT_SCALE


def parse_lora_option(text: str) -> LoraChoice:
    """``FILE`` or ``FILE:SCALE``; the file must exist and parse as a LoRA file."""
    path, scale = text, DEFAULT_SCALE
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            path, scale = head, float(tail)
        except ValueError:
            path = text  # a ':' that is part of the path
    if not path:
        raise InputError(f"--lora: expected FILE or FILE:SCALE, got {text!r}")
    resolved = lora_file_path(path, None)
    read_lora_file(resolved)  # a corrupt or unknown file fails before the model loads
    return LoraChoice(resolved, scale)


def apply_loras(pipe, choices: tuple[LoraChoice, ...]) -> list[str]:
    """Load each file as an adapter named after it and activate them all with their scales."""
    names = []
    for choice in choices:
        name = choice.path.stem
        while name in names:
            name += "_"
        names.append(pipe.load_lora_weights(choice.path, adapter_name=name))
    if names:
        pipe.set_adapters(names, [c.scale for c in choices])
    return names
