"""The corrections diffusers' pipelines make to old configs when they load, applied at build.

diffusers' Stable Diffusion pipelines rewrite outdated configs in their ``__init__``
(diffusers 0.42.1, ``pipelines/stable_diffusion/pipeline_stable_diffusion*.py``), silently
apart from a deprecation warning. A folder built with the config as written would give other
images than diffusers does, so the build applies the same rewrites and records each one.

Which rules apply depends on the pipeline class ``model_index.json`` names, as in diffusers:

    StableDiffusionPipeline, ...Img2ImgPipeline   steps_offset != 1 -> 1; clip_sample true -> false
    StableDiffusionInpaintPipeline                steps_offset != 1 -> 1; skip_prk_steps false -> true
    all three                                     unet sample_size < 64 -> 64 when the unet config
                                                  was written by diffusers < 0.9.0 (default size)
    StableDiffusionXL*Pipeline                    none

diffusers tests a scheduler rule on the *instantiated* scheduler's config: a key absent from the
file takes the class's default (DDIM's steps_offset defaults to 0, so an absent one is
corrected to 1), and keys of compatible classes are kept (a PNDM config's ``clip_sample: true``
is corrected too). ``effective_scheduler_config`` reproduces that with diffusers' own class.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.export.source import SourceModel

from sdrt.manifest import ConfigCorrection, atomic_write_text

# The diffusers version whose pipelines these rules were read from.
RULES_FROM_DIFFUSERS = "0.42.1"
# A unet config written by diffusers before this version with a sample_size below
# SAMPLE_SIZE_FLOOR gets SAMPLE_SIZE_FLOOR (diffusers: "sample_size<64" deprecation).
SAMPLE_SIZE_VERSION = (0, 9, 0)
SAMPLE_SIZE_FLOOR = 64


@dataclass(frozen=True)
class _Rule:
    """One rewrite: where ``applies(value)`` holds for the effective value, write ``fixed``."""

    component: str  # "scheduler" or "unet"
    key: str
    default: Any  # diffusers' getattr default when the config has no such key
    applies: Callable[[Any], bool]
    fixed: Any
    reason: str


_STEPS_OFFSET = _Rule(
    "scheduler",
    "steps_offset",
    1,
    lambda v: v != 1,
    1,
    "diffusers' pipelines set steps_offset to 1 (an outdated config)",
)
_CLIP_SAMPLE = _Rule(
    "scheduler",
    "clip_sample",
    False,
    lambda v: v is True,
    False,
    "diffusers' StableDiffusion(Img2Img)Pipeline sets clip_sample to false",
)
_SKIP_PRK = _Rule(
    "scheduler",
    "skip_prk_steps",
    True,
    lambda v: v is False,
    True,
    "diffusers' StableDiffusionInpaintPipeline sets skip_prk_steps to true",
)

PIPELINE_RULES: Mapping[str, tuple[_Rule, ...]] = {
    "StableDiffusionPipeline": (_STEPS_OFFSET, _CLIP_SAMPLE),
    "StableDiffusionImg2ImgPipeline": (_STEPS_OFFSET, _CLIP_SAMPLE),
    "StableDiffusionInpaintPipeline": (_STEPS_OFFSET, _SKIP_PRK),
}
# Pipelines whose __init__ also applies the old-unet sample_size rule.
SAMPLE_SIZE_PIPELINES = frozenset(PIPELINE_RULES)


def effective_scheduler_config(
    raw: Mapping[str, Any], scheduler_class: str | None = None
) -> dict[str, Any]:
    """The config diffusers' scheduler class holds after ``from_config(raw)``: class defaults
    for absent keys, compatible classes' keys kept, unknown keys dropped. The raw config
    where diffusers has no such class (the build fails later in diffusers anyway).

    ``scheduler_class``: the class model_index.json names (what a pipeline instantiates);
    None: the config's own ``_class_name``."""
    import diffusers

    cls = getattr(diffusers, str(scheduler_class or raw.get("_class_name")), None)
    if cls is None or not hasattr(cls, "from_config"):
        return dict(raw)
    return {k: v for k, v in cls.from_config(dict(raw)).config.items() if not k.startswith("_")}


def correct_scheduler_config(
    raw: Mapping[str, Any], pipeline_class: str, scheduler_class: str | None = None
) -> tuple[dict[str, Any], tuple[ConfigCorrection, ...]]:
    """The scheduler config as ``pipeline_class`` would correct it, and what was changed.

    Only the corrected keys change; the rest of the file stays as written."""
    rules = [r for r in PIPELINE_RULES.get(pipeline_class, ()) if r.component == "scheduler"]
    if not rules:
        return dict(raw), ()
    effective = effective_scheduler_config(raw, scheduler_class)
    corrected = copy.deepcopy(dict(raw))
    corrections = []
    for rule in rules:
        value = effective.get(rule.key, rule.default)
        if rule.applies(value):
            corrected[rule.key] = rule.fixed
            corrections.append(
                ConfigCorrection(
                    component="scheduler",
                    key=rule.key,
                    old=raw.get(rule.key),  # None: absent from the file (the class default)
                    old_effective=value,
                    new=rule.fixed,
                    reason=rule.reason,
                )
            )
    return corrected, tuple(corrections)


def correct_unet_config(
    raw: Mapping[str, Any], pipeline_class: str
) -> tuple[dict[str, Any], tuple[ConfigCorrection, ...]]:
    """diffusers' old-unet rule: sample_size < 64 in a config from diffusers < 0.9.0 -> 64."""
    size = raw.get("sample_size")
    if (
        pipeline_class not in SAMPLE_SIZE_PIPELINES
        or not isinstance(size, int)
        or isinstance(size, bool)
        or size >= SAMPLE_SIZE_FLOOR
        or not _older_than(raw.get("_diffusers_version"), SAMPLE_SIZE_VERSION)
    ):
        return dict(raw), ()
    corrected = {**copy.deepcopy(dict(raw)), "sample_size": SAMPLE_SIZE_FLOOR}
    reason = (
        f"diffusers' pipelines set sample_size to {SAMPLE_SIZE_FLOOR} in a unet config written "
        f"by diffusers {raw.get('_diffusers_version')} (< 0.9.0)"
    )
    correction = ConfigCorrection("unet", "sample_size", size, size, SAMPLE_SIZE_FLOOR, reason)
    return corrected, (correction,)


def _older_than(version: Any, than: tuple[int, ...]) -> bool:
    """Whether a version string is below ``than``; False where there is none (as diffusers:
    a config without ``_diffusers_version`` is not corrected)."""
    if not isinstance(version, str):
        return False
    from packaging.version import InvalidVersion, Version

    try:
        parsed = Version(Version(version).base_version)
    except InvalidVersion:
        return False
    return parsed.release < than


def corrected_source(source: SourceModel) -> tuple[SourceModel, tuple[ConfigCorrection, ...]]:
    """``source`` with its scheduler and unet configs as its pipeline class corrects them."""
    entry = source.model_index.get("scheduler")
    scheduler_class = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    scheduler, scheduler_fixes = correct_scheduler_config(
        source.configs["scheduler"], source.pipeline_class, scheduler_class
    )
    unet, unet_fixes = correct_unet_config(source.configs["unet"], source.pipeline_class)
    corrections = scheduler_fixes + unet_fixes
    if not corrections:
        return source, ()
    configs = {**source.configs, "scheduler": scheduler, "unet": unet}
    return dataclasses.replace(source, configs=configs), corrections


def write_corrected_configs(
    folder: Path, source: SourceModel, corrections: tuple[ConfigCorrection, ...]
) -> None:
    """Write the corrected config files into the built ``folder`` (replacing, never writing
    through, a file hard-linked from a previous build)."""
    paths = {"scheduler": "scheduler/scheduler_config.json", "unet": "unet/config.json"}
    for component in sorted({c.component for c in corrections}):
        text = json.dumps(source.configs[component], indent=2, sort_keys=True) + "\n"
        atomic_write_text(folder / paths[component], text)
