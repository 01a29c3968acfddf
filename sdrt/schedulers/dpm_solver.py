"""DPM-Solver++ multistep (Lu et al., 2022), as diffusers' DPMSolverMultistepScheduler.

"DPM++ 2M" is algorithm_type="dpmsolver++" with solver_order=2; "DPM++ 2M Karras" adds
use_karras_sigmas=True. The model output is converted to a data (x0) prediction, and
each step extrapolates from the last `solver_order` of them in log-SNR time lambda; the
first step, and the last steps of short schedules, fall back to lower orders. The state
holds those past predictions and how many the solver has had so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdrt.errors import InputError
from sdrt.schedulers.base import StepResult, VPSigmaScheduler
from sdrt.schedulers.config import NoiseScheduleConfig
from sdrt.schedulers.schedule import (
    Plan,
    final_sigma,
    full_plan,
    interpolated_sigmas,
    karras_schedule,
    multistep_timesteps,
)


@dataclass(frozen=True, kw_only=True)
class DPMSolverConfig(NoiseScheduleConfig):
    rescale_betas_zero_snr: bool = False
    TERMINAL_ALPHA_FLOOR = True
    solver_order: int = 2
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_lu_lambdas: bool = False
    use_flow_sigmas: bool = False
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -math.inf
    variance_type: str | None = None
    thresholding: bool = False
    timestep_spacing: str = "linspace"

    def unsupported_values(self):
        # The SDE variants need noise; they are not implemented.
        return {
            "solver_order": (1, 2, 3),
            "algorithm_type": ("dpmsolver++", "dpmsolver"),
            "solver_type": ("midpoint", "heun"),
            "use_exponential_sigmas": (False,),
            "use_beta_sigmas": (False,),
            "use_lu_lambdas": (False,),
            "use_flow_sigmas": (False,),
            "final_sigmas_type": ("zero", "sigma_min"),
            "thresholding": (False,),
        }

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        # diffusers only acts on the learned variances (a U-Net with twice the channels);
        # other values, e.g. a DDPM config's "fixed_small", are ignored as there.
        if self.variance_type in ("learned", "learned_range"):
            raise InputError(
                f"{scheduler}: variance_type={self.variance_type!r} (a U-Net predicting its "
                "variance) is not supported; expected None"
            )
        if self.algorithm_type == "dpmsolver" and self.final_sigmas_type == "zero":
            raise InputError(
                f"{scheduler}: final_sigmas_type='zero' needs algorithm_type 'dpmsolver++'; "
                "got 'dpmsolver' (use final_sigmas_type='sigma_min')"
            )

    @classmethod
    def normalized(cls, values):
        # diffusers maps other solvers' names onto its own (e.g. a UniPC config's "bh2").
        values = dict(values)
        if values.get("algorithm_type") == "deis":
            values["algorithm_type"] = "dpmsolver++"
        if values.get("solver_type") in ("logrho", "bh1", "bh2"):
            values["solver_type"] = "midpoint"
        return values


@dataclass(frozen=True, eq=False)
class DPMSolverState:
    model_outputs: tuple[Any, ...] = ()  # converted outputs, oldest first, at most solver_order
    lower_order_nums: int = 0  # steps taken so far, capped at solver_order


class DPMSolverMultistepScheduler(VPSigmaScheduler):
    name = "DPMSolverMultistepScheduler"
    Config = DPMSolverConfig
    State = DPMSolverState

    def full_schedule(self, num_inference_steps: int) -> Plan:
        cfg = self.config
        last_timestep = cfg.num_train_timesteps - self.clipped_steps()
        timesteps = multistep_timesteps(cfg, num_inference_steps, last_timestep)
        if cfg.use_karras_sigmas:
            sigmas, timesteps = karras_schedule(self.alphas_cumprod, num_inference_steps)
            if cfg.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
            timesteps = timesteps.astype(np.int64)
        else:
            sigmas = interpolated_sigmas(self.alphas_cumprod, timesteps)
        sigma_last = final_sigma(cfg.final_sigmas_type, self.alphas_cumprod)
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        return full_plan(timesteps, len(timesteps), sigmas=sigmas)

    def clipped_steps(self) -> int:
        """Training steps at the noisy end whose log-SNR is below lambda_min_clipped."""
        alpha_t = np.sqrt(self.alphas_cumprod)
        sigma_t = np.sqrt(1 - self.alphas_cumprod)
        lambdas = np.log(alpha_t) - np.log(sigma_t)
        return int(np.searchsorted(np.flip(lambdas), self.config.lambda_min_clipped))

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        cfg = self.config
        n = len(plan.schedule_timesteps)
        short = cfg.lower_order_final and n < 15
        lower_order_final = index == n - 1 and (
            cfg.euler_at_final or short or cfg.final_sigmas_type == "zero"
        )
        lower_order_second = index == n - 2 and short

        sigma = float(plan.sigmas[index])
        if cfg.algorithm_type == "dpmsolver++":
            converted = self.convert_to_data(model_output, sample, sigma)
        else:
            converted = self.convert_to_noise(model_output, sample, sigma)
        outputs = (*state.model_outputs, converted)[-cfg.solver_order :]

        if plan.sigmas[index + 1] == plan.sigmas[index]:
            # A repeated sigma (Karras with final sigma_min): a zero-length step.
            prev_sample = sample
        elif cfg.solver_order == 1 or state.lower_order_nums < 1 or lower_order_final:
            prev_sample = self.first_order_update(plan, index, outputs, sample)
        elif cfg.solver_order == 2 or state.lower_order_nums < 2 or lower_order_second:
            prev_sample = self.second_order_update(plan, index, outputs, sample)
        else:
            prev_sample = self.third_order_update(plan, index, outputs, sample)

        new_state = DPMSolverState(
            model_outputs=outputs,
            lower_order_nums=min(state.lower_order_nums + 1, cfg.solver_order),
        )
        denoised = converted if cfg.algorithm_type == "dpmsolver++" else None
        return StepResult(prev_sample=prev_sample, state=new_state, denoised=denoised)

    def levels(self, plan: Plan, indices):
        """(alpha_t, sigma_t, lambda) at each schedule index."""
        result = []
        for index in indices:
            sigma = float(plan.sigmas[index])
            alpha_t, sigma_t = self.alpha_sigma(sigma)
            result.append((alpha_t, sigma_t, self.log_snr(sigma)))
        return result

    def first_order_update(self, plan: Plan, index: int, outputs, sample):
        """DDIM-like step from the newest output (DPM-Solver-1)."""
        (alpha_t, sigma_t, lambda_t), (alpha_s, sigma_s, lambda_s) = self.levels(
            plan, (index + 1, index)
        )
        h = lambda_t - lambda_s
        if self.config.algorithm_type == "dpmsolver++":
            return (sigma_t / sigma_s) * sample - (alpha_t * (math.exp(-h) - 1.0)) * outputs[-1]
        return (alpha_t / alpha_s) * sample - (sigma_t * (math.exp(h) - 1.0)) * outputs[-1]

    def second_order_update(self, plan: Plan, index: int, outputs, sample):
        (alpha_t, sigma_t, lambda_t), (alpha_s0, sigma_s0, lambda_s0), (_, _, lambda_s1) = (
            self.levels(plan, (index + 1, index, index - 1))
        )
        m0, m1 = outputs[-1], outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (1.0 / r0) * (m0 - m1)
        plus = self.config.algorithm_type == "dpmsolver++"
        if plus:
            base = (sigma_t / sigma_s0) * sample
            phi_1 = alpha_t * (math.exp(-h) - 1.0)
        else:
            base = (alpha_t / alpha_s0) * sample
            phi_1 = sigma_t * (math.exp(h) - 1.0)
        if self.config.solver_type == "midpoint":
            return base - phi_1 * d0 - (0.5 * phi_1) * d1
        if plus:  # heun
            return base - phi_1 * d0 + (alpha_t * ((math.exp(-h) - 1.0) / h + 1.0)) * d1
        return base - phi_1 * d0 - (sigma_t * ((math.exp(h) - 1.0) / h - 1.0)) * d1

    def third_order_update(self, plan: Plan, index: int, outputs, sample):
        levels = self.levels(plan, (index + 1, index, index - 1, index - 2))
        (alpha_t, sigma_t, lambda_t), (alpha_s0, sigma_s0, lambda_s0) = levels[:2]
        lambda_s1, lambda_s2 = levels[2][2], levels[3][2]
        m0, m1, m2 = outputs[-1], outputs[-2], outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
        if self.config.algorithm_type == "dpmsolver++":
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (math.exp(-h) - 1.0)) * m0
                + (alpha_t * ((math.exp(-h) - 1.0) / h + 1.0)) * d1
                - (alpha_t * ((math.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
            )
        return (
            (alpha_t / alpha_s0) * sample
            - (sigma_t * (math.exp(h) - 1.0)) * m0
            - (sigma_t * ((math.exp(h) - 1.0) / h - 1.0)) * d1
            - (sigma_t * ((math.exp(h) - 1.0 - h) / h**2 - 0.5)) * d2
        )
