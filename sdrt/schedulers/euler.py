"""Euler (Karras et al., 2022, algorithm 2 without churn), as diffusers' EulerDiscreteScheduler."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdrt.schedulers.base import (
    NoHistory,
    NoiseScheduleConfig,
    Plan,
    SigmaScheduler,
    StepResult,
    interpolated_sigmas,
    karras_sigmas,
    sigma_to_t,
    spaced_timesteps,
    train_sigmas,
)


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


def sigma_schedule(scheduler, num_inference_steps: int, use_karras: bool):
    """Timesteps (float32) and sigmas (float32, final level appended) of the k-samplers.

    Shared by Euler, Euler ancestral, Heun and LMS, which build them the same way.
    """
    cfg = scheduler.config
    timesteps = spaced_timesteps(cfg, num_inference_steps).astype(np.float32)
    sigmas = interpolated_sigmas(scheduler.alphas_cumprod, timesteps)
    if use_karras:
        sigma_min = getattr(cfg, "sigma_min", None)
        sigma_max = getattr(cfg, "sigma_max", None)
        sigma_min = sigma_min if sigma_min is not None else float(sigmas[-1])
        sigma_max = sigma_max if sigma_max is not None else float(sigmas[0])
        sigmas = karras_sigmas(sigma_min, sigma_max, num_inference_steps)
        log_sigmas = np.log(train_sigmas(scheduler.alphas_cumprod))
        timesteps = sigma_to_t(sigmas, log_sigmas).astype(np.float32)
    if getattr(cfg, "final_sigmas_type", "zero") == "sigma_min":
        sigma_last = float(train_sigmas(scheduler.alphas_cumprod[:1])[0])
    else:
        sigma_last = 0.0
    sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
    return timesteps, sigmas


class EulerDiscreteScheduler(SigmaScheduler):
    name = "EulerDiscreteScheduler"
    Config = EulerConfig

    def full_schedule(self, num_inference_steps: int) -> Plan:
        timesteps, sigmas = sigma_schedule(self, num_inference_steps, self.config.use_karras_sigmas)
        return Plan(
            timesteps=timesteps,
            init_noise_sigma=self.init_noise_sigma_for(sigmas),
            num_inference_steps=num_inference_steps,
            begin_index=0,
            schedule_timesteps=timesteps,
            sigmas=sigmas,
        )

    def step(self, plan: Plan, state, model_output, i: int, sample, noise=None) -> StepResult:
        index = self.schedule_index(plan, i)
        self.check_step_inputs(state, model_output, sample, noise, noise_needed=False)
        sigma = float(plan.sigmas[index])
        sigma_next = float(plan.sigmas[index + 1])
        pred_original = self.predicted_original(model_output, sample, sigma)
        derivative = (sample - pred_original) / sigma
        prev_sample = sample + derivative * (sigma_next - sigma)
        return StepResult(prev_sample=prev_sample, state=NoHistory(), denoised=pred_original)
