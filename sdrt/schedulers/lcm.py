"""Latent consistency model sampling (Luo et al., 2023), as diffusers' LCMScheduler.

Each step maps the sample straight to a consistency estimate of x0 ("denoised"), then,
except at the last step, re-noises it to the next timestep with noise the caller draws.
The timesteps are a subset of the `original_inference_steps` the model was distilled on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdrt.errors import InputError, ParameterError
from sdrt.schedulers.base import AlphaBarScheduler, NoHistory, StepResult, clip_predicted_original
from sdrt.schedulers.config import NoiseScheduleConfig, check_original_inference_steps
from sdrt.schedulers.schedule import Plan, consistency_timesteps, full_plan

SIGMA_DATA = 0.5  # of the consistency-model boundary condition


@dataclass(frozen=True, kw_only=True)
class LCMConfig(NoiseScheduleConfig):
    rescale_betas_zero_snr: bool = False
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    original_inference_steps: int = 50
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    thresholding: bool = False
    timestep_scaling: float = 10.0

    def unsupported_values(self):
        return {"thresholding": (False,)}

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        check_original_inference_steps(self, scheduler)


class LCMScheduler(AlphaBarScheduler):
    name = "LCMScheduler"
    Config = LCMConfig
    needs_noise = True

    def max_inference_steps(self) -> int:
        return self.config.original_inference_steps

    def full_schedule(self, num_inference_steps: int) -> Plan:
        return full_plan(self._timesteps(num_inference_steps, 1.0), num_inference_steps)

    def consistency_img2img_plan(self, num_inference_steps: int, strength: float) -> Plan:
        """The plan of diffusers' LatentConsistencyModelImg2ImgPipeline, which passes
        ``strength`` to LCMScheduler.set_timesteps: it shortens the distillation grid to its
        first ``original_inference_steps * strength`` timesteps and all
        ``num_inference_steps`` steps run on that, where plan(steps, strength) (the
        StableDiffusionImg2ImgPipeline way) drops the first steps of the full schedule."""
        self.plan(num_inference_steps)  # the common checks of the steps
        if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)):
            raise InputError(f"strength must be a number in (0, 1]; got {type(strength).__name__}")
        if not 0.0 < strength <= 1.0:
            raise InputError(f"strength must be in (0, 1]; got {strength}")
        grid = int(self.config.original_inference_steps * strength)
        if grid < num_inference_steps:
            raise ParameterError(
                f"{self.name}: {{num_inference_steps}} must be at most original_inference_steps "
                f"* {{strength}} = {self.config.original_inference_steps} * {strength} = {grid} "
                f"for LCM img2img; got {num_inference_steps}"
            )
        return full_plan(self._timesteps(num_inference_steps, strength), num_inference_steps)

    def _timesteps(self, num_inference_steps: int, strength: float) -> np.ndarray:
        cfg = self.config
        return consistency_timesteps(
            cfg.num_train_timesteps, cfg.original_inference_steps, num_inference_steps, strength
        )

    def boundary_scalings(self, timestep: int) -> tuple[float, float]:
        """c_skip, c_out: make the estimate equal the sample at timestep 0."""
        scaled = timestep * self.config.timestep_scaling
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
        return c_skip, c_out

    def noise_needed(self, plan: Plan, index: int) -> bool:
        return index != plan.num_inference_steps - 1  # the last step returns the estimate

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        last = index == plan.num_inference_steps - 1
        cfg = self.config
        timestep = int(plan.schedule_timesteps[index])
        if index + 1 < len(plan.schedule_timesteps):
            prev_timestep = int(plan.schedule_timesteps[index + 1])
        else:
            prev_timestep = timestep
        alpha_prod_t = self.alpha_bar(timestep)
        alpha_prod_t_prev = self.alpha_bar(prev_timestep, self.final_alpha_cumprod())

        pred_original = self.predicted_original(model_output, sample, alpha_prod_t)
        pred_original = clip_predicted_original(cfg, pred_original)
        c_skip, c_out = self.boundary_scalings(timestep)
        denoised = c_out * pred_original + c_skip * sample

        if last:
            prev_sample = denoised
        else:
            prev_sample = alpha_prod_t_prev**0.5 * denoised + (1 - alpha_prod_t_prev) ** 0.5 * noise
        return StepResult(prev_sample=prev_sample, state=NoHistory(), denoised=denoised)
