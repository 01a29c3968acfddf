"""DeepCache at run time: which steps run the whole U-Net, and the feature between them.

A call with ``deep_cache_interval=N`` (and ``deep_cache_branch=B``) runs the full U-Net on
a step whose timestep index, counted from the call's first step, is a multiple of N, and
keeps its ``deep_cache_feature_<B>`` output; the steps between run the shallow U-Net
``unet_shallow_<B>`` on that feature. This is DeepCacheSDHelper's ``uniform`` skip mode:
it indexes a step by the first position of its timestep in the schedule, which for
schedules that repeat timesteps (Heun, DPM2) is not the step's own position; so is this.
The graphs come from ``sdrt build --deep-cache`` (export/deep_cache.py).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from sdrt.errors import ParameterError
from sdrt.manifest import DEEP_CACHE_FEATURE_INPUT, DeepCacheBranch, Manifest


@dataclass(frozen=True)
class DeepCacheSettings:
    """A call's checked DeepCache settings."""

    interval: int  # DeepCache's cache_interval: a full U-Net every ``interval`` steps
    branch: DeepCacheBranch  # cache_branch_id, with the graphs the folder built for it


def check_deep_cache(manifest: Manifest, interval: Any, branch: Any) -> DeepCacheSettings | None:
    """The settings for ``deep_cache_interval``/``deep_cache_branch``, None when off, or
    InputError naming what the folder was built with."""
    if interval is None:
        if branch is not None:
            raise ParameterError(
                "{deep_cache_branch}: {branch!r} needs {deep_cache_interval=} too (DeepCache is "
                "off without an interval)",
                branch=branch,
            )
        return None
    if isinstance(interval, bool) or not isinstance(interval, numbers.Integral) or interval < 1:
        raise ParameterError(
            "{deep_cache_interval}: expected an integer >= 1, got {value!r}", value=interval
        )
    built = manifest.deep_cache
    if built is None or not built.branches:
        raise ParameterError(
            "{deep_cache_interval}: this model folder was built without DeepCache's graphs; "
            "rebuild it with `sdrt build --deep-cache`"
        )
    if branch is None:
        branch = built.branches[0].branch
    if isinstance(branch, bool) or not isinstance(branch, numbers.Integral):
        raise ParameterError(
            "{deep_cache_branch}: expected an integer, got {value!r}", value=branch
        )
    record = built.branch(int(branch))
    if record is None:
        raise ParameterError(
            f"{{deep_cache_branch}}: this model folder was built for DeepCache branches "
            f"{list(built.branch_ids)}, got {branch} (sdrt build --deep-cache-branches)"
        )
    return DeepCacheSettings(int(interval), record)


def full_steps(timesteps, interval: int) -> tuple[bool, ...]:
    """Per step, whether it runs the whole U-Net (DeepCache's uniform skip mode)."""
    values = [float(t) for t in timesteps]
    index = [values.index(v) for v in values]  # the first position of each timestep
    return tuple((i - index[0]) % interval == 0 for i in index)


class DeepCacheLoop:
    """One call's DeepCache state: the schedule and the feature of the last full step."""

    def __init__(self, settings: DeepCacheSettings, timesteps):
        self.settings = settings
        self.full = full_steps(timesteps, settings.interval)
        self.feature = None

    def session_name(self, step: int) -> str:
        return "unet" if self.full[step] else self.settings.branch.component

    def feeds(self, step: int, spec_dtype: str) -> dict[str, Any]:
        """The shallow U-Net's extra input on a cached step; nothing on a full one."""
        if self.full[step]:
            return {}
        return {DEEP_CACHE_FEATURE_INPUT: self.feature.astype(spec_dtype)}

    def keep(self, step: int, outputs: dict[str, Any]) -> None:
        """After a full step: keep its feature for the cached steps after it."""
        if self.full[step]:
            self.feature = outputs[self.settings.branch.feature_output]
