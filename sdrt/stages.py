"""The public stage hook: how long each stage of one call took.

Every call records a StageTiming per stage it ran: ``tokenize`` and each text encoder
(``text_encoder``, ``text_encoder_2``) per prompt batch encoded, ``vae_encode`` for
img2img and inpainting, ``controlnet`` (the call's ControlNets, on the steps they run), ``t2i_adapter`` (once per call with
an adapter image),
``unet`` and ``scheduler_step`` per denoising step (with its index), and ``vae_decode``. They come back as ``PipelineOutput.timings``, and, as they
happen, to a ``stage_callback`` passed to the call (a service's metrics, a benchmark).

Times are wall-clock seconds on the host. On a GPU backend a stage's time is the time
to enqueue its work unless the stage itself waits for the device (the final decode does,
since the image is copied to the host).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

STAGES = (
    "tokenize",
    "text_encoder",
    "text_encoder_2",
    "vae_encode",
    "controlnet",
    "t2i_adapter",
    "unet",
    "scheduler_step",
    "vae_decode",
)


@dataclass(frozen=True)
class StageTiming:
    stage: str  # one of STAGES
    seconds: float
    step: int | None = None  # the denoising step (0-based) of a unet or scheduler_step


StageCallback = Callable[[StageTiming], None]


class StageRecorder:
    """Collects one call's timings and hands each to ``callback`` as it is made."""

    def __init__(self, callback: StageCallback | None = None):
        self.timings: list[StageTiming] = []
        self._callback = callback

    @contextmanager
    def stage(self, name: str, step: int | None = None) -> Iterator[None]:
        """Time the block; a block that raises records nothing."""
        start = time.perf_counter()
        yield
        timing = StageTiming(name, time.perf_counter() - start, step)
        self.timings.append(timing)
        if self._callback is not None:
            self._callback(timing)


def summarize(timings: tuple[StageTiming, ...] | list[StageTiming]) -> dict[str, float]:
    """Total seconds per stage, in STAGES order (stages that did not run are left out)."""
    totals = {name: 0.0 for name in STAGES}
    seen = set()
    for timing in timings:
        totals[timing.stage] = totals.get(timing.stage, 0.0) + timing.seconds
        seen.add(timing.stage)
    return {name: seconds for name, seconds in totals.items() if name in seen}
