"""The OpenVINO peer: Optimum-Intel's diffusion pipeline (``OVStableDiffusionPipeline``,
``OVLatentConsistencyModelPipeline``, ``OVStableDiffusionXLPipeline``: the engine under
FastSD CPU) on the OpenVINO folder it exported itself from the same source.

The folder is made once, untimed, by ``optimum_intel_export.py`` (the harness caches it);
this worker loads it as FastSD CPU loads its OpenVINO models, compiling for the CPU. It runs
in Optimum-Intel's own virtualenv (``optimum_env.py``). Stages are timed by wrapping the
``forward`` of this pipeline's own OpenVINO parts (its diffusers ``__call__`` goes through
them). Run as ``python -m sdrt.benchmarks.contenders.optimum_intel MODEL_DIR THREADS``.
"""

from __future__ import annotations

import sys
from typing import Any

from sdrt.benchmarks.contenders.diffusers_pipeline import (
    pipeline_arguments,
    timed_on_current_clock,
    use_scheduler,
)
from sdrt.benchmarks.contenders.protocol import StageClock, Workload, serve, version_of

# Optimum-Intel's OpenVINO parts (attribute paths on its pipeline) -> benchmark stage
TIMED_PARTS = {
    ("text_encoder",): "text_encoder",
    ("text_encoder_2",): "text_encoder",
    ("unet",): "unet",
    ("vae", "decoder"): "vae_decode",
}

# As sdrt's openvino backend compiles (OpenVinoOptions' defaults): float32 inference, where
# OpenVINO's own default on a CPU with bf16 instructions is bf16; and the contender's
# threads (set at load), its share of the machine.
OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def _part(pipe: Any, path: tuple[str, ...]) -> Any:
    for attribute in path:
        pipe = getattr(pipe, attribute, None)
    return pipe


class OptimumIntel:
    name = "optimum-intel"
    runtime_distributions = ("optimum-intel", "openvino", "diffusers", "torch")
    runtime_source_dirs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.pipe: Any = None
        self.clock: StageClock | None = None
        self.threads = 0
        self.export: dict[str, Any] = {}

    def import_runtime(self) -> None:
        from optimum.intel import OVDiffusionPipeline  # noqa: F401

    def load(self, model_dir: str, threads: int) -> None:
        import json
        from pathlib import Path

        import torch
        from optimum.intel import OVDiffusionPipeline
        from sdrt.benchmarks.contenders.optimum_intel_export import RECORD

        torch.set_num_threads(threads)
        self.threads = threads
        record = Path(model_dir) / RECORD
        self.export = json.loads(record.read_text()) if record.is_file() else {}
        self.pipe = OVDiffusionPipeline.from_pretrained(
            model_dir, device="CPU", ov_config=OV_CONFIG | {"INFERENCE_NUM_THREADS": str(threads)}
        )
        self.pipe.set_progress_bar_config(disable=True)
        for path, stage in TIMED_PARTS.items():
            part = _part(self.pipe, path)
            if part is not None:
                # An instance attribute: only this pipeline's part is wrapped.
                part.forward = timed_on_current_clock(self, stage, part.forward)

    def load_settings(self) -> dict[str, Any]:
        return {
            "device": "CPU",
            "compiled": "at load (OpenVINO IR exported before, untimed)",
            "ov_config": OV_CONFIG,
        }

    def generate(self, workload: Workload, latents: Any, clock: StageClock) -> Any:
        use_scheduler(self.pipe, workload.scheduler)
        self.clock = clock
        arguments = pipeline_arguments(workload, latents)
        result = self.pipe(**arguments).images
        self.clock = None
        return result

    def settings(self, workload: Workload) -> dict[str, Any]:
        return {
            "scheduler": type(self.pipe.scheduler).__name__,
            "pipeline": type(self.pipe).__name__,
            "device": "CPU",
            "threads": self.threads,
            "export": self.export,
        }

    def versions(self) -> dict[str, str]:
        names = ("optimum-intel", "optimum", "openvino", "nncf", "diffusers", "torch")
        return {name: version_of(name) for name in names}


if __name__ == "__main__":
    sys.exit(serve(OptimumIntel(), sys.argv[1:]))
