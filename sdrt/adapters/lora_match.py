"""A parsed LoRA file matched against a folder's LoRA branches: which branch each module
feeds, with its shape checked, or a clear error naming what did not match."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sdrt.adapters.lora_files import LoraFile, LoraModule
from sdrt.errors import InputError
from sdrt.manifest import LoraBranch

TEXT_MODEL = "text_model."  # transformers < 5 nests CLIP's modules under it; 5 does not


@dataclass(frozen=True)
class MatchedModule:
    """One LoRA module bound to the branch it feeds."""

    component: str
    branch: LoraBranch
    lora: LoraModule


def canonical(module: str) -> str:
    return module[len(TEXT_MODEL) :] if module.startswith(TEXT_MODEL) else module


def module_lookup(layout: str, branches: tuple[LoraBranch, ...]):
    """The file's module key -> LoraBranch, for one component's branches and a layout."""
    table = {}
    for branch in branches:
        name = canonical(branch.module)
        table[name.replace(".", "_") if layout == "kohya" else name] = branch
    return table


def match_lora(
    lora: LoraFile, branches: Mapping[str, tuple[LoraBranch, ...]]
) -> tuple[MatchedModule, ...]:
    """Bind every module of ``lora`` to a branch; InputError naming the file and
    the modules that match nothing, or whose shapes differ."""
    tables = {}
    matched, unmatched, mismatched = [], [], []
    for module in lora.modules:
        key = (module.component, lora.layout)
        if key not in tables:
            tables[key] = module_lookup(lora.layout, branches.get(module.component, ()))
        name = canonical(module.key)
        if lora.layout == "kohya" and name.startswith("text_model_"):
            name = name[len("text_model_") :]
        branch = tables[key].get(name)
        if branch is None:
            mapped = f" (as {module.key})" if module.file_key else ""
            unmatched.append(f"{module.component}:{module.name_in_file}{mapped}")
            continue
        expected = (branch.features_out, branch.features_in, *branch.kernel)
        got = (module.up.shape[0], module.down.shape[1], *module.kernel)
        if expected != got:
            mismatched.append(f"{branch.module} (model {_shape(expected)}, file {_shape(got)})")
            continue
        matched.append(MatchedModule(module.component, branch, module))
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
        if covers_whole_unet(branches):
            covered = "every Linear and conv of the U-Net"
            hint = "fuse the file at build time instead (sdrt build --lora)"
        else:
            covered = "the U-Net's transformer blocks"
            hint = (
                "rebuild with `sdrt build --lora-ready all` for LoRAs that also train the "
                "ResNets and samplers (LCM-LoRA, TCD, Hyper-SD, Lightning, LoCon), or fuse "
                "the file at build time (sdrt build --lora)"
            )
        raise InputError(
            f"{lora.path}: {len(unmatched)} of {len(lora.modules)} modules match no module "
            f"this folder takes at run time: {_few(unmatched)}. This folder's run-time LoRA "
            f"covers {covered} and the text encoders' attention and MLP layers; {hint}"
        )
    return tuple(matched)


def covers_whole_unet(branches: Mapping[str, tuple[LoraBranch, ...]]) -> bool:
    """Whether the folder was built ``--lora-ready all`` (U-Net branches outside the
    transformer blocks)."""
    return any(".attentions." not in b.module for b in branches.get("unet", ()))


def _shape(sizes: tuple[int, ...]) -> str:
    """[out, in] or, for a kxk conv, [out, in, kh, kw], as the error shows it."""
    out, features_in, kh, kw = sizes
    if (kh, kw) == (1, 1):
        return f"[{out}, {features_in}]"
    return f"[{out}, {features_in // (kh * kw)}, {kh}, {kw}]"


def _few(items: list[str], count: int = 3) -> str:
    more = f" and {len(items) - count} more" if len(items) > count else ""
    return ", ".join(items[:count]) + more
