"""The service's Prometheus metrics, in a registry of its own (one per app).

- ``sdrt_requests_total{endpoint,status}``: answered requests by HTTP status
- ``sdrt_request_seconds{endpoint}``: end to end, arrival to the last byte (histogram)
- ``sdrt_stage_seconds{stage}``: each pipeline stage, from the stage hook (histogram)
- ``sdrt_images_total``: images returned
- ``sdrt_rejections_total{reason}``: queue_full, loading, draining, too_large, unauthorized
- ``sdrt_cancellations_total{reason}``: timeout, disconnect, shutdown (work stopped between steps)
- ``sdrt_queue_depth``, ``sdrt_in_flight``: waiting and running generations (gauges)
- ``sdrt_ready``, ``sdrt_load_seconds``, ``sdrt_warmup_seconds``: readiness and cold start
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from sdrt.stages import StageTiming

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "sdrt_requests", "Answered requests", ["endpoint", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "sdrt_request_seconds",
            "End to end request time",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "sdrt_stage_seconds",
            "Pipeline stage time",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.images = Counter("sdrt_images", "Images returned", registry=r)
        self.rejections = Counter("sdrt_rejections", "Requests turned away", ["reason"], registry=r)
        self.cancellations = Counter(
            "sdrt_cancellations", "Generations stopped between steps", ["reason"], registry=r
        )
        self.queue_depth = Gauge("sdrt_queue_depth", "Generations waiting", registry=r)
        self.in_flight = Gauge("sdrt_in_flight", "Generations running", registry=r)
        self.ready = Gauge("sdrt_ready", "1 when accepting requests", registry=r)
        self.load_seconds = Gauge("sdrt_load_seconds", "Pipeline.load time", registry=r)
        self.warmup_seconds = Gauge("sdrt_warmup_seconds", "Warm-up generation time", registry=r)

    def bind(self, admission) -> None:
        """Read the queue depth and in-flight count from ``admission`` at each scrape."""
        self.queue_depth.set_function(lambda: admission.depth)
        self.in_flight.set_function(lambda: admission.in_flight)

    def observe_stage(self, timing: StageTiming) -> None:
        self.stage_seconds.labels(timing.stage).observe(timing.seconds)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
