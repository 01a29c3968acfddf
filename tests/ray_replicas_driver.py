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

REPLICAS = 2
REQUESTS = 12  # at least, from CONCURRENCY clients; more rounds until both replicas answer
MAX_REQUESTS = 36
CONCURRENCY = 4
READY_TIMEOUT = 180.0  # s: Ray's start and two replicas' load + warm-up on 2 busy cores
DRAIN_DELAY = 1.0  # s after SIGTERM: every replica has seen the drain signal by then
# 100 steps at 256x256: 4 s on a quiet machine, over a minute on a loaded one.
LONG = {"size": "256x256", "num_inference_steps": 100, "scheduler": "euler"}
LONG_TIMEOUT = 150.0  # s
SETTINGS = {"size": "64x64", "num_inference_steps": 4, "scheduler": "euler"}


def _replica_of_readyz(port) -> str | None:
    try:
        reply = call(port, "GET", "/readyz", timeout=5)
    except OSError:
        return None
    return reply.headers.get("x-sdrt-replica") if reply.status == 200 else None


def _wait_ready(process, port) -> float:
    """Until /readyz through the proxy has been answered by both replicas: both are up and
    the proxy's router knows both (Serve can report a deployment running before the proxy
    has heard of its second replica; then every request goes to the first)."""
    began, seen = time.monotonic(), set()
    while time.monotonic() - began < READY_TIMEOUT:
        if process.poll() is not None:
            raise SystemExit(f"sdrt serve exited with {process.returncode} before it was ready")
        replica = _replica_of_readyz(port)
        if replica is not None:
            seen.add(replica)
            if len(seen) == REPLICAS:
                return time.monotonic() - began
        time.sleep(0.1)
    raise SystemExit(
        f"sdrt serve --replicas {REPLICAS}: {len(seen)} replicas ready within {READY_TIMEOUT} s"
    )


def _generate_until_both_answer(ask) -> list:
    """(seed, reply) of REQUESTS requests from CONCURRENCY clients, then more rounds of
    CONCURRENCY until both replicas have answered one (at most MAX_REQUESTS): on a loaded
    machine one replica can be quick enough to take a whole round."""
    seeds, sent = iter(range(300, 300 + MAX_REQUESTS)), []
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        while len(sent) < MAX_REQUESTS:
            round_seeds = [next(seeds) for _ in range(CONCURRENCY)]
            sent += zip(round_seeds, pool.map(ask, round_seeds), strict=True)
            replicas = {reply.headers.get("x-sdrt-replica") for _, reply in sent}
            if len(sent) >= REQUESTS and len(replicas - {None}) == REPLICAS:
                break
    return sent


def _start(folder: str, log) -> tuple[subprocess.Popen, int]:
    """`sdrt serve FOLDER --replicas 2`, its output to ``log`` (Ray's is too long for a pipe
    nobody reads while it runs)."""
    port = free_port()
    command = [sys.executable, "-m", "sdrt", "serve", folder, "--host", HOST, "--port", str(port)]
    command += ["--replicas", str(REPLICAS), "--max-queue", "4", "--grace", "150"]
    command += ["--expose-replica-id"]  # the test judges which replica answered
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

        def ask(seed):
            return generate(port, {"prompt": f"fox {seed}", "seed": seed, **SETTINGS}, timeout=120)

        sent = _generate_until_both_answer(ask)
        pipe = sdrt.Pipeline.load(folder)
        answers = []
        for seed, reply in sent:
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
