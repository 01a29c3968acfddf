"""One replica's life: loading (and warming up), ready, draining; and what it holds.

``/readyz`` is 200 only when ``phase == "ready"``: the Pipeline is loaded and one tiny
warm-up has read every weight once (``warm_up``), so the first request does not pay for
paging in the mapped weights.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from sdrt.service.admission import Admission
from sdrt.service.config import ServeConfig
from sdrt.service.errors import ApiError
from sdrt.service.metrics import Metrics

log = logging.getLogger("sdrt.service")

LOADING, READY, DRAINING, FAILED = "loading", "ready", "draining", "failed"
WARMUP_PROMPT = "warm-up"
# After the grace period, how long the workers get to stop what was cancelled (at its next
# step, or after the VAE decode it is in): the process must not exit while native code runs
# on one of them, or it aborts ("terminate called without an active exception", 134).
STOP_SECONDS = 60.0
WARMUP_STEPS = 1


def default_loader(config: ServeConfig):
    from sdrt.pipeline import Pipeline

    return Pipeline.load(config.folder, backend=config.backend)


class ServiceState:
    def __init__(
        self,
        config: ServeConfig,
        loader: Callable[[ServeConfig], object] = default_loader,
        replica: str | None = None,
    ):
        self.config = config
        self.limits = config.limits
        self.metrics = Metrics()
        self.admission = Admission(config.workers, config.max_queue)
        self.metrics.bind(self.admission)
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}"
        self.phase = LOADING
        self.failure: str | None = None
        self.pipe = None
        self.load_seconds: float | None = None
        self.warmup_seconds: float | None = None
        self.on_failure: Callable[[str], None] | None = None  # the server exits on it
        self._loader = loader

    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="sdrt-load", daemon=True)
        thread.start()
        return thread

    def load(self) -> None:
        """Load the Pipeline, warm it up, start the workers; then ready."""
        try:
            start = time.perf_counter()
            pipe = self._loader(self.config)
            self.load_seconds = time.perf_counter() - start
            self.metrics.load_seconds.set(self.load_seconds)
            if self.config.warmup:
                self.warmup_seconds = warm_up(pipe)
                self.metrics.warmup_seconds.set(self.warmup_seconds)
        except Exception as e:  # the folder, the backend: the process cannot serve
            self.phase, self.failure = FAILED, f"{type(e).__name__}: {e}"
            log.error("loading %s failed: %s", self.config.folder, self.failure)
            if self.on_failure is not None:
                self.on_failure(self.failure)
            return
        self.pipe = pipe
        if self.config.max_batch > 1:
            from sdrt.service.batching import Batcher

            most = min(self.config.max_batch, pipe.manifest.build.max_batch)
            self.admission.batcher = Batcher(most, self.config.batch_wait_ms / 1000)
            log.info("batching up to %d images, waiting %g ms", most, self.config.batch_wait_ms)
        self.admission.start()
        if self.phase == LOADING:
            self.phase = READY
            self.metrics.ready.set(1)
        log.info("ready: load %.2f s, warm-up %s", self.load_seconds, _seconds(self.warmup_seconds))

    def drain(self) -> None:
        """Stop accepting: /readyz and new generations answer 503 from now on."""
        self.phase = DRAINING
        self.metrics.ready.set(0)

    def finish(self, grace: float) -> bool:
        """After ``drain``: wait up to ``grace`` seconds for the queued and running
        generations; then cancel what is left (each request is answered 503) and wait for
        the workers to stop it. True when everything finished within the grace period."""
        if self.admission.wait_idle(grace):
            return True
        stopped = self.admission.cancel_all("shutdown")
        self.metrics.cancellations.labels("shutdown").inc(stopped)
        log.warning("grace period of %g s passed: stopped %d generations", grace, stopped)
        if not self.admission.wait_idle(STOP_SECONDS):
            log.warning("a generation did not stop within %g s of being cancelled", STOP_SECONDS)
        return False

    def check_accepting(self) -> None:
        if self.phase == READY:
            return
        reason = {LOADING: "loading", DRAINING: "draining"}.get(self.phase, "failed")
        self.metrics.rejections.labels(reason).inc()
        message = {
            LOADING: "the model is loading; try again shortly",
            DRAINING: "this server is shutting down; try another replica",
        }.get(self.phase, f"the model failed to load: {self.failure}")
        headers = {"Retry-After": "5"} if self.phase == LOADING else {}
        raise ApiError(503, message, reason, headers=headers)


# The graphs a text-to-image call runs, whose weights a warm-up reads.
WARMED_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
# The smallest sizes a warm-up feeds ONNX Runtime's CPU graphs (any size runs there):
# an 8x8 latent reads every weight at a sliver of a real step's work.
TOUCH_DIMS = {"batch": 1, "steps": 1, "sequence": 77, "latent_height": 8, "latent_width": 8}


def warm_up(pipe) -> float:
    """Read every weight of the text encoder(s), U-Net and VAE decoder once, so that the
    first request does not wait on page faults; returns its seconds.

    On ort-cpu each graph runs once on the smallest inputs (``touch_weights``). On the SD 1.5
    architecture with the page cache dropped, this made ready about 4 s sooner than a
    one-step generation at 256x256 did (5.6 s against 9.2-10.3 s). The first 256x256 request
    after it took 1 s longer than after the generation, which had also made ONNX Runtime's
    allocations at the real shapes (README, serve). Elsewhere (TensorRT profiles, CUDA) one
    generation at the folder's smallest size and one step does it."""
    start = time.perf_counter()
    if not touch_weights(pipe):
        _warm_up_by_generating(pipe)
    return time.perf_counter() - start


def touch_feeds(component) -> dict | None:
    """Zeros of the smallest shapes for every required input, or None where an input has a
    dimension TOUCH_DIMS does not know."""
    import numpy as np

    feeds = {}
    for spec in component.inputs:
        shape = []
        for dim in spec.shape:
            if isinstance(dim, str) and dim not in TOUCH_DIMS:
                return None
            shape.append(TOUCH_DIMS[dim] if isinstance(dim, str) else dim)
        feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def touch_weights(pipe) -> bool:
    """ort-cpu: run each warmed graph once on ``touch_feeds``; False (and nothing run) on
    another backend or where a graph's inputs are not all known."""
    if pipe.backend != "ort-cpu":
        return False
    components = pipe.manifest.components
    feeds = {}
    for name in WARMED_COMPONENTS:
        if name in components:
            feeds[name] = touch_feeds(components[name])
            if feeds[name] is None:
                return False
    for name, feed in feeds.items():
        pipe.session(name).run(feed)
    return True


def _warm_up_by_generating(pipe) -> None:
    """One generation at the folder's smallest size and one step."""
    build = pipe.manifest.build
    size = -(-build.min_size // build.size_multiple) * build.size_multiple
    pipe(
        WARMUP_PROMPT,
        num_inference_steps=WARMUP_STEPS,
        height=size,
        width=size,
        seed=0,
        output_type="np",
    )


def _seconds(value: float | None) -> str:
    return "off" if value is None else f"{value:.2f} s"
