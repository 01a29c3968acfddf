"""The peer: Hugging Face Optimum's ``ORTStableDiffusionPipeline`` on the same built folder.

Optimum pins other versions of transformers and diffusers than sdrt's, so this worker runs
in its own virtualenv (``optimum_env.py`` sets it up). Stages are timed by wrapping the
``forward`` of this pipeline's own ONNX parts (Optimum's ``__call__`` goes through it).
Run as ``python -m sdrt.benchmarks.contenders.optimum_ort MODEL_DIR THREADS``.
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

# ONNX part attribute on Optimum's pipeline -> benchmark stage
TIMED_PARTS = {
    "text_encoder": "text_encoder",
    "text_encoder_2": "text_encoder",
    "unet": "unet",
    "vae_decoder": "vae_decode",
}


class OptimumORT:
    name = "optimum"
    runtime_distributions = ("optimum-onnx", "optimum", "onnxruntime", "diffusers", "torch")
    runtime_source_dirs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.pipe: Any = None
        self.clock = StageClock()
        self.threads = 0

    def import_runtime(self) -> None:
        from optimum.onnxruntime import ORTPipelineForText2Image  # noqa: F401

    def load(self, model_dir: str, threads: int) -> None:
        import onnxruntime as ort
        import torch
        from optimum.onnxruntime import ORTPipelineForText2Image

        torch.set_num_threads(threads)
        self.threads = threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.pipe = ORTPipelineForText2Image.from_pretrained(
            model_dir, provider="CPUExecutionProvider", session_options=options
        )
        self.pipe.set_progress_bar_config(disable=True)
        for attribute, stage in TIMED_PARTS.items():
            part = getattr(self.pipe, attribute, None)
            if part is not None:
                # An instance attribute: only this pipeline's part is wrapped.
                part.forward = timed_on_current_clock(self, stage, part.forward)

    def load_settings(self) -> dict[str, Any]:
        level = self.pipe.unet.session.get_session_options().graph_optimization_level
        name = str(level).rpartition(".")[2]  # GraphOptimizationLevel.ORT_ENABLE_ALL
        return {
            "graph_optimization": f"{name} in memory at every load (no saved graphs)",
            "provider": "CPUExecutionProvider",
        }

    def generate(self, workload: Workload, latents: Any, clock: StageClock) -> Any:
        use_scheduler(self.pipe, workload.scheduler)
        self.clock = clock
        return self.pipe(**pipeline_arguments(workload, latents)).images

    def settings(self, workload: Workload) -> dict[str, Any]:
        return {
            "scheduler": type(self.pipe.scheduler).__name__,
            "pipeline": type(self.pipe).__name__,
            "providers": self.pipe.unet.session.get_providers(),
            "threads": self.threads,
        }

    def versions(self) -> dict[str, str]:
        names = ("optimum", "optimum-onnx", "onnxruntime", "diffusers", "transformers", "torch")
        return {name: version_of(name) for name in names}


if __name__ == "__main__":
    sys.exit(serve(OptimumORT(), sys.argv[1:]))
