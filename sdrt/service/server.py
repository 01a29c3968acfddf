"""``sdrt serve`` in one process: uvicorn on the app, with a drain on SIGTERM.

SIGTERM (or a first Ctrl-C): /readyz and new generations answer 503 at once, queued and
in-flight generations finish (at most ``grace`` seconds; what is left then is cancelled and
answered 503), then uvicorn closes its connections and the process exits 0 (130 after
Ctrl-C, as the CLI's other commands). A second signal exits at once.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading

import uvicorn

from sdrt.service.app import create_app
from sdrt.service.config import ServeConfig
from sdrt.service.state import ServiceState

log = logging.getLogger("sdrt.service")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState):
        super().__init__(config)
        self.state = state
        self._draining = False
        self.drain_thread: threading.Thread | None = None

    def handle_exit(self, sig, frame) -> None:
        if sig == signal.SIGINT:
            self._captured_signals.append(sig)  # re-raised after shutdown: exit 130
        if self._draining:  # a second signal: now
            self.should_exit = self.force_exit = True
            return
        self._draining = True
        self.state.drain()
        self.drain_thread = threading.Thread(target=self._drain, name="sdrt-drain", daemon=True)
        self.drain_thread.start()

    def _drain(self) -> None:
        grace = self.state.config.grace
        log.info("draining: waiting up to %g s for queued and in-flight generations", grace)
        self.state.finish(grace)
        # uvicorn stops only now: its own graceful shutdown waits for open connections, not
        # for jobs on the workers (a client gone, a response streamed)
        self.should_exit = True


def serve(
    config: ServeConfig, state: ServiceState | None = None, sock: socket.socket | None = None
) -> int:
    """Serve until SIGTERM on ``sock`` (bound by sdrt/service/listen.py) or else on
    config.host/port; 0 after a drain, 2 if the model failed to load."""
    _log_to_stderr()
    state = state or ServiceState(config)
    server = DrainingServer(
        uvicorn.Config(
            create_app(state),
            host=config.host,
            port=config.port,
            log_level="info",
            timeout_graceful_shutdown=max(1, int(config.grace)),
        ),
        state,
    )
    failed = []

    def on_failure(message: str) -> None:
        failed.append(message)
        server.should_exit = True

    state.on_failure = on_failure
    server.run(sockets=None if sock is None else [sock])
    return 2 if failed else 0


def _log_to_stderr() -> None:
    """The service's own lines (ready, draining) on stderr beside uvicorn's."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     sdrt: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
