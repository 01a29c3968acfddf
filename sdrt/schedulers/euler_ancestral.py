"""Euler ancestral (k-diffusion's sample_euler_ancestral, eta = 1), as diffusers'
EulerAncestralDiscreteScheduler. The caller draws the noise of each step."""

from __future__ import annotations

from dataclasses import dataclass

from sdrt.schedulers.base import NoHistory, SigmaScheduler, StepResult
from sdrt.schedulers.config import NoiseScheduleConfig
from sdrt.schedulers.schedule import Plan, sigma_schedule


@dataclass(frozen=True, kw_only=True)
class EulerAncestralConfig(NoiseScheduleConfig):
    rescale_betas_zero_snr: bool = False
    TERMINAL_ALPHA_FLOOR = True
    timestep_spacing: str = "linspace"


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    name = "EulerAncestralDiscreteScheduler"
    Config = EulerAncestralConfig
    needs_noise = True

    def full_schedule(self, num_inference_steps: int) -> Plan:
        timesteps, sigmas = sigma_schedule(self.config, self.alphas_cumprod, num_inference_steps)
        return self.sigma_plan(num_inference_steps, timesteps, sigmas)

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        sigma_from = float(plan.sigmas[index])
        sigma_to = float(plan.sigmas[index + 1])
        pred_original = self.predicted_original(model_output, sample, sigma_from)
        # Split the step to sigma_to into a deterministic part down to sigma_down and
        # fresh noise of size sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2.
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - pred_original) / sigma_from
        prev_sample = sample + derivative * (sigma_down - sigma_from)
        prev_sample = prev_sample + noise * sigma_up
        return StepResult(prev_sample=prev_sample, state=NoHistory(), denoised=pred_original)
