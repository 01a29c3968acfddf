"""``sdrt build --controlnet NAME=PATH[,...]``: the ControlNets a build adds (no torch: the
CLI and BuildConfig check them before anything heavy loads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdrt.export.source import local_folder_or_hub_id

from sdrt.errors import InputError
from sdrt.manifest import CONTROLNET_NAME

EXPECTED = "a diffusers ControlNetModel folder or a Hub id"


@dataclass(frozen=True)
class ControlNetOption:
    """One ControlNet to build: the name calls pick it by, and where its weights are."""

    name: str
    path_or_id: str

    def __post_init__(self):
        if CONTROLNET_NAME.fullmatch(self.name) is None:
            raise InputError(
                f"--controlnet name: expected letters, digits, '_' or '-' (starting with a "
                f"letter or digit), got {self.name!r}; name it with NAME=PATH"
            )
        path = Path(self.path_or_id).expanduser()
        if path.is_file():
            # diffusers' ControlNetModel.from_single_file needs the original repo's config;
            # the build reads folders (or Hub ids) only.
            raise InputError(
                f"--controlnet {self.path_or_id!r} is a single-file checkpoint; expected "
                f"{EXPECTED} (convert it with diffusers' ControlNetModel.from_single_file(...)"
                ".save_pretrained(FOLDER))"
            )
        local_folder_or_hub_id(self.path_or_id, "--controlnet", EXPECTED)


def parse_controlnet_options(text: str) -> tuple[ControlNetOption, ...]:
    """``NAME=PATH`` or ``PATH`` (named by its base name), comma-separated."""
    options = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise InputError(f"--controlnet: expected NAME=PATH or PATH items, got {text!r}")
        name, sep, path = part.partition("=")
        if not sep:
            name, path = Path(part.rstrip("/")).name, part
        options.append(ControlNetOption(name.strip(), path.strip()))
    return check_unique(options)


def check_unique(options) -> tuple[ControlNetOption, ...]:
    names = [o.name for o in options]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(
            f"--controlnet: expected each name once, got {repeated} more than once "
            "(name them with NAME=PATH)"
        )
    return tuple(options)
