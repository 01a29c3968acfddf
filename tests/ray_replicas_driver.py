"""Run by tests/test_serve_ray.py inside a private network namespace (only loopback):
`sdrt serve FOLDER --replicas 2` on Ray Serve, bounded traffic to it, then SIGTERM.

    python tests/ray_replicas_driver.py FOLDER RESULT.json

Writes what it saw as JSON for the test to judge: which replica answered each request,
whether each image equals the local Pipeline's for the same seed, a bad request's answer,
/metrics, and the exit status after SIGTERM. Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import HOST, call, decode_png, free_port, generate  # noqa: E402

REQUESTS = 12
CONCURRENCY = 4
READY_TIMEOUT = 180.0  # s: Ray's start and two replicas' load + warm-up on 2 busy cores
DRAIN_DELAY = 1.0  # s after SIGTERM: every replica has seen the drain signal by then
# 100 steps at 256x256: 4 s on a quiet machine, over a minute on a loaded one.
LONG = {"size": "256x256", "num_inference_steps": 100, "scheduler": "euler"}
LONG_TIMEOUT = 150.0  # s
SETTINGS = {"size": "64x64", "num_inference_steps": 4, "scheduler": "euler"}


def _ready(port) -> bool:
    try:
        return call(port, "GET", "/readyz", timeout=5).status == 200
    except OSError:
        return False


def _wait_ready(process, port) -> float:
    began = time.monotonic()
    while time.monotonic() - began < READY_TIMEOUT:
        if process.poll() is not None:
            raise SystemExit(f"sdrt serve exited with {process.returncode} before it was ready")
        if _ready(port):
            return time.monotonic() - began
        time.sleep(0.5)
    raise SystemExit(f"sdrt serve --replicas 2 was not ready within {READY_TIMEOUT} s")


def _start(folder: str, log) -> tuple[subprocess.Popen, int]:
    """`sdrt serve FOLDER --replicas 2`, its output to ``log`` (Ray's is too long for a pipe
    nobody reads while it runs)."""
    port = free_port()
    command = [sys.executable, "-m", "sdrt", "serve", folder, "--host", HOST, "--port", str(port)]
    command += ["--replicas", "2", "--max-queue", "4", "--grace", "150"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), port


def _stream_long_generation(port, in_flight: threading.Event, outcome: dict) -> None:
    """A long streamed generation: ``in_flight`` is set at its first progress event; the
    last event's name and when it came go to ``outcome``."""
    body = {"prompt": "drain", "stream": True, **LONG}
    connection = http.client.HTTPConnection(HOST, port, timeout=LONG_TIMEOUT)
    try:
        connection.request(
            "POST", "/v1/images/generations", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        outcome["status"] = response.status
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("event: "):
                outcome["last_event"] = line[len("event: ") :]
                outcome["last_event_at"] = time.monotonic()
                if outcome["last_event"] == "image_generation.progress":
                    in_flight.set()
    except OSError as error:
        outcome["error"] = repr(error)
    finally:
        connection.close()
        in_flight.set()


def _sigterm_during_a_long_request(process, port) -> dict:
    """SIGTERM once a long streamed generation has started: what /readyz and a new request
    get meanwhile, and how the generation ends."""
    in_flight, outcome = threading.Event(), {}
    thread = threading.Thread(target=_stream_long_generation, args=(port, in_flight, outcome))
    thread.start()
    in_flight.wait(LONG_TIMEOUT)
    process.send_signal(signal.SIGTERM)
    sigterm = time.monotonic()
    time.sleep(DRAIN_DELAY)  # the replicas poll the drain signal every 0.25 s
    ready = call(port, "GET", "/readyz").status
    late = generate(port, {"prompt": "late", **SETTINGS})
    thread.join(LONG_TIMEOUT)
    return {
        "status": outcome.get("status"),
        "last_event": outcome.get("last_event"),
        "error": outcome.get("error"),
        "ended_after_sigterm_s": outcome.get("last_event_at", 0) - sigterm,
        "readyz_while_draining": ready,
        "late_request": {"status": late.status, "body": late.json()},
    }


def main(folder: str, result_file: str) -> None:
    import sdrt

    log_file = Path(result_file).with_suffix(".log")
    log = log_file.open("wb")
    process, port = _start(folder, log)
    result: dict = {}
    try:
        result["ready_seconds"] = _wait_ready(process, port)
        seeds = list(range(300, 300 + REQUESTS))

        def ask(seed):
            return generate(port, {"prompt": f"fox {seed}", "seed": seed, **SETTINGS}, timeout=120)

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            replies = list(pool.map(ask, seeds))
        pipe = sdrt.Pipeline.load(folder)
        answers = []
        for seed, reply in zip(seeds, replies, strict=True):
            answer = {
                "seed": seed,
                "status": reply.status,
                "replica": reply.headers.get("x-sdrt-replica"),
            }
            if reply.status == 200:
                want = np.asarray(
                    pipe(
                        f"fox {seed}",
                        seed=seed,
                        height=64,
                        width=64,
                        num_inference_steps=4,
                        scheduler="euler",
                    ).images[0]
                )
                got = decode_png(reply.json()["data"][0]["b64_json"])
                answer["max_abs_diff"] = int(np.abs(got.astype(int) - want.astype(int)).max())
            answers.append(answer)
        result["answers"] = answers
        bad = generate(port, {"prompt": "x", "size": "65x64"})
        result["bad_request"] = {"status": bad.status, "body": bad.json()}
        result["metrics"] = call(port, "GET", "/metrics").body.decode()
        result["drain"] = _sigterm_during_a_long_request(process, port)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            result["exit_status"] = process.wait(timeout=90)
        except Exception:
            process.kill()
            result["exit_status"] = "killed after 90 s"
        log.close()
        result["log_tail"] = log_file.read_text(errors="replace")[-3000:]
        Path(result_file).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
