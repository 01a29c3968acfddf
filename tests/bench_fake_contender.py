"""A contender for the harness's own tests: no model, records each request in a log file.

Run as a script: ``python bench_fake_contender.py MODEL_DIR THREADS NAME LOG [FAIL_AT]
[--no-saved-graphs]``; with FAIL_AT it raises on that request (counted from 1), as a broken
runtime would; with the flag it logs its load as one without saved graphs. With
``SDRT_FAKE_STAGE_S`` and ``SDRT_FAKE_OTHER_S`` in its environment each request sleeps that
long in each model stage and outside them (the work a pipeline does between its models).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np
from sdrt.benchmarks.contenders.protocol import StageClock, Workload, serve


class FakeContender:
    runtime_distributions = ("numpy",)
    runtime_source_dirs: tuple[str, ...] = ()

    def __init__(self, name: str, log: str, fail_at: int | None, saved_graphs: bool):
        self.name, self.log, self.fail_at = name, log, fail_at
        self.saved_graphs = saved_graphs
        self.requests = 0

    def import_runtime(self) -> None:
        pass

    def load(self, model_dir: str, threads: int) -> None:
        if not self.saved_graphs:
            with open(self.log, "a") as log:
                log.write(f"{self.name} load without saved graphs\n")

    def load_settings(self) -> dict[str, Any]:
        return {"saved_graphs": self.saved_graphs}

    def generate(self, workload: Workload, latents: Any, clock: StageClock) -> Any:
        self.requests += 1
        if self.requests == self.fail_at:
            raise RuntimeError(f"{self.name} broke on request {self.requests}")
        with open(self.log, "a") as log:
            log.write(f"{self.name} {workload.width}x{workload.height}\n")
        stage_s = float(os.environ.get("SDRT_FAKE_STAGE_S", "0"))
        time.sleep(float(os.environ.get("SDRT_FAKE_OTHER_S", "0")))
        for stage in ("text_encoder", "unet", "unet", "vae_decode"):
            with clock.measure(stage):
                time.sleep(stage_s)
        return np.zeros((1, workload.height, workload.width, 3), dtype=np.float32)

    def settings(self, workload: Workload) -> dict[str, Any]:
        return {"scheduler": workload.scheduler}

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__}


if __name__ == "__main__":
    words = sys.argv[3:]
    saved_graphs = "--no-saved-graphs" not in words
    name, log, *fail_at = [word for word in words if word != "--no-saved-graphs"]
    contender = FakeContender(name, log, int(fail_at[0]) if fail_at else None, saved_graphs)
    sys.exit(serve(contender, sys.argv[1:3]))
