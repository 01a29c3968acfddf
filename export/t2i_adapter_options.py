"""``sdrt build --t2i-adapter [NAME=]PATH``: the T2I-Adapter a build adds (no torch: the CLI
and BuildConfig check it before anything heavy loads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdrt.export.source import local_folder_or_hub_id

from sdrt.errors import InputError
from sdrt.manifest import CONTROLNET_NAME

OPTION = "--t2i-adapter"
EXPECTED = "a diffusers T2IAdapter folder or a Hub id"


@dataclass(frozen=True)
class T2IAdapterOption:
    """``--t2i-adapter [NAME=]PATH``: checked without torch, before anything loads."""

    name: str
    path_or_id: str

    def __post_init__(self):
        if Path(self.path_or_id).expanduser().is_file():
            raise InputError(
                f"{OPTION} {self.path_or_id!r} is a single file; expected {EXPECTED} (save one "
                "with diffusers' T2IAdapter.save_pretrained(FOLDER))"
            )
        if CONTROLNET_NAME.fullmatch(self.name) is None:
            raise InputError(
                f"{OPTION} name: expected letters, digits, '_' or '-' (starting with a letter "
                f"or digit), got {self.name!r}; name it with NAME=PATH"
            )
        local_folder_or_hub_id(self.path_or_id, OPTION, EXPECTED)

    @classmethod
    def parse(cls, text: str) -> T2IAdapterOption:
        """``NAME=PATH``, or ``PATH`` named by its base name."""
        name, sep, path = text.strip().partition("=")
        if not sep:
            name, path = Path(text.strip().rstrip("/")).name, text.strip()
        return cls(name.strip(), path.strip())
