"""Euler (Karras et al., 2022, algorithm 2 without churn), as diffusers' EulerDiscreteScheduler."""

from __future__ import annotations

from dataclasses import dataclass

from sdrt.schedulers.base import NoHistory, SigmaScheduler, StepResult
from sdrt.schedulers.config import NoiseScheduleConfig
from sdrt.schedulers.schedule import Plan, sigma_schedule


@dataclass(frozen=True, kw_only=True)
class EulerConfig(NoiseScheduleConfig):
    rescale_betas_zero_snr: bool = False
    TERMINAL_ALPHA_FLOOR = True
    timestep_spacing: str = "linspace"
    interpolation_type: str = "linear"
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    timestep_type: str = "discrete"
    final_sigmas_type: str = "zero"

    def unsupported_values(self):
        return {
            "interpolation_type": ("linear",),
            "use_exponential_sigmas": (False,),
            "use_beta_sigmas": (False,),
            "timestep_type": ("discrete",),
            "final_sigmas_type": ("zero", "sigma_min"),
        }


class EulerDiscreteScheduler(SigmaScheduler):
    name = "EulerDiscreteScheduler"
    Config = EulerConfig

    def full_schedule(self, num_inference_steps: int) -> Plan:
        timesteps, sigmas = sigma_schedule(self.config, self.alphas_cumprod, num_inference_steps)
        return self.sigma_plan(num_inference_steps, timesteps, sigmas)

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        sigma = float(plan.sigmas[index])
        sigma_next = float(plan.sigmas[index + 1])
        pred_original = self.predicted_original(model_output, sample, sigma)
        derivative = (sample - pred_original) / sigma
        prev_sample = sample + derivative * (sigma_next - sigma)
        return StepResult(prev_sample=prev_sample, state=NoHistory(), denoised=pred_original)
