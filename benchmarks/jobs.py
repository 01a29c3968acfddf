"""The measurements besides the contenders, run together in one process of their own.

    python -m sdrt.benchmarks.jobs '{"flops": {...}, "peak": {...}, "schedulers": {...}}'

answers one JSON line with a result (or a failure and its error) per measurement: the
U-Net's FLOPs per call at each size, the machine's peak matmul rate, and the scheduler
micro-benchmark. Their own process keeps torch and BLAS thread pools out of the harness and
out of the contenders' processes, whose memory and timings they would otherwise colour;
one process for all of them pays for importing torch once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from sdrt.benchmarks.worker_process import thread_environment


class JobFailed(Exception):
    pass


def run_jobs(spec: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run the measurements of ``spec`` in a fresh interpreter; returns its answer."""
    completed = subprocess.run(
        [sys.executable, "-m", "sdrt.benchmarks.jobs", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=thread_environment(threads),
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = " | ".join(completed.stderr.strip().splitlines()[-3:]) or "no output"
        raise JobFailed(f"measurements exited with code {completed.returncode}: {tail}")
    return json.loads(lines[-1])


def _flops(spec: dict[str, Any]) -> dict[str, Any]:
    from sdrt.benchmarks.roofline import stored_unet_flops

    by_size, method = {}, None
    for size in spec["sizes"]:
        counted = stored_unet_flops(
            Path(spec["model_dir"]),
            spec["batch"],
            size["height"],
            size["width"],
            Path(spec["cache_dir"]),
        )
        by_size[size["label"]] = counted["flops"]
        method = counted["method"]
    return {"by_size": by_size, "method": method}


def _peak(spec: dict[str, Any]) -> dict[str, Any]:
    from sdrt.benchmarks.roofline import measure_peak_matmul

    return measure_peak_matmul(spec["n"], spec["threads"])


def _schedulers(spec: dict[str, Any]) -> dict[str, Any]:
    from sdrt.benchmarks.scheduler_bench import run_scheduler_bench

    return {"rows": run_scheduler_bench(**{**spec, "shape": tuple(spec["shape"])})}


JOBS = {"flops": _flops, "peak": _peak, "schedulers": _schedulers}


def main(argv: list[str]) -> int:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints go to stderr
    spec = json.loads(argv[0])
    answer = {}
    for name, job_spec in spec.items():
        try:
            answer[name] = {"status": "ok", **JOBS[name](job_spec)}
        # Each measurement's failure is reported as data; the others still run.
        except Exception as error:
            traceback.print_exc()
            answer[name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    out.write(json.dumps(answer) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
