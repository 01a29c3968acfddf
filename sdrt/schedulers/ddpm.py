"""DDPM ancestral sampling (Ho et al., 2020), as diffusers' DDPMScheduler.

Every step but the last (timestep 0) adds fresh noise, which the caller draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdrt.schedulers.base import AlphaBarScheduler, NoHistory, StepResult, clip_predicted_original
from sdrt.schedulers.config import NoiseScheduleConfig
from sdrt.schedulers.schedule import Plan, full_plan, spaced_timesteps


@dataclass(frozen=True, kw_only=True)
class DDPMConfig(NoiseScheduleConfig):
    rescale_betas_zero_snr: bool = False
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    thresholding: bool = False

    @classmethod
    def normalized(cls, values):
        # diffusers treats variance_type=None (e.g. from a DPM-Solver config) as fixed_small.
        values = dict(values)
        if "variance_type" in values and values["variance_type"] is None:
            values["variance_type"] = "fixed_small"
        return values

    def unsupported_values(self):
        # "learned" variances need a U-Net with twice the channels; SD has none.
        return {
            "variance_type": ("fixed_small", "fixed_small_log", "fixed_large"),
            "thresholding": (False,),
        }


class DDPMScheduler(AlphaBarScheduler):
    name = "DDPMScheduler"
    Config = DDPMConfig
    needs_noise = True

    def full_schedule(self, num_inference_steps: int) -> Plan:
        timesteps = spaced_timesteps(self.config, num_inference_steps).round().astype(np.int64)
        return full_plan(timesteps, num_inference_steps)

    def noise_scale(self, alpha_prod_t: float, alpha_prod_t_prev: float) -> float:
        """Standard deviation of the noise added at this step, by variance_type."""
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        if self.config.variance_type == "fixed_large":
            return current_beta_t**0.5
        # posterior variance beta~_t (eq. 7 of the paper), clamped away from 0
        variance = max((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, 1e-20)
        return variance**0.5  # fixed_small and fixed_small_log agree up to rounding

    def noise_needed(self, plan: Plan, index: int) -> bool:
        return int(plan.schedule_timesteps[index]) > 0  # the step from timestep 0 adds none

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        timestep = int(plan.schedule_timesteps[index])
        cfg = self.config
        last = index == len(plan.schedule_timesteps) - 1
        prev_timestep = -1 if last else int(plan.schedule_timesteps[index + 1])

        alpha_prod_t = self.alpha_bar(timestep)
        alpha_prod_t_prev = self.alpha_bar(prev_timestep, final_alpha_cumprod=1.0)
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        pred_original = self.predicted_original(model_output, sample, alpha_prod_t)
        pred_original = clip_predicted_original(cfg, pred_original)

        # mean of the posterior q(x_{t-1} | x_t, x_0), eq. 7 of the paper
        original_coeff = alpha_prod_t_prev**0.5 * current_beta_t / beta_prod_t
        sample_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
        prev_sample = original_coeff * pred_original + sample_coeff * sample
        if timestep > 0:
            prev_sample = prev_sample + self.noise_scale(alpha_prod_t, alpha_prod_t_prev) * noise
        return StepResult(prev_sample=prev_sample, state=NoHistory(), denoised=pred_original)
