"""``sdrt serve FOLDER --replicas N``: the same app as a Ray Serve deployment (the ``ray``
extra): N replicas, each a process with its own Pipeline, ServiceState and metrics,
behind Ray's HTTP proxy on ``--host``/``--port``. Every answer names its replica in the
``x-sdrt-replica`` header (Ray's replica tag).

A replica loads and warms up in its constructor, so Ray routes to it only once its first
image will be fast. ``max_ongoing_requests`` lets a replica hold more than its own queue,
so that a full replica answers 429 itself, with the same JSON body. On SIGTERM
``serve.shutdown()`` stops the proxy and lets each replica finish what it holds (Ray's
``graceful_shutdown_timeout_s`` = ``--grace``). ``/metrics`` through the proxy is the
metrics of whichever replica answered; Ray exports its own cluster metrics besides.

Note: Ray itself (its GCS, raylet, workers) listens on the node's address and on ports of
every interface, whatever ``--host`` says; only the HTTP proxy follows ``--host``.
"""

from __future__ import annotations

import signal
import threading

from sdrt.service.config import ServeConfig


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

    ray.init(include_dashboard=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_deployment(config), name="sdrt", route_prefix="/")
        print(f"sdrt: {config.replicas} replicas ready on http://{config.host}:{config.port}")
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
