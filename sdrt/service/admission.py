"""Admission: a bounded queue in front of a small pool of worker threads.

A job is anything with ``run()`` (called on a worker), ``cancelled`` (a threading.Event;
a job cancelled while it waits is dropped without running) and ``cancel(reason)``. ``submit``
never blocks: it admits a job that a free worker will take, or that finds one of the
``max_queue`` places in the waiting room (so ``max_queue=0``: accepted only while a worker
is free); otherwise it raises QueueFull with how many seconds to wait before trying again,
estimated from the recent jobs' durations.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque

log = logging.getLogger("sdrt.service")


class QueueFull(Exception):
    def __init__(self, depth: int, retry_after: int):
        if depth:
            message = f"{depth} requests are waiting, the most this server queues"
        else:  # --max-queue 0: no waiting room
            message = "every worker is busy and this server queues no requests"
        super().__init__(message)
        self.depth = depth
        self.retry_after = retry_after


class Admission:
    def __init__(self, workers: int, max_queue: int, batcher=None):
        self.workers = workers
        self.max_queue = max_queue
        # sdrt/service/batching.py's Batcher, or None: every job runs alone.
        self.batcher = batcher
        self._waiting: deque = deque()
        self._running: list = []  # the jobs on a worker now (a batch's each)
        self._busy = 0  # workers that hold a job (or a batch), gathering or running it
        self._cond = threading.Condition()
        self._durations: deque[float] = deque(maxlen=32)
        self._threads: list[threading.Thread] = []

    @property
    def depth(self) -> int:
        """Jobs waiting for a worker."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Jobs running on a worker."""
        return len(self._running)

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"sdrt-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, job) -> None:
        with self._cond:
            # A job sits in _waiting until a worker takes it, even when one is free: the
            # free workers' jobs are not counted against the waiting room.
            free = self.workers - self._busy
            if len(self._waiting) >= free + self.max_queue:
                raise QueueFull(max(0, len(self._waiting) - free), self._retry_after())
            self._waiting.append(job)
            self._cond.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing waits or runs; False if ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._waiting or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def cancel_all(self, reason: str) -> int:
        """Cancel every waiting and running job, for a shutdown: the waiting ones leave the
        queue, the running ones stop at their next step. How many were cancelled."""
        with self._cond:
            jobs = [*self._waiting, *self._running]
            self._waiting.clear()
            self._cond.notify_all()
        for job in jobs:
            job.cancel(reason)
        return len(jobs)

    def _retry_after(self) -> int:
        """Seconds until a queue place is likely free (the next job a worker starts frees
        one): a recent job's mean duration shared by the workers, at least 1."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(mean / self.workers))

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                job = self._waiting.popleft()
                if job.cancelled.is_set():
                    self._cond.notify_all()
                    continue
                self._running.append(job)  # running while it gathers: wait_idle sees it
                self._busy += 1
                jobs = self._gather(job)
                self._running.extend(jobs[1:])
            start = time.monotonic()
            try:
                (jobs[0] if self.batcher is None else self.batcher.combine(jobs)).run()
            except Exception:  # a job reports its own errors; this is a bug in one
                log.exception("a job failed outside its own error handling")
            finally:
                with self._cond:
                    for done in jobs:
                        self._running.remove(done)
                    self._busy -= 1
                    self._durations.append(time.monotonic() - start)
                    self._cond.notify_all()

    def _gather(self, job) -> list:
        """``job`` and the compatible waiting jobs that fit its batch, waiting up to the
        batcher's wait for more to arrive (called holding the lock)."""
        batcher = self.batcher
        key = None if batcher is None else batcher.key(job)
        if key is None:
            return [job]
        jobs, images = [job], batcher.images(job)
        deadline = time.monotonic() + batcher.wait_seconds
        while images < batcher.max_images:
            for other in list(self._waiting):
                fits = images + batcher.images(other) <= batcher.max_images
                if fits and not other.cancelled.is_set() and batcher.key(other) == key:
                    self._waiting.remove(other)
                    jobs.append(other)
                    images += batcher.images(other)
            left = deadline - time.monotonic()
            if images >= batcher.max_images or left <= 0:
                break
            self._cond.wait(left)
        return jobs
