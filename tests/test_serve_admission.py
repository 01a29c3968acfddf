"""Admission and the drain at the unit level, with jobs that block until the test lets
them go: the exact queue bound, what a shutdown cancels, and that the one-process drain
waits for running work. No model and no timing decides a result (every wait is on an
event, with a generous bound)."""

from __future__ import annotations

import signal
import threading

import pytest

from sdrt.service.admission import Admission, QueueFull

WAIT = 60.0  # s: a bound on every wait, never reached when the code is right


class BlockedJob:
    """A job that runs until released or cancelled."""

    def __init__(self):
        self.cancelled = threading.Event()
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.reasons: list[str] = []

    def run(self) -> None:
        self.started.set()
        while not (self.release.is_set() or self.cancelled.is_set()):
            self.release.wait(0.01)
        self.finished.set()

    def cancel(self, reason: str) -> None:
        self.reasons.append(reason)
        self.cancelled.set()


def _running(admission: Admission) -> BlockedJob:
    """A job submitted and running on the (only) worker."""
    job = BlockedJob()
    admission.submit(job)
    assert job.started.wait(WAIT)
    return job


@pytest.mark.parametrize("max_queue", [1, 3])
def test_the_queue_holds_exactly_max_queue_jobs_beside_the_running_one(max_queue):
    admission = Admission(workers=1, max_queue=max_queue)
    admission.start()
    running = _running(admission)
    waiting = [BlockedJob() for _ in range(max_queue)]
    for job in waiting:
        admission.submit(job)  # every place is taken, none refused
    assert (admission.in_flight, admission.depth) == (1, max_queue)
    with pytest.raises(QueueFull) as refused:
        admission.submit(BlockedJob())
    assert refused.value.depth == max_queue and refused.value.retry_after >= 1
    assert admission.depth == max_queue  # the refused job was not queued
    for job in [running, *waiting]:
        job.release.set()
    assert admission.wait_idle(WAIT)
    assert all(job.finished.is_set() for job in waiting)


def test_max_queue_0_admits_a_job_only_while_a_worker_is_free():
    """--max-queue 0 means no waiting room, not "refuse everything": a job enters the queue
    before a worker takes it, and that must not count as waiting."""
    admission = Admission(workers=1, max_queue=0)
    admission.start()
    running = _running(admission)  # accepted by the idle worker
    with pytest.raises(QueueFull) as refused:
        admission.submit(BlockedJob())  # the worker is busy and nothing may wait: 429
    assert refused.value.retry_after >= 1
    assert "queues no requests" in str(refused.value)
    assert (admission.in_flight, admission.depth) == (1, 0)
    running.release.set()
    assert admission.wait_idle(WAIT)
    _running(admission).release.set()  # the worker is free again: accepted again
    assert admission.wait_idle(WAIT)


@pytest.mark.parametrize(("workers", "max_queue"), [(1, 0), (2, 0), (1, 1), (2, 2)])
def test_back_to_back_submits_fill_the_free_workers_and_the_queue_exactly(workers, max_queue):
    """Submitted before any worker has taken a job, or after: either way exactly
    workers + max_queue are admitted (a free worker is promised to one job only)."""
    admission = Admission(workers=workers, max_queue=max_queue)
    admission.start()
    jobs = [BlockedJob() for _ in range(workers + max_queue)]
    for job in jobs:
        admission.submit(job)
    with pytest.raises(QueueFull):
        admission.submit(BlockedJob())
    for job in jobs:
        job.release.set()
    assert admission.wait_idle(WAIT)
    assert all(job.finished.is_set() for job in jobs)


def test_wait_idle_waits_for_running_jobs_not_only_queued_ones():
    admission = Admission(workers=1, max_queue=2)
    admission.start()
    running = _running(admission)
    assert admission.depth == 0
    assert admission.wait_idle(0.2) is False  # nothing queued, one running: not idle
    running.release.set()
    assert admission.wait_idle(WAIT) is True


def test_cancel_all_stops_running_jobs_and_empties_the_queue():
    admission = Admission(workers=1, max_queue=2)
    admission.start()
    running = _running(admission)
    waiting = [BlockedJob(), BlockedJob()]
    for job in waiting:
        admission.submit(job)
    assert admission.cancel_all("shutdown") == 3
    assert admission.wait_idle(WAIT)
    assert [job.reasons for job in [running, *waiting]] == [["shutdown"]] * 3
    assert running.finished.is_set()
    assert not any(job.started.is_set() for job in waiting)  # never run after a shutdown


# ------------------------------------------------------------------- the drain


def _state(tmp_path, grace: float):
    pytest.importorskip("fastapi")
    from sdrt.service.config import ServeConfig
    from sdrt.service.state import ServiceState

    state = ServiceState(ServeConfig(folder=tmp_path, grace=grace))
    state.admission.start()  # no model: the jobs here do not need one
    return state


def test_finish_cancels_what_is_left_after_the_grace_period(tmp_path):
    state = _state(tmp_path, grace=0.1)
    running = _running(state.admission)
    waiting = BlockedJob()
    state.admission.submit(waiting)
    assert state.finish(0.1) is False
    assert running.reasons == ["shutdown"] and waiting.reasons == ["shutdown"]
    assert state.admission.in_flight == 0  # stopped before finish returned
    assert not waiting.started.is_set()


def test_finish_lets_work_that_ends_in_time_end(tmp_path):
    state = _state(tmp_path, grace=WAIT)
    running = _running(state.admission)
    threading.Timer(0.1, running.release.set).start()
    assert state.finish(WAIT) is True
    assert running.reasons == [] and running.finished.is_set()


def test_the_one_process_drain_waits_for_running_jobs(tmp_path):
    """uvicorn's own graceful shutdown waits for open connections, not for the workers: a
    drain that ignored running jobs would set should_exit at once."""
    pytest.importorskip("uvicorn")
    import uvicorn

    from sdrt.service.app import create_app
    from sdrt.service.server import DrainingServer

    state = _state(tmp_path, grace=WAIT)
    running = _running(state.admission)
    server = DrainingServer(uvicorn.Config(create_app(state)), state)
    server.handle_exit(signal.SIGTERM, None)
    assert state.phase == "draining"
    server.drain_thread.join(1.0)
    assert server.drain_thread.is_alive() and not server.should_exit
    running.release.set()
    server.drain_thread.join(WAIT)
    assert server.should_exit and running.reasons == []
