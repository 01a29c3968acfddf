"""What the two diffusers-style contenders (``torch``, ``optimum``) share: the call of a
diffusers pipeline for a workload, the scheduler switch, and timing one of the pipeline's
methods on the clock of the request being run.

Optimum's worker imports this module in its own virtualenv, so at the top it imports only
the standard library and the protocol module; torch and diffusers are imported where used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdrt.benchmarks.contenders.protocol import Workload


def use_scheduler(pipe: Any, name: str) -> None:
    """Give ``pipe`` the diffusers scheduler class ``name``, from its current config."""
    import diffusers

    if type(pipe.scheduler).__name__ != name:
        scheduler_class = getattr(diffusers, name)
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)


def pipeline_arguments(workload: Workload, latents: Any) -> dict[str, Any]:
    """The keyword arguments of the diffusers pipeline call for ``workload``, seeded alike."""
    import torch

    return {
        **workload.call_arguments(),
        "latents": torch.from_numpy(latents),
        "generator": torch.Generator().manual_seed(0),
        "output_type": "np",
    }


def timed_on_current_clock(
    owner: Any, stage: str, function: Callable[..., Any]
) -> Callable[..., Any]:
    """``function`` wrapped so that each call's wall time is recorded under ``stage`` on
    ``owner.clock``, the clock of the request being run (none: not recorded)."""

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        if owner.clock is None:
            return function(*args, **kwargs)
        with owner.clock.measure(stage):
            return function(*args, **kwargs)

    return timed_call
