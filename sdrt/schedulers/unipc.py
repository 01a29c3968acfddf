"""UniPC multistep (Zhao et al., 2023), as diffusers' UniPCMultistepScheduler.

Each step first corrects the incoming sample with the new model output (UniC), then
predicts the next sample from the last `solver_order` outputs (UniP). The B(h) variant
is bh1 or bh2. The state holds the past converted outputs, the sample before the last
prediction (for the corrector) and the order that prediction used.
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
class UniPCConfig(NoiseScheduleConfig):
    rescale_betas_zero_snr: bool = False
    TERMINAL_ALPHA_FLOOR = True
    solver_order: int = 2
    predict_x0: bool = True
    solver_type: str = "bh2"
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_flow_sigmas: bool = False
    final_sigmas_type: str = "zero"
    sigma_min: float | None = None
    sigma_max: float | None = None
    thresholding: bool = False
    use_dynamic_shifting: bool = False
    timestep_spacing: str = "linspace"

    def unsupported_values(self):
        return {
            "solver_type": ("bh1", "bh2"),
            "use_exponential_sigmas": (False,),
            "use_beta_sigmas": (False,),
            "use_flow_sigmas": (False,),
            "final_sigmas_type": ("zero", "sigma_min"),
            "thresholding": (False,),
            "use_dynamic_shifting": (False,),
        }

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        # With a final sigma of 0 the last step spans an infinite log-SNR interval: only the
        # first-order data-prediction update has a limit there (diffusers returns NaN).
        if self.final_sigmas_type == "zero" and not self.predict_x0:
            raise InputError(
                f"{scheduler}: predict_x0=False needs final_sigmas_type='sigma_min'; got 'zero'"
            )
        if self.final_sigmas_type == "zero" and not self.lower_order_final:
            raise InputError(
                f"{scheduler}: lower_order_final=False needs final_sigmas_type='sigma_min'; "
                "got 'zero'"
            )

    @classmethod
    def normalized(cls, values):
        # diffusers maps DPM-Solver's solver types onto bh2 (e.g. from a DPM++ config).
        values = dict(values)
        if values.get("solver_type") in ("midpoint", "heun", "logrho"):
            values["solver_type"] = "bh2"
        if isinstance(values.get("disable_corrector"), list):  # JSON has lists, not tuples
            values["disable_corrector"] = tuple(values["disable_corrector"])
        return values


@dataclass(frozen=True, eq=False)
class UniPCState:
    model_outputs: tuple[Any, ...] = ()  # converted outputs, oldest first, at most solver_order
    lower_order_nums: int = 0
    last_sample: Any = None  # the sample the last prediction started from
    last_order: int = 0  # the order of the last prediction; the corrector reuses it


class UniPCMultistepScheduler(VPSigmaScheduler):
    name = "UniPCMultistepScheduler"
    Config = UniPCConfig
    State = UniPCState

    def full_schedule(self, num_inference_steps: int) -> Plan:
        cfg = self.config
        timesteps = multistep_timesteps(cfg, num_inference_steps, cfg.num_train_timesteps)
        if cfg.use_karras_sigmas:
            sigmas, timesteps = karras_schedule(
                self.alphas_cumprod, num_inference_steps, cfg.sigma_min, cfg.sigma_max
            )
            timesteps = timesteps.round().astype(np.int64)
            sigma_last = float(sigmas[-1]) if cfg.final_sigmas_type == "sigma_min" else 0.0
        else:
            sigmas = interpolated_sigmas(self.alphas_cumprod, timesteps)
            sigma_last = final_sigma(cfg.final_sigmas_type, self.alphas_cumprod)
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        return full_plan(timesteps, len(timesteps), sigmas=sigmas)

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        cfg = self.config
        sigma = float(plan.sigmas[index])
        if cfg.predict_x0:
            converted = self.convert_to_data(model_output, sample, sigma)
        else:
            converted = self.convert_to_noise(model_output, sample, sigma)

        use_corrector = (
            index > 0 and (index - 1) not in cfg.disable_corrector and state.last_sample is not None
        )
        if use_corrector:
            sample = self.corrector_update(plan, index, state, converted, sample)

        outputs = (*state.model_outputs, converted)[-cfg.solver_order :]
        if cfg.lower_order_final:
            order = min(cfg.solver_order, len(plan.schedule_timesteps) - index)
        else:
            order = cfg.solver_order
        order = min(order, state.lower_order_nums + 1)  # warm-up of the multistep history
        prev_sample = self.predictor_update(plan, index, outputs, sample, order)

        new_state = UniPCState(
            model_outputs=outputs,
            lower_order_nums=min(state.lower_order_nums + 1, cfg.solver_order),
            last_sample=sample,
            last_order=order,
        )
        denoised = converted if cfg.predict_x0 else None
        return StepResult(prev_sample=prev_sample, state=new_state, denoised=denoised)

    def coefficients(self, h: float, rks: list[float], order: int):
        """h_phi_1, B(h) and the vector b of the order conditions; R's rows are rks^k."""
        hh = -h if self.config.predict_x0 else h
        h_phi_1 = math.expm1(hh)  # e^hh - 1
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.config.solver_type == "bh1" else math.expm1(hh)
        factorial = 1
        b = []
        for k in range(1, order + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r = np.array([[rk ** (k - 1) for rk in rks] for k in range(1, order + 1)])
        return h_phi_1, b_h, np.array(b), r

    def base_update(self, t_level, s_level, x, m0, h_phi_1):
        """The first-order part shared by predictor and corrector."""
        (alpha_t, sigma_t, _), (alpha_s0, sigma_s0, _) = t_level, s_level
        if self.config.predict_x0:
            return sigma_t / sigma_s0 * x - (alpha_t * h_phi_1) * m0
        return alpha_t / alpha_s0 * x - (sigma_t * h_phi_1) * m0

    def level(self, plan: Plan, index: int):
        sigma = float(plan.sigmas[index])
        alpha_t, sigma_t = self.alpha_sigma(sigma)
        return alpha_t, sigma_t, self.log_snr(sigma)

    def predictor_update(self, plan: Plan, index: int, outputs, sample, order: int):
        """UniP: from sample at schedule index to index + 1."""
        t_level, s_level = self.level(plan, index + 1), self.level(plan, index)
        lambda_s0 = s_level[2]
        h = t_level[2] - lambda_s0
        if h == 0:  # a repeated sigma (Karras with final sigma_min): nothing to integrate
            return sample
        m0 = outputs[-1]
        rks = [(self.level(plan, index - k)[2] - lambda_s0) / h for k in range(1, order)]
        h_phi_1, b_h, b, r = self.coefficients(h, [*rks, 1.0], order)

        x_t = self.base_update(t_level, s_level, sample, m0, h_phi_1)
        if order >= 2:
            rhos = [0.5] if order == 2 else np.linalg.solve(r[:-1, :-1], b[:-1]).tolist()
            # sum_k rho_k * D1_k with D1_k = (m_k - m0) / r_k
            pred_res = sum(
                (rho / rk) * (outputs[-(k + 2)] - m0)
                for k, (rho, rk) in enumerate(zip(rhos, rks, strict=True))
            )
            scale = (t_level[0] if self.config.predict_x0 else t_level[1]) * b_h
            x_t = x_t - scale * pred_res
        return x_t

    def corrector_update(self, plan: Plan, index: int, state: UniPCState, converted, sample):
        """UniC: refine the sample the last prediction produced, with its new model output."""
        order = state.last_order
        outputs = state.model_outputs
        t_level, s_level = self.level(plan, index), self.level(plan, index - 1)
        lambda_s0 = s_level[2]
        h = t_level[2] - lambda_s0
        m0 = outputs[-1]
        rks = [(self.level(plan, index - (k + 1))[2] - lambda_s0) / h for k in range(1, order)]
        h_phi_1, b_h, b, r = self.coefficients(h, [*rks, 1.0], order)
        rhos = [0.5] if order == 1 else np.linalg.solve(r, b).tolist()

        x_t = self.base_update(t_level, s_level, state.last_sample, m0, h_phi_1)
        scale = (t_level[0] if self.config.predict_x0 else t_level[1]) * b_h
        correction = rhos[-1] * (converted - m0)
        for k, (rho, rk) in enumerate(zip(rhos[:-1], rks, strict=True)):
            correction = correction + (rho / rk) * (outputs[-(k + 2)] - m0)
        return x_t - scale * correction
