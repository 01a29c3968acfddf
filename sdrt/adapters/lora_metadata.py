"""peft's adapter settings in a LoRA file's metadata, applied as diffusers applies them.

peft-trained files, and diffusers' ``save_lora_weights(..., unet_lora_adapter_metadata=
LoraConfig.to_dict())``, store the LoraConfig in the safetensors header under
``lora_adapter_metadata``: one JSON object whose keys are prefixed by the component
(``unet.r``, ``unet.lora_alpha``, ``text_encoder.alpha_pattern``, ...). Where a component
has such keys, diffusers builds its LoraConfig from them (not from the tensors), so each
module's scale is peft's: ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
``use_rslora``), where ``rank_pattern`` / ``alpha_pattern`` give a module its own r or
alpha (peft's ``get_pattern_key``: the first pattern that matches the end of the module's
dotted name, as a regex).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.errors import InputError

METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
# peft's LoraConfig defaults, for keys the metadata leaves out.
PEFT_DEFAULT_R = 8
PEFT_DEFAULT_ALPHA = 8


@dataclass(frozen=True)
class AdapterConfig:
    """The part of one component's LoraConfig that sets its modules' scales."""

    r: int
    lora_alpha: float
    rank_pattern: Mapping[str, int]
    alpha_pattern: Mapping[str, float]
    use_rslora: bool

    def rank_and_scale(self, module: str) -> tuple[int, float]:
        """(r, scale) peft gives ``module`` (its dotted name within the component)."""
        r = self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r)
        alpha = self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.lora_alpha)
        return r, alpha / (math.sqrt(r) if self.use_rslora else r)


def adapter_configs(
    path: Path, metadata: Mapping[str, str], components: tuple[str, ...]
) -> dict[str, AdapterConfig]:
    """component -> its AdapterConfig, for the components the file's metadata configures
    (none for a file without ``lora_adapter_metadata``)."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: its {METADATA_KEY} is not JSON ({e})") from None
    if not isinstance(packed, dict):
        raise InputError(
            f"{path}: expected {METADATA_KEY} to be a JSON object, got {type(packed).__name__}"
        )
    configs = {}
    for component in components:
        prefix = f"{component}."
        kwargs = {k[len(prefix) :]: v for k, v in packed.items() if k.startswith(prefix)}
        if kwargs:
            configs[component] = _config(path, component, kwargs)
    return configs


def _config(path: Path, component: str, kwargs: dict[str, Any]) -> AdapterConfig:
    where = f"{path}: {METADATA_KEY} of {component}"
    if kwargs.get("use_dora"):
        raise InputError(f"{where}: use_dora is set; DoRA files are not supported")
    r = kwargs.get("r", PEFT_DEFAULT_R)
    alpha = kwargs.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    rank_pattern = kwargs.get("rank_pattern") or {}
    alpha_pattern = kwargs.get("alpha_pattern") or {}
    if not _is_rank(r) or not all(_is_rank(v) for v in _values(rank_pattern)):
        raise InputError(
            f"{where}: expected r and rank_pattern values to be positive integers, got "
            f"r={r!r}, rank_pattern={rank_pattern!r}"
        )
    if not _is_number(alpha) or not all(_is_number(v) for v in _values(alpha_pattern)):
        raise InputError(
            f"{where}: expected lora_alpha and alpha_pattern values to be numbers, got "
            f"lora_alpha={alpha!r}, alpha_pattern={alpha_pattern!r}"
        )
    for pattern in [*rank_pattern, *alpha_pattern]:
        try:
            re.compile(pattern)
        except re.error as e:
            raise InputError(f"{where}: the pattern {pattern!r} is not a regex ({e})") from None
    return AdapterConfig(
        r, float(alpha), rank_pattern, alpha_pattern, bool(kwargs.get("use_rslora"))
    )


def _pattern_key(patterns: Mapping[str, Any], module: str) -> str:
    """peft's get_pattern_key: the first pattern matching the end of ``module``'s name."""
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", module):
            return pattern
    return module


def _values(pattern: Any) -> list:
    return list(pattern.values()) if isinstance(pattern, dict) else [None]


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
