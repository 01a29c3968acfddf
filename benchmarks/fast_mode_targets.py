"""Issue 14's targets for the fast modes, checked against a benchmark report's figures.

Each target names the exact set of modes it is about (``ort-cpu+int8`` is the int8 target's
contender; ``ort-cpu+int8+tinyvae`` is not) and the contender it is measured against: exact
sdrt (the bare backend) or eager diffusers (torch). A target the issue states for one size and
step count is shown at other sizes for information only, without a verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sdrt.benchmarks import fast_modes
from sdrt.benchmarks.contenders import BASELINE, is_peer

INT8_STEP_SPEEDUP = 1.8  # int8 U-Net step against the fp32 step
DEEP_CACHE_SPEEDUP = 1.6  # DeepCache at interval 3, end to end, against exact sdrt
INT8_DEEP_CACHE_SPEEDUP = 4.0  # int8 + DeepCache 3, end to end, against eager diffusers
INT8_DEEP_CACHE_SETTING = ("256x256", 10)  # the size and steps the 4x target is stated for


@dataclass(frozen=True)
class ModeTarget:
    text: str
    modes: frozenset[str]  # the contender's mode words, exactly
    against: str  # "exact" (the bare backend) or "torch"
    stage: str  # the stage whose medians are compared
    minimum: float  # the speedup that meets it
    # (size, steps) -> whether a verdict applies there; else the figure is for information
    applies: Callable[[str, int], bool] = lambda size, steps: True


TARGETS = (
    ModeTarget(
        f"int8 U-Net step ≥ {INT8_STEP_SPEEDUP}x faster than fp32 (ratio)",
        frozenset({"int8"}),
        "exact",
        "unet_step_s",
        INT8_STEP_SPEEDUP,
    ),
    ModeTarget(
        f"DeepCache at interval 3: end to end ≥ {DEEP_CACHE_SPEEDUP}x faster than exact sdrt "
        "(ratio)",
        frozenset({"deepcache3"}),
        "exact",
        "end_to_end_s",
        DEEP_CACHE_SPEEDUP,
    ),
    ModeTarget(
        f"int8 + DeepCache 3: end to end ≥ {INT8_DEEP_CACHE_SPEEDUP:g}x faster than eager "
        f"diffusers at {INT8_DEEP_CACHE_SETTING[0]}, {INT8_DEEP_CACHE_SETTING[1]} steps (ratio)",
        frozenset({"int8", "deepcache3"}),
        "torch",
        "end_to_end_s",
        INT8_DEEP_CACHE_SPEEDUP,
        applies=lambda size, steps: (size, steps) == INT8_DEEP_CACHE_SETTING,
    ),
)


@dataclass(frozen=True)
class Checked:
    contender: str
    size: str
    target: ModeTarget
    against: str  # the contender it was measured against
    value: float | None  # the speedup; None when either median is missing
    met: bool | None
    applies: bool  # False: shown for information, no verdict


def _median(record: dict | None, size: str, stage: str) -> float | None:
    for result in (record or {}).get("results", []):
        if result["size"] == size and stage in result["stages"]:
            return result["stages"][stage]["median"]
    return None


def mode_words(name: str) -> frozenset[str]:
    """The mode words of a contender name, with DeepCache's default branch spelled out
    the same either way (``deepcache3b0`` is ``deepcache3``)."""
    _, *words = name.split(fast_modes.SEPARATOR)
    return frozenset(
        word.removesuffix("b0") if word.startswith("deepcache") else word for word in words
    )


def check_targets(report: dict) -> list[Checked]:
    """Every target against every contender whose modes it names, at every size."""
    by_name = {c["name"]: c for c in report["contenders"]}
    steps = report["settings"]["steps"]
    checked = []
    for size in report["settings"]["sizes"]:
        for contender in report["contenders"]:
            exact = fast_modes.exact_name(contender["name"])
            # a peer's own modes (optimum-intel+int8) are not sdrt's: their targets not either
            if exact is None or is_peer(contender["name"]) or contender.get("status") != "ok":
                continue
            words = mode_words(contender["name"])
            for target in TARGETS:
                if words != target.modes:
                    continue
                against = exact if target.against == "exact" else BASELINE
                mine = _median(contender, size, target.stage)
                theirs = _median(by_name.get(against), size, target.stage)
                value = theirs / mine if mine and theirs else None
                met = None if value is None else value >= target.minimum
                checked.append(
                    Checked(
                        contender["name"],
                        size,
                        target,
                        against,
                        value,
                        met,
                        target.applies(size, steps),
                    )
                )
    return checked
