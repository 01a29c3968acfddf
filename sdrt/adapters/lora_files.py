"""LoRA files -> low-rank factors per module, in the two key layouts people share.

diffusers / PEFT (what ``save_lora_weights`` writes)::

    unet.<module>.lora_A.weight   (rank, in)       text_encoder.<module>.lora_A.weight
    unet.<module>.lora_B.weight   (out, rank)      text_encoder_2.<module>...   (SDXL)
    unet.<module>.alpha           optional scalar

kohya / A1111 (sd-scripts)::

    lora_unet_<module with _ for .>.lora_down.weight / .lora_up.weight / .alpha
    lora_te_<module>...  (lora_te1_ / lora_te2_ for SDXL's two text encoders)

A module's delta is ``scale * up @ down`` with ``scale = alpha / rank`` where the file gives
an alpha, else 1 (PEFT's ``lora_alpha`` defaulting to the rank, as diffusers loads such
files; kohya likewise), unless the file's metadata holds peft's LoraConfig
(``lora_adapter_metadata``, lora_metadata.py): then its ``lora_alpha / r`` and patterns.
Conv LoRA factors are read as matrices: a 1x1 conv's (rank, in, 1, 1) as (rank, in), a kxk
conv's down (rank, in, kh, kw) as (rank, in * kh * kw), its kernel kept (``up @ down``
reshaped to (out, in, kh, kw) is then the conv's delta, as peft merges it).
kohya names are resolved against the model's own module names (``module_lookup``), since
``_`` cannot be split back into ``.`` without them; kohya's SDXL files name U-Net blocks in
the SGM layout (``input_blocks_4_1_…``), mapped first by lora_sgm_blocks.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdrt.adapters.lora_metadata import METADATA_KEY, AdapterConfig, adapter_configs
from sdrt.adapters.safetensors_file import read_safetensors
from sdrt.errors import InputError

PEFT_PREFIXES = {
    "unet.": "unet",
    "text_encoder.": "text_encoder",
    "text_encoder_2.": "text_encoder_2",
}
KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
# diffusers' training scripts save through convert_state_dict_to_diffusers, which writes
# the older lora.down/up (U-Net) and lora_linear_layer.down/up (text encoder) names.
PEFT_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight"
    r"|lora_linear_layer\.down\.weight|lora_linear_layer\.up\.weight|alpha)$"
)
KOHYA_KEY = re.compile(
    r"^(?P<module>lora_[^.]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$"
)
PARTS = {
    "lora_A.weight": "down",
    "lora_down.weight": "down",
    "lora_B.weight": "up",
    "lora_up.weight": "up",
    "lora.down.weight": "down",
    "lora.up.weight": "up",
    "lora_linear_layer.down.weight": "down",
    "lora_linear_layer.up.weight": "up",
    "alpha": "alpha",
}
DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file in a folder


@dataclass(frozen=True)
class LoraModule:
    """One module's factors: delta W (out x in) = scale * up @ down."""

    component: str  # "unet", "text_encoder", "text_encoder_2"
    key: str  # the module as the file names it (dotted for PEFT, underscored for kohya)
    down: np.ndarray  # (rank, in), float32; a kxk conv's (rank, in * kh * kw)
    up: np.ndarray  # (out, rank), float32
    scale: float  # alpha / rank (the metadata's where it has peft's config), or 1
    file_key: str | None = None  # the file's own name where ``key`` was mapped (SGM blocks)
    kernel: tuple[int, int] = (1, 1)  # a conv LoRA's down kernel (kxk: a ResNet's 3x3 conv)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def name_in_file(self) -> str:
        return self.file_key or self.key


@dataclass(frozen=True)
class LoraFile:
    path: Path
    layout: str  # "peft" or "kohya"
    modules: tuple[LoraModule, ...]


def lora_file_path(path_or_folder: str | os.PathLike, weight_name: str | None) -> Path:
    """The file ``load_lora_weights`` reads: a file, or ``weight_name`` (default diffusers'
    pytorch_lora_weights.safetensors) in a folder."""
    path = Path(path_or_folder)
    if path.is_dir():
        path = path / (weight_name or DEFAULT_WEIGHT_NAME)
    elif weight_name is not None:
        raise InputError(f"{path}: weight_name={weight_name!r} needs a folder, got a file")
    if not path.is_file():
        raise InputError(f"LoRA file {str(path)!r} does not exist")
    if path.suffix != ".safetensors":
        raise InputError(
            f"{path}: expected a .safetensors LoRA file, got {path.suffix or 'no suffix'!r} "
            "(pickled .bin/.pt files are not read: they can run code)"
        )
    return path


def read_lora_file(path: Path) -> LoraFile:
    """Parse a LoRA .safetensors file; InputError naming the file for anything it cannot use."""
    tensors, metadata = read_safetensors(path)
    if not tensors:
        raise InputError(f"{path}: the file holds no tensors")
    layout = _layout(path, tensors)
    configs = adapter_configs(path, metadata, tuple(PEFT_PREFIXES.values()))
    if configs and layout == "kohya":
        raise InputError(
            f"{path}: kohya keys with peft's {METADATA_KEY}; expected one or the other "
            "(diffusers refuses both alphas and adapter metadata)"
        )
    key_pattern, prefixes = (
        (PEFT_KEY, PEFT_PREFIXES) if layout == "peft" else (KOHYA_KEY, KOHYA_PREFIXES)
    )
    parts: dict[str, dict[str, np.ndarray]] = {}
    unknown = []
    for name, value in tensors.items():
        match = key_pattern.match(name)
        if match is None:
            unknown.append(name)
            continue
        parts.setdefault(match["module"], {})[PARTS[match["part"]]] = value
    if unknown:
        raise InputError(
            f"{path}: keys {_few(unknown)} are not LoRA factors of the {layout} layout "
            f"(expected {_expected(layout)}); LoHa/LoKr/DoRA files are not supported"
        )
    modules = [_module(path, key, found, prefixes, configs) for key, found in sorted(parts.items())]
    return LoraFile(path, layout, tuple(modules))


def _layout(path: Path, tensors: dict[str, np.ndarray]) -> str:
    names = list(tensors)
    if all(n.startswith(tuple(PEFT_PREFIXES)) for n in names):
        return "peft"
    if all(n.startswith("lora_") for n in names):
        return "kohya"
    raise InputError(
        f"{path}: unknown LoRA format: expected diffusers/PEFT keys (unet.<module>.lora_A.weight, "
        f"text_encoder.<module>...) or kohya keys (lora_unet_<module>.lora_down.weight, "
        f"lora_te_...), got keys like {_few(names)}"
    )


def _module(
    path: Path,
    key: str,
    found: dict[str, np.ndarray],
    prefixes,
    configs: dict[str, AdapterConfig],
) -> LoraModule:
    missing = [p for p in ("down", "up") if p not in found]
    if missing:
        raise InputError(f"{path}: module {key!r} has no {' or '.join(missing)} factor")
    prefix = next((p for p in sorted(prefixes, key=len, reverse=True) if key.startswith(p)), None)
    if prefix is None:
        raise InputError(
            f"{path}: module {key!r} names no known component (expected a prefix of {sorted(prefixes)})"
        )
    down = np.asarray(found["down"], dtype=np.float32)
    up = np.asarray(found["up"], dtype=np.float32)
    if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
        raise InputError(
            f"{path}: module {key!r} has factors of shapes {list(down.shape)} (down) and "
            f"{list(up.shape)} (up); expected (rank, in) and (out, rank)"
        )
    if down.ndim == 4 and up.shape[2:] != (1, 1):
        raise InputError(
            f"{path}: module {key!r} has an up factor with a {up.shape[2]}x{up.shape[3]} "
            "kernel; expected 1x1 (peft's and kohya's conv LoRA: a kxk down, a 1x1 up)"
        )
    rank = down.shape[0]
    component, module = prefixes[prefix], key[len(prefix) :]
    alpha = found.get("alpha")
    config = configs.get(component)
    if config is not None:
        if alpha is not None:
            raise InputError(
                f"{path}: module {key!r} has an alpha and {component} has {METADATA_KEY}; "
                "expected one or the other (diffusers refuses both)"
            )
        r, scale = config.rank_and_scale(module)
        if r != rank:
            raise InputError(
                f"{path}: {METADATA_KEY} gives module {key!r} rank {r}; its factors have rank "
                f"{rank}"
            )
    elif alpha is None:
        scale = 1.0
    else:
        scale = float(np.asarray(alpha, dtype=np.float64).reshape(-1)[0]) / rank
    return LoraModule(
        component=component,
        key=module,
        down=down.reshape(rank, -1),
        up=up.reshape(up.shape[0], rank),
        scale=scale,
        kernel=tuple(down.shape[2:]) if down.ndim == 4 else (1, 1),
    )


def _expected(layout: str) -> str:
    if layout == "peft":
        return "<module>.lora_A.weight, <module>.lora_B.weight, <module>.alpha"
    return "<module>.lora_down.weight, <module>.lora_up.weight, <module>.alpha"


def _few(names, count: int = 3) -> str:
    names = sorted(names)
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(repr(n) for n in names[:count]) + more
