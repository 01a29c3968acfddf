"""One-off measurements, each run in its own process and answered as one JSON line.

    python -m sdrt.benchmarks.jobs flops MODEL_DIR BATCH HEIGHT WIDTH CACHE_DIR
    python -m sdrt.benchmarks.jobs peak N THREADS
    python -m sdrt.benchmarks.jobs schedulers STEPS THREADS

Keeping them out of the harness process keeps torch and BLAS thread pools out of it, and
out of the contenders' processes, whose memory and timings they would otherwise colour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sdrt.benchmarks.worker_process import thread_environment


class JobFailed(Exception):
    pass


def run_job(args: list[str], threads: int) -> Any:
    """Run ``jobs.py`` with ``args`` in a fresh interpreter; returns its JSON answer."""
    completed = subprocess.run(
        [sys.executable, "-m", "sdrt.benchmarks.jobs", *args],
        capture_output=True,
        text=True,
        env=thread_environment(threads),
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = " | ".join(completed.stderr.strip().splitlines()[-3:]) or "no output"
        raise JobFailed(f"{args[0]} exited with code {completed.returncode}: {tail}")
    return json.loads(lines[-1])


def _schedulers(steps: int, threads: int) -> Any:
    from sdrt.benchmarks import scheduler_bench

    return scheduler_bench.scheduler_rows(num_inference_steps=steps, threads=threads)


def main(argv: list[str]) -> int:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints go to stderr
    job, args = argv[0], argv[1:]
    if job == "flops":
        from sdrt.benchmarks.roofline import stored_unet_flops

        model_dir, batch, height, width, cache_dir = args
        answer = stored_unet_flops(
            Path(model_dir), int(batch), int(height), int(width), Path(cache_dir)
        )
    elif job == "peak":
        from sdrt.benchmarks.roofline import measure_peak_matmul

        answer = measure_peak_matmul(int(args[0]), int(args[1]))
    elif job == "schedulers":
        answer = _schedulers(int(args[0]), int(args[1]))
    else:
        print(f"unknown job {job!r}", file=sys.stderr)
        return 2
    out.write(json.dumps(answer) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
