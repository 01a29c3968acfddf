"""The baseline: diffusers' own pipeline, eager PyTorch, in inference mode, on the CPU.

Stages are timed with forward hooks on this pipeline's own modules (text encoder(s), U-Net)
and a wrapper around this pipeline's ``vae.decode``; nothing global is patched.
Run as ``python -m sdrt.benchmarks.contenders.torch_diffusers MODEL_DIR THREADS``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from sdrt.benchmarks.contenders.protocol import StageClock, Workload, serve, version_of


class TorchDiffusers:
    name = "torch"
    runtime_distributions = ("torch", "diffusers", "transformers")
    runtime_source_dirs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.pipe: Any = None
        self.clock: StageClock | None = None
        self.threads = 0

    def import_runtime(self) -> None:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401

    def load(self, model_dir: str, threads: int) -> None:
        import torch
        from diffusers import DiffusionPipeline

        torch.set_num_threads(threads)
        self.threads = threads
        self.pipe = DiffusionPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
        self.pipe.set_progress_bar_config(disable=True)
        for attribute in ("text_encoder", "text_encoder_2"):
            module = getattr(self.pipe, attribute, None)
            if module is not None:
                self._time_module(module, "text_encoder")
        self._time_module(self.pipe.unet, "unet")
        self.pipe.vae.decode = self._timed_method(self.pipe.vae.decode, "vae_decode")

    def _time_module(self, module: Any, stage: str) -> None:
        """Forward hooks on this module instance: start before, record after."""
        starts: list[float] = []

        def before(*_: Any) -> None:
            starts.append(time.perf_counter())

        def after(*_: Any) -> None:
            if self.clock is not None:
                self.clock.durations.setdefault(stage, []).append(
                    time.perf_counter() - starts.pop()
                )

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def _timed_method(self, method: Any, stage: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if self.clock is not None:
                    self.clock.durations.setdefault(stage, []).append(time.perf_counter() - start)

        return timed

    def _use_scheduler(self, name: str) -> None:
        import diffusers

        if type(self.pipe.scheduler).__name__ != name:
            scheduler_class = getattr(diffusers, name)
            self.pipe.scheduler = scheduler_class.from_config(self.pipe.scheduler.config)

    def generate(self, workload: Workload, latents: Any, clock: StageClock) -> Any:
        import torch

        self._use_scheduler(workload.scheduler)
        self.clock = clock
        prompts = list(workload.prompts)
        with torch.inference_mode():
            result = self.pipe(
                prompt=prompts,
                negative_prompt=[workload.negative_prompt] * len(prompts),
                num_inference_steps=workload.steps,
                guidance_scale=workload.guidance,
                height=workload.height,
                width=workload.width,
                latents=torch.from_numpy(latents),
                generator=torch.Generator().manual_seed(0),
                output_type="np",
            )
        self.clock = None
        return result.images

    def settings(self, workload: Workload) -> dict[str, Any]:
        import torch

        return {
            "scheduler": type(self.pipe.scheduler).__name__,
            "pipeline": type(self.pipe).__name__,
            "dtype": str(self.pipe.unet.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "inference_mode": True,
        }

    def versions(self) -> dict[str, str]:
        return {name: version_of(name) for name in ("torch", "diffusers", "transformers")}


if __name__ == "__main__":
    sys.exit(serve(TorchDiffusers(), sys.argv[1:]))
