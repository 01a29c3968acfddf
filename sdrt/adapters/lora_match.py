"""A parsed LoRA file matched against a folder's adaptable weights: which graph input each
module changes, with its shape checked, or a clear error naming what did not match."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sdrt.adapters.lora_files import LoraFile, LoraModule
from sdrt.errors import InputError
from sdrt.manifest import AdaptableWeight

TEXT_MODEL = "text_model."
BLOCK_PRODUCTS = (
    2**20
)  # multiply-adds per block in add_delta  # transformers < 5 nests CLIP's modules under it; 5 does not


@dataclass(frozen=True)
class MatchedModule:
    """One LoRA module bound to the graph input it changes."""

    component: str
    weight: AdaptableWeight
    lora: LoraModule


def canonical(module: str) -> str:
    return module[len(TEXT_MODEL) :] if module.startswith(TEXT_MODEL) else module


def module_lookup(layout: str, weights: tuple[AdaptableWeight, ...]):
    """The file's module key -> AdaptableWeight, for one component's weights and a layout."""
    table = {}
    for weight in weights:
        name = canonical(weight.module)
        table[name.replace(".", "_") if layout == "kohya" else name] = weight
    return table


def match_lora(
    lora: LoraFile, adaptable: Mapping[str, tuple[AdaptableWeight, ...]]
) -> tuple[MatchedModule, ...]:
    """Bind every module of ``lora`` to an adaptable weight; InputError naming the file and
    the modules that match nothing, or whose shapes differ."""
    tables = {}
    matched, unmatched, mismatched = [], [], []
    for module in lora.modules:
        key = (module.component, lora.layout)
        if key not in tables:
            tables[key] = module_lookup(lora.layout, adaptable.get(module.component, ()))
        name = canonical(module.key)
        if lora.layout == "kohya" and name.startswith("text_model_"):
            name = name[len("text_model_") :]
        weight = tables[key].get(name)
        if weight is None:
            unmatched.append(f"{module.component}:{module.key}")
            continue
        expected = out_in(weight)
        got = (module.up.shape[0], module.down.shape[1])
        if expected != got:
            mismatched.append(f"{weight.module} (model {list(expected)}, file {list(got)})")
            continue
        matched.append(MatchedModule(module.component, weight, module))
    if mismatched:
        raise InputError(
            f"{lora.path}: {len(mismatched)} of {len(lora.modules)} modules have shapes "
            f"(out, in) that differ from this model's: {_few(mismatched)}; a LoRA for "
            "another architecture?"
        )
    if unmatched and not matched:
        raise InputError(
            f"{lora.path}: none of its {len(lora.modules)} modules matches this model "
            f"(first: {_few(unmatched)}); a LoRA for another architecture?"
        )
    if unmatched:
        raise InputError(
            f"{lora.path}: {len(unmatched)} of {len(lora.modules)} modules match no weight "
            f"this folder takes at run time: {_few(unmatched)}. Run-time LoRA covers the "
            "U-Net's transformer blocks and the text encoders' attention and MLP layers; "
            "others (LoCon's ResNet convolutions) can be fused at build time (sdrt build --lora)"
        )
    return tuple(matched)


def out_in(weight: AdaptableWeight) -> tuple[int, int]:
    """(out, in) features of a weight in its graph layout."""
    if weight.layout == "transposed":
        return weight.shape[1], weight.shape[0]
    return weight.shape[0], weight.shape[1]


def add_delta(value: np.ndarray, weight: AdaptableWeight, up: np.ndarray, down: np.ndarray):
    """``value += up @ down`` in the graph's layout of ``weight``, in place, in row blocks.

    Blocks keep each product small: the temporary stays in cache, and OpenBLAS runs small
    products on the calling thread, where its thread pool on a loaded machine made one big
    product 2-4x slower (README, "LoRA at run time")."""
    if weight.layout == "transposed":  # value (in, out) += down^T @ up^T
        matrix, left, right = value, down.T, np.ascontiguousarray(up.T)
    else:  # (out, in, 1, 1) += up @ down
        matrix, left, right = value.reshape(weight.shape[0], -1), up, down
    rows = max(1, BLOCK_PRODUCTS // (right.shape[0] * right.shape[1]))
    for start in range(0, matrix.shape[0], rows):
        matrix[start : start + rows] += left[start : start + rows] @ right
    return value


def _few(items: list[str], count: int = 3) -> str:
    more = f" and {len(items) - count} more" if len(items) > count else ""
    return ", ".join(items[:count]) + more
