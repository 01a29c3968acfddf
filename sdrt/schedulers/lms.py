"""Linear multistep (k-diffusion's sample_lms, order 4), as diffusers' LMSDiscreteScheduler.

Each step integrates the Lagrange polynomial through the last few derivatives over
[sigma_i, sigma_{i+1}]. diffusers integrates numerically with scipy; the integrand is a
polynomial of degree < 4, so Gauss-Legendre quadrature with 4 nodes is exact, and
needs no scipy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sdrt.schedulers.base import SigmaScheduler, StepResult
from sdrt.schedulers.config import NoiseScheduleConfig
from sdrt.schedulers.schedule import Plan, repeated_noise_level, sigma_schedule

LMS_ORDER = 4  # diffusers' default `order` argument of step()
# Gauss-Legendre nodes and weights on [-1, 1], as Python floats: the integrals are a few
# dozen scalar operations, cheaper in plain Python than with tiny numpy arrays.
_GAUSS_NODES, _GAUSS_WEIGHTS = (v.tolist() for v in np.polynomial.legendre.leggauss(LMS_ORDER))


@dataclass(frozen=True, kw_only=True)
class LMSConfig(NoiseScheduleConfig):
    timestep_spacing: str = "linspace"
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False

    def unsupported_values(self):
        return {"use_exponential_sigmas": (False,), "use_beta_sigmas": (False,)}


@dataclass(frozen=True, eq=False)
class LMSState:
    derivatives: tuple[Any, ...] = ()  # oldest first, at most LMS_ORDER


def lms_coefficient(sigmas: np.ndarray, order: int, t: int, current_order: int) -> float:
    """Integral over [sigmas[t], sigmas[t+1]] of the Lagrange basis polynomial of node
    sigmas[t - current_order] among the nodes sigmas[t], ..., sigmas[t - order + 1]."""
    lower, upper = float(sigmas[t]), float(sigmas[t + 1])
    own = float(sigmas[t - current_order])
    others = [float(sigmas[t - k]) for k in range(order) if k != current_order]
    half_width, middle = 0.5 * (upper - lower), 0.5 * (upper + lower)
    integral = 0.0
    for node, weight in zip(_GAUSS_NODES, _GAUSS_WEIGHTS, strict=True):
        tau = half_width * node + middle
        basis = 1.0
        for other in others:
            basis *= (tau - other) / (own - other)
        integral += weight * basis
    return half_width * integral


class LMSDiscreteScheduler(SigmaScheduler):
    name = "LMSDiscreteScheduler"
    Config = LMSConfig
    State = LMSState

    def schedule_problem(self, full: Plan) -> str | None:
        # The Lagrange coefficients divide by differences of the planned sigmas.
        return repeated_noise_level(full.schedule_timesteps, full.sigmas)

    def full_schedule(self, num_inference_steps: int) -> Plan:
        timesteps, sigmas = sigma_schedule(self.config, self.alphas_cumprod, num_inference_steps)
        return self.sigma_plan(num_inference_steps, timesteps, sigmas)

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        sigma = float(plan.sigmas[index])
        pred_original = self.predicted_original(model_output, sample, sigma)
        derivative = (sample - pred_original) / sigma
        derivatives = (*state.derivatives, derivative)[-LMS_ORDER:]

        # As diffusers: the order follows the position in the full schedule, and the
        # coefficients pair with the newest derivatives (fewer after an img2img start).
        order = min(index + 1, LMS_ORDER)
        coefficients = [lms_coefficient(plan.sigmas, order, index, j) for j in range(order)]
        update = sum(c * past for c, past in zip(coefficients, reversed(derivatives), strict=False))
        prev_sample = sample + update
        return StepResult(
            prev_sample=prev_sample, state=LMSState(derivatives), denoised=pred_original
        )
