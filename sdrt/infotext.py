"""Generation settings as text, in the AUTOMATIC1111 web UI's "parameters" convention.

    a red fox in snow
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 0, Size: 512x512, Model hash: 1a2b3c4d5e, Model: sd15, Version: sdrt 0.1.0

The prompt lines come first as given, then ``Negative prompt: ...`` (only when there is
one), then one line of ``Key: value`` pairs joined by ", "; a value holding ",", ":" or a
newline is written as a JSON string, as A1111's ``quote`` does. ``Model hash`` is the
first 10 hex digits of the U-Net graph's sha256 (A1111 uses the checkpoint file's);
``Sampler`` is A1111's name for the scheduler where one exists (e.g. "DPM++ 2M Karras"),
else the diffusers class name. Tools that read A1111 images (PNG Info, civitai, image
browsers) show these; the seed is sdrt's (numpy noise), so it reproduces the image in
sdrt, not in A1111.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# diffusers class name -> A1111 sampler name (" Karras" is added for Karras sigmas)
A1111_SAMPLERS = {
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "HeunDiscreteScheduler": "Heun",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
    "DDPMScheduler": "DDPM",
    "TCDScheduler": "TCD",
}


def sampler_name(scheduler) -> str:
    """A1111's name for an sdrt scheduler object (its class name and config)."""
    config = scheduler.config
    if scheduler.name == "DPMSolverMultistepScheduler":
        dpmpp_2m = (
            getattr(config, "algorithm_type", None) == "dpmsolver++"
            and getattr(config, "solver_order", None) == 2
        )
        base = "DPM++ 2M" if dpmpp_2m else scheduler.name
    else:
        base = A1111_SAMPLERS.get(scheduler.name, scheduler.name)
    return f"{base} Karras" if getattr(config, "use_karras_sigmas", False) else base


def quote(value) -> str:
    """A value as A1111 writes it: as is, or as a JSON string if it holds , : or a newline."""
    text = str(value)
    if not any(c in text for c in ",:\n"):
        return text
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class GenerationParameters:
    """The settings that made one image."""

    prompt: str
    negative_prompt: str  # "" for none
    steps: int
    sampler: str
    cfg_scale: float
    seed: int
    width: int
    height: int
    model_hash: str | None = None
    model: str | None = None
    denoising_strength: float | None = None  # img2img and inpainting only
    batch_size: int = 1
    batch_pos: int = 0
    version: str | None = None
    deep_cache: str | None = None  # "interval N, branch B" where DeepCache ran
    eta: float | None = None  # where the scheduler takes eta (DDIM, TCD) and it is not 0

    @classmethod
    def of_request(
        cls,
        request,
        *,
        pipeline_folder,
        manifest,
        scheduler,
        prompt: str,
        negative_prompt: str | None,
        seed: int,
        from_image: bool,
        batch_size: int,
        batch_pos: int,
    ) -> GenerationParameters:
        """The settings of one image of a checked Request, as `sdrt generate` and `sdrt
        serve` record them: the model is named by its folder and its U-Net's hash."""
        from pathlib import Path

        from sdrt import __version__

        unet = manifest.components.get("unet")
        return cls(
            prompt=prompt,
            negative_prompt=negative_prompt or "",
            steps=request.num_inference_steps,
            sampler=sampler_name(scheduler),
            cfg_scale=request.guidance_scale,
            seed=seed,
            width=request.width,
            height=request.height,
            model_hash=None if unet is None else unet.sha256[:10],
            model=Path(pipeline_folder).resolve().name,
            denoising_strength=request.strength if from_image else None,
            batch_size=batch_size,
            batch_pos=batch_pos,
            version=f"sdrt {__version__}",
            deep_cache=(
                None
                if getattr(request, "deep_cache", None) is None
                else f"interval {request.deep_cache.interval}, "
                f"branch {request.deep_cache.branch.branch}"
            ),
            eta=(request.eta if scheduler.takes_eta and request.eta != 0.0 else None),
        )

    def text(self) -> str:
        fields = {
            "Steps": self.steps,
            "Sampler": self.sampler,
            "CFG scale": f"{self.cfg_scale:g}",
            "Seed": self.seed,
            "Size": f"{self.width}x{self.height}",
            "Model hash": self.model_hash,
            # A1111 drops "," and ":" from model names rather than quoting them
            "Model": None if self.model is None else self.model.replace(",", "").replace(":", ""),
            "Batch size": self.batch_size if self.batch_size > 1 else None,
            "Batch pos": self.batch_pos if self.batch_size > 1 else None,
            "Denoising strength": (
                None if self.denoising_strength is None else f"{self.denoising_strength:g}"
            ),
            "Version": self.version,
            "DeepCache": self.deep_cache,
            "Eta": None if self.eta is None else f"{self.eta:g}",
        }
        line = ", ".join(f"{k}: {quote(v)}" for k, v in fields.items() if v is not None)
        negative = f"\nNegative prompt: {self.negative_prompt}" if self.negative_prompt else ""
        return f"{self.prompt}{negative}\n{line}"
