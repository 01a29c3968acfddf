"""The baseline: diffusers' own pipeline, eager PyTorch, in inference mode, on the CPU.

Stages are timed with forward hooks on this pipeline's own modules (text encoder(s), U-Net)
and a wrapper around this pipeline's ``vae.decode``; nothing global is patched.
Run as ``python -m sdrt.benchmarks.contenders.torch_diffusers MODEL_DIR THREADS
[--tiny-vae FOLDER]``; with the flag the pipeline decodes with that diffusers
``AutoencoderTiny`` (TAESD) in place of its VAE, as diffusers' docs put one in, so that it
runs the recipe of the tinyvae contenders.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from sdrt.benchmarks.contenders.diffusers_pipeline import (
    pipeline_arguments,
    timed_on_current_clock,
    use_scheduler,
)
from sdrt.benchmarks.contenders.protocol import StageClock, Workload, serve, version_of

TINY_VAE = "--tiny-vae"


class TorchDiffusers:
    name = "torch"
    runtime_distributions = ("torch", "diffusers", "transformers")
    runtime_source_dirs: tuple[str, ...] = ()

    def __init__(self, tiny_vae: str | None = None) -> None:
        self.pipe: Any = None
        self.clock: StageClock | None = None
        self.threads = 0
        self.tiny_vae = tiny_vae  # an AutoencoderTiny folder to decode with; None: the VAE

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
        if self.tiny_vae is not None:
            from diffusers import AutoencoderTiny

            self.pipe.vae = AutoencoderTiny.from_pretrained(
                self.tiny_vae, torch_dtype=torch.float32
            )
        for attribute in ("text_encoder", "text_encoder_2"):
            module = getattr(self.pipe, attribute, None)
            if module is not None:
                self._time_module(module, "text_encoder")
        self._time_module(self.pipe.unet, "unet")
        self.pipe.vae.decode = timed_on_current_clock(self, "vae_decode", self.pipe.vae.decode)

    def load_settings(self) -> dict[str, Any]:
        vae = {} if self.tiny_vae is None else {"vae": f"AutoencoderTiny: {self.tiny_vae}"}
        return {"dtype": "float32", "weights": "diffusers folder (safetensors)", **vae}

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

    def generate(self, workload: Workload, latents: Any, clock: StageClock) -> Any:
        import torch

        use_scheduler(self.pipe, workload.scheduler)
        self.clock = clock
        with torch.inference_mode():
            result = self.pipe(**pipeline_arguments(workload, latents))
        self.clock = None
        return result.images

    def settings(self, workload: Workload) -> dict[str, Any]:
        import torch

        return {
            "scheduler": type(self.pipe.scheduler).__name__,
            "pipeline": type(self.pipe).__name__,
            "dtype": str(self.pipe.unet.dtype).removeprefix("torch."),
            "vae": type(self.pipe.vae).__name__,
            "threads": torch.get_num_threads(),
            "inference_mode": True,
        }

    def versions(self) -> dict[str, str]:
        return {name: version_of(name) for name in ("torch", "diffusers", "transformers")}


def _contender(flags: list[str]) -> TorchDiffusers:
    if not flags:
        return TorchDiffusers()
    if len(flags) == 2 and flags[0] == TINY_VAE:
        return TorchDiffusers(tiny_vae=flags[1])
    sys.exit(f"expected MODEL_DIR THREADS [{TINY_VAE} FOLDER], got {sys.argv[1:]}")


if __name__ == "__main__":
    sys.exit(serve(_contender(sys.argv[3:]), sys.argv[1:3]))
