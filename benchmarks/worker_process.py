"""The parent side of the worker protocol (``contenders/protocol.py``): one contender's process.

The process is started in the contender's own interpreter with the thread count fixed in its
environment; its stderr goes to a log file next to the report, and a failure anywhere
(start, load, a run) becomes a ``WorkerFailed`` carrying the worker's own error message.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.benchmarks.contenders import ContenderSpec

# Thread-count variables read by OpenMP, MKL and OpenBLAS when a library starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
LOG_TAIL_LINES = 5


class WorkerFailed(Exception):
    """A contender's process failed; ``stage`` is where (start, load, run)."""

    def __init__(self, stage: str, error: str):
        super().__init__(f"{stage}: {error}")
        self.stage = stage
        self.error = error


def thread_environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


@dataclass
class Ready:
    """What a worker reports once its model is loaded."""

    spawned_at: float  # wall clock just before the process was started
    ready_at: float  # wall clock when the worker was ready (its own clock, as first images)
    import_s: float
    load_s: float
    versions: dict[str, str]
    installed: dict[str, Any]
    load_settings: dict[str, Any]  # how it loaded (saved graphs used or not, ...)


class WorkerProcess:
    def __init__(self, spec: ContenderSpec, model_dir: Path, threads: int, log_path: Path):
        self.spec = spec
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w")  # noqa: SIM115 -- closed in close()
        self.spawned_at = time.time()
        self._process = subprocess.Popen(
            [*spec.command, str(model_dir), str(threads), *spec.extra_args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=thread_environment(threads),
        )
        self.first_image_at: float | None = None

    def _receive(self, stage: str) -> dict[str, Any]:
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            raise WorkerFailed(
                stage,
                f"process exited with code {self._process.returncode}: {self._log_tail()}",
            )
        message = json.loads(line)
        if message["event"] == "error":
            raise WorkerFailed(message.get("stage", stage), message["error"])
        return message

    def _log_tail(self) -> str:
        self._log.flush()
        lines = [line.strip() for line in self.log_path.read_text().splitlines() if line.strip()]
        return " | ".join(lines[-LOG_TAIL_LINES:]) or "no output"

    def wait_ready(self) -> Ready:
        message = self._receive("load")
        return Ready(
            spawned_at=self.spawned_at,
            ready_at=message["wall_time"],
            import_s=message["import_s"],
            load_s=message["load_s"],
            versions=message["versions"],
            installed=message["installed"],
            load_settings=message.get("load_settings", {}),
        )

    def run(self, workload: dict[str, Any], save_image: Path | None) -> dict[str, Any]:
        request = {
            "op": "run",
            "workload": workload,
            "save_image": str(save_image) if save_image else None,
        }
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            raise WorkerFailed("run", f"process is gone: {self._log_tail()}") from None
        message = self._receive("run")
        if self.first_image_at is None:
            self.first_image_at = message["wall_time"]
        return message

    def quit(self) -> int:
        """Ends the worker; returns its peak resident memory in bytes."""
        self._process.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self._process.stdin.flush()
        message = self._receive("quit")
        self.close()
        return int(message["peak_rss_bytes"])

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.close()
                self._process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._log.close()
