"""Heun's 2nd-order method (Karras et al., 2022, algorithm 1 without churn), as diffusers'
HeunDiscreteScheduler.

Every step but the last calls the U-Net twice, so the plan lists each timestep after the
first twice: an Euler predictor at even positions, the trapezoid corrector at odd ones.
The corrector needs the predictor's derivative, step size and sample: that is the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sdrt.schedulers.base import SigmaScheduler, StepResult, clip_predicted_original
from sdrt.schedulers.config import NoiseScheduleConfig
from sdrt.schedulers.schedule import Plan, sigma_schedule


@dataclass(frozen=True, kw_only=True)
class HeunConfig(NoiseScheduleConfig):
    beta_start: float = 0.00085
    beta_end: float = 0.012
    timestep_spacing: str = "linspace"
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    clip_sample: bool = False
    clip_sample_range: float = 1.0

    def unsupported_values(self):
        return {"use_exponential_sigmas": (False,), "use_beta_sigmas": (False,)}


@dataclass(frozen=True, eq=False)
class HeunState:
    """None between steps; after a predictor call, what its corrector needs."""

    derivative: Any = None
    dt: float | None = None
    sample: Any = None

    @property
    def in_first_order(self) -> bool:
        return self.dt is None


class HeunDiscreteScheduler(SigmaScheduler):
    name = "HeunDiscreteScheduler"
    Config = HeunConfig
    State = HeunState
    order = 2

    def full_schedule(self, num_inference_steps: int) -> Plan:
        timesteps, sigmas = sigma_schedule(self.config, self.alphas_cumprod, num_inference_steps)
        # [s0, s1, s1, s2, s2, ..., 0] and [t0, t1, t1, t2, t2, ...]: one entry per U-Net call.
        sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)]).astype(np.float32)
        return self.sigma_plan(num_inference_steps, timesteps, sigmas)

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        if state.in_first_order:
            sigma, sigma_next = float(plan.sigmas[index]), float(plan.sigmas[index + 1])
            sigma_input = sigma
        else:
            sigma, sigma_next = float(plan.sigmas[index - 1]), float(plan.sigmas[index])
            sigma_input = sigma_next
        pred_original = self.predicted_original(model_output, sample, sigma_input)
        pred_original = clip_predicted_original(self.config, pred_original)

        if state.in_first_order:
            derivative = (sample - pred_original) / sigma
            dt = sigma_next - sigma
            prev_sample = sample + derivative * dt
            new_state = HeunState(derivative=derivative, dt=dt, sample=sample)
        else:
            derivative = (sample - pred_original) / sigma_next
            derivative = (state.derivative + derivative) / 2
            prev_sample = state.sample + derivative * state.dt
            new_state = HeunState()
        return StepResult(prev_sample=prev_sample, state=new_state, denoised=pred_original)
