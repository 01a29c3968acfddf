"""``sdrt serve FOLDER --replicas N``: the same app as a Ray Serve deployment (the ``ray``
extra): N replicas, each a process with its own Pipeline, ServiceState and metrics,
behind Ray's HTTP proxy on ``--host``/``--port``. With ``--expose-replica-id`` every answer
names its replica in the ``x-sdrt-replica`` header (Ray's replica tag).

A replica loads and warms up in its constructor, so Ray routes to it only once its first
image will be fast. ``max_ongoing_requests`` lets a replica hold more than its own queue,
so that a full replica answers 429 itself, with the same JSON body. ``/metrics`` through the
proxy is the metrics of whichever replica answered; Ray exports its own cluster metrics
besides.

SIGTERM drains as the one-process server does: a small named actor (DrainSignal) tells every
replica to stop accepting (their /readyz and new generations answer 503 through the proxy,
which stays up), each reports when what it held has finished, and only then, or after
``--grace`` seconds (when each replica cancels what is left, answered 503),
``serve.shutdown()`` stops the proxy and the replicas. (Shutting Serve
down at once would close the proxy's connections mid-generation.)

Note: Ray itself (its GCS, raylet, workers) listens on the node's address and on ports of
every interface, whatever ``--host`` says; only the HTTP proxy follows ``--host``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from sdrt.service.config import ServeConfig

log = logging.getLogger("sdrt.serve")

NAMESPACE = "sdrt"  # the Ray namespace the drain signal is named in
DRAIN_SIGNAL = "sdrt-drain-signal"
DRAIN_POLL_SECONDS = 0.25  # how often a replica asks whether to drain, and the driver waits


def _drain_signal_class():
    """The DrainSignal actor class (defined when Ray is imported, not before)."""
    import ray

    @ray.remote(num_cpus=0)
    class DrainSignal:
        """Set once on SIGTERM; replicas poll it and report when they are idle."""

        def __init__(self):
            self.draining = False
            self.idle: set[str] = set()

        def start(self) -> None:
            self.draining = True

        def is_set(self) -> bool:
            return self.draining

        def report_idle(self, replica: str) -> None:
            self.idle.add(replica)

        def idle_count(self) -> int:
            return len(self.idle)

    return DrainSignal


def _follow_drain_signal(state, replica: str) -> None:
    """A replica's thread: on the signal, drain (503s from now on), wait for what it holds
    (at most --grace), then say so."""
    import ray

    drain = ray.get_actor(DRAIN_SIGNAL, namespace=NAMESPACE)
    while not ray.get(drain.is_set.remote()):
        time.sleep(DRAIN_POLL_SECONDS)
    state.drain()
    state.finish(state.config.grace)
    ray.get(drain.report_idle.remote(replica))


def build_deployment(config: ServeConfig):
    """The bound Ray Serve application: ``config.replicas`` replicas of the app."""
    from ray import serve

    @serve.deployment(
        name="sdrt",
        num_replicas=config.replicas,
        max_ongoing_requests=config.workers + config.max_queue + 4,
        graceful_shutdown_timeout_s=config.grace,
        health_check_period_s=10,
    )
    @serve.ingress()
    class SdrtReplica:
        def __init__(self, config: ServeConfig):
            from sdrt.service.state import ServiceState

            tag = serve.get_replica_context().replica_tag
            self.state = ServiceState(config, replica=tag)
            self.state.load()  # load + warm-up now: Ray routes only to ready replicas
            if self.state.failure is not None:
                raise RuntimeError(self.state.failure)
            threading.Thread(
                target=_follow_drain_signal,
                args=(self.state, tag),
                name="sdrt-drain-signal",
                daemon=True,
            ).start()

        def __serve_build_asgi_app__(self):
            from sdrt.service.app import create_app

            return create_app(self.state)

        def check_health(self) -> None:
            if self.state.failure is not None:
                raise RuntimeError(self.state.failure)

    return SdrtReplica.bind(config)


def serve_replicas(config: ServeConfig) -> int:
    """Start Ray locally, run the deployment behind Ray's proxy, block until SIGTERM."""
    import ray
    from ray import serve

    ray.init(include_dashboard=False, namespace=NAMESPACE)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    drain = _drain_signal_class().options(name=DRAIN_SIGNAL).remote()
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_deployment(config), name="sdrt", route_prefix="/")
        print(f"sdrt: {config.replicas} replicas ready on http://{config.host}:{config.port}")
        stop.wait()
        _drain_replicas(drain, config)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def _drain_replicas(drain, config: ServeConfig) -> None:
    """Tell every replica to drain; wait until all are idle or ``grace`` seconds pass."""
    import ray

    log.info("draining: waiting up to %g s for queued and in-flight generations", config.grace)
    ray.get(drain.start.remote())
    from sdrt.service.state import STOP_SECONDS

    # the replicas' grace, then the time they have to stop and answer what they cancelled
    deadline = time.monotonic() + config.grace + STOP_SECONDS
    while ray.get(drain.idle_count.remote()) < config.replicas:
        if time.monotonic() >= deadline:
            log.warning("replicas still busy %g s after the grace period", STOP_SECONDS)
            return
        time.sleep(DRAIN_POLL_SECONDS)
