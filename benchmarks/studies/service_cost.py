"""What `sdrt serve` costs over a direct Pipeline call, and how soon a new server is useful.

    python -m sdrt.benchmarks.studies.service_cost FOLDER [--size 256] [--steps 4] [--pairs 5]

Starts `sdrt serve FOLDER` on a free 127.0.0.1 port, once with its warm-up and once without
(`--no-warmup`), and for each measures process start -> /readyz 200 and process start -> the
first image returned (the cold start a replica pays before it is useful), with the load and
warm-up seconds the server reports in /metrics. Then, against the warmed server, it times
served generations and direct `Pipeline.__call__` in this process alternately (served,
direct, served, ...; one runs at a time), with the same settings and seeds, checks that each
served PNG has the direct image's pixels, and prints the medians and the service's share:
(served - direct) / direct, which covers HTTP, queueing, PNG encoding and base64. JSON lines.

``--drop-caches`` (root, Linux) empties the kernel's page cache before each server starts, so
the cold start pays for reading the weights from disk, as a new replica on a fresh machine
would; without it the weights are likely still cached from an earlier run.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
READY_TIMEOUT_S = 600.0
POLL_S = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


def _generate(port: int, body: dict) -> tuple[float, bytes]:
    """Seconds for one generation, and its first PNG."""
    connection = http.client.HTTPConnection(HOST, port, timeout=READY_TIMEOUT_S)
    start = time.perf_counter()
    try:
        connection.request(
            "POST",
            "/v1/images/generations",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    seconds = time.perf_counter() - start
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {data[:300]!r}")
    return seconds, base64.b64decode(json.loads(data)["data"][0]["b64_json"])


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class Server:
    """`sdrt serve FOLDER` as a child process on a free loopback port."""

    def __init__(self, folder: Path, threads: int, warmup: bool):
        self.port = free_port()
        command = [sys.executable, "-m", "sdrt", "serve", str(folder), "--host", HOST]
        command += ["--port", str(self.port)] + ([] if warmup else ["--no-warmup"])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def wait_ready(self) -> float:
        """Seconds from process start to /readyz 200."""
        while time.perf_counter() - self.started < READY_TIMEOUT_S:
            if self.process.poll() is not None:
                raise RuntimeError(f"sdrt serve exited: {self.process.stderr.read()[-2000:]!r}")
            if _get(self.port, "/readyz")[0] == 200:
                return time.perf_counter() - self.started
            time.sleep(POLL_S)
        raise RuntimeError(f"sdrt serve was not ready within {READY_TIMEOUT_S:g} s")

    def metrics(self) -> str:
        return _get(self.port, "/metrics")[1].decode()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def body(size: int, steps: int, seed: int) -> dict:
    return {
        "prompt": f"a lighthouse on a cliff at dusk, study {seed}",
        "size": f"{size}x{size}",
        "num_inference_steps": steps,
        "guidance_scale": 7.5,
        "scheduler": "euler",
        "seed": seed,
    }


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (needs root)."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as error:
        message = f"--drop-caches: cannot write {DROP_CACHES} ({error.strerror}); run as root"
        raise SystemExit(message) from None


def cold_start(
    folder: Path, size: int, steps: int, threads: int, warmup: bool, drop_caches: bool = False
) -> dict:
    if drop_caches:
        drop_page_cache()
    server = Server(folder, threads, warmup)
    try:
        ready = server.wait_ready()
        first, _ = _generate(server.port, body(size, steps, 0))
        metrics = server.metrics()
    finally:
        server.stop()
    return {
        "measure": "cold start",
        "warmup": warmup,
        "page_cache_dropped": drop_caches,
        "process_start_to_ready_s": round(ready, 3),
        "first_request_s": round(first, 3),
        "process_start_to_first_image_s": round(ready + first, 3),
        "load_s": _metric(metrics, "sdrt_load_seconds"),
        "warmup_s": _metric(metrics, "sdrt_warmup_seconds") if warmup else None,
    }


def overhead(folder: Path, size: int, steps: int, pairs: int, threads: int) -> dict:
    from PIL import Image

    from sdrt.pipeline import Pipeline

    pipe = Pipeline.load(folder)
    server = Server(folder, threads, warmup=True)
    served, direct, max_diff = [], [], 0
    try:
        server.wait_ready()
        for seed in range(pairs + 1):  # pair 0 warms both up and is not counted
            request = body(size, steps, 100 + seed)
            seconds, png = _generate(server.port, request)
            start = time.perf_counter()
            image = pipe(
                request["prompt"],
                num_inference_steps=steps,
                guidance_scale=request["guidance_scale"],
                height=size,
                width=size,
                scheduler=request["scheduler"],
                seed=request["seed"],
                output_type="np",
            ).images[0]
            direct_seconds = time.perf_counter() - start
            got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
            want = np.round(np.clip(image, 0, 1) * 255).astype(np.int16)
            max_diff = max(max_diff, int(np.abs(got - want).max()))
            if seed:
                served.append(seconds)
                direct.append(direct_seconds)
    finally:
        server.stop()
    served_s, direct_s = statistics.median(served), statistics.median(direct)
    return {
        "measure": "service overhead",
        "pairs": pairs,
        "served_median_s": round(served_s, 3),
        "direct_median_s": round(direct_s, 3),
        "overhead_fraction": round((served_s - direct_s) / direct_s, 4),
        "served_vs_direct_max_pixel_diff": max_diff,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an `sdrt build` folder")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=5, help="served/direct pairs timed")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="empty the page cache before each cold start (root): weights read from disk",
    )
    parser.add_argument(
        "--no-overhead", action="store_true", help="cold starts only (no served/direct pairs)"
    )
    args = parser.parse_args(argv)
    common = {"size": args.size, "steps": args.steps, "load_average": os.getloadavg()[0]}
    for warmup in (True, False):
        row = cold_start(args.folder, args.size, args.steps, args.threads, warmup, args.drop_caches)
        print(json.dumps({**row, **common}), flush=True)
    if args.no_overhead:
        return
    row = overhead(args.folder, args.size, args.steps, args.pairs, args.threads)
    print(json.dumps({**row, **common}), flush=True)


if __name__ == "__main__":
    main()
