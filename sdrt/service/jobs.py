"""One generation run on a worker thread, its events handed to the request's event loop.

The worker iterates ``Pipeline.generate``; after every step it hands a Progress to the
loop and, if the job was cancelled meanwhile (timeout, client gone), closes the
generator, so the work stops between steps. The request's coroutine reads the events
with ``next_event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from sdrt.errors import InputError

log = logging.getLogger("sdrt.service")


@dataclass(frozen=True)
class Event:
    kind: str  # "progress", "done", "cancelled", "error"
    progress: Any = None  # sdrt.pipeline.Progress ("progress", "done")
    error: BaseException | None = None  # ("error")
    reason: str | None = None  # why ("cancelled"): "timeout", "disconnect", "shutdown"


class GenerationJob:
    def __init__(self, pipe, request, loop: asyncio.AbstractEventLoop, stage_callback=None):
        self._pipe = pipe
        self._request = request
        self._loop = loop
        self._stage_callback = stage_callback
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.cancel_reason: str | None = None
        self.started = threading.Event()

    def cancel(self, reason: str) -> None:
        """Stop the job: the request is answered now (a "cancelled" event), and a running
        generation stops at its next step, a waiting one never starts."""
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()
            self._emit(Event("cancelled", reason=reason))

    def run(self) -> None:
        """On a worker: the whole generation, step by step, unless cancelled."""
        self.started.set()
        try:
            generator = self._pipe.generate(self._request, stage_callback=self._stage_callback)
            for progress in generator:
                if progress.result is not None:
                    self._emit(Event("done", progress))
                    return
                self._emit(Event("progress", progress))
                if self.cancelled.is_set():
                    generator.close()
                    self._emit(Event("cancelled"))
                    return
        except InputError as e:  # checked at admission; an image that fails late
            self._emit(Event("error", error=e))
        except Exception as e:
            log.exception("generation failed")
            self._emit(Event("error", error=e))

    def _emit(self, event: Event) -> None:
        # RuntimeError: the loop has closed, nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)


async def next_event(job: GenerationJob, deadline: float | None) -> Event | None:
    """The job's next event, or None once ``deadline`` (loop time) has passed."""
    if deadline is None:
        return await job.events.get()
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        return None
    try:
        return await asyncio.wait_for(job.events.get(), left)
    except asyncio.TimeoutError:
        return None
