"""PNDM (Liu et al., 2022), as diffusers' PNDMScheduler.

Pseudo linear multistep (PLMS) steps combine up to four past model outputs with the
Adams-Bashforth weights. They need a warm-up. With skip_prk_steps=True (Stable
Diffusion's configs) the plan repeats the second-highest timestep: call 0 takes an
Euler-like step and call 1 redoes it with the mean of the two outputs. Otherwise the
first three steps are pseudo Runge-Kutta (PRK) steps of four U-Net calls each, at the
step's start, its midpoint (twice) and its end, 12 calls in all.

The state holds the past outputs, the call counter, the sample a step restarts from
and the running Runge-Kutta sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sdrt.errors import InputError
from sdrt.schedulers.base import AlphaBarScheduler, StepResult
from sdrt.schedulers.config import NoiseScheduleConfig
from sdrt.schedulers.schedule import Plan, full_plan

PRK_CALLS = 12  # 3 Runge-Kutta steps x 4 U-Net calls
PNDM_ORDER = 4


@dataclass(frozen=True, kw_only=True)
class PNDMConfig(NoiseScheduleConfig):
    skip_prk_steps: bool = False
    set_alpha_to_one: bool = False
    PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True, eq=False)
class PNDMState:
    counter: int = 0
    model_outputs: tuple[Any, ...] = ()  # the "ets" of diffusers, oldest first, at most 4
    start_sample: Any = None  # the sample the current step restarts from
    rk_sum: Any = None  # weighted sum of this Runge-Kutta step's outputs so far (None: 0)


class PNDMScheduler(AlphaBarScheduler):
    name = "PNDMScheduler"
    Config = PNDMConfig
    State = PNDMState

    def full_schedule(self, num_inference_steps: int) -> Plan:
        cfg = self.config
        n, n_train = num_inference_steps, cfg.num_train_timesteps
        if cfg.timestep_spacing == "linspace":
            ascending = np.linspace(0, n_train - 1, n).round().astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            ascending = (np.arange(0, n) * (n_train // n)).round() + cfg.steps_offset
        else:  # trailing
            ascending = np.round(np.arange(n_train, 0, -n_train / n))[::-1].astype(np.int64) - 1
        if cfg.skip_prk_steps:
            timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        else:
            if n < PNDM_ORDER:
                raise InputError(
                    f"{self.name} with skip_prk_steps=False needs num_inference_steps >= "
                    f"{PNDM_ORDER}; got {n}"
                )
            # the 3 RK steps at the noisy end: start, midpoint, midpoint, end of each
            half = n_train // n // 2
            prk = ascending[-PNDM_ORDER:].repeat(2) + np.tile(np.array([0, half]), PNDM_ORDER)
            prk = prk[:-1].repeat(2)[1:-1][::-1]
            timesteps = np.concatenate([prk, ascending[:-3][::-1]])
        timesteps = timesteps.astype(np.int64)
        return full_plan(timesteps, n)

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        # As diffusers, the phase follows the call counter, not the schedule position.
        if not self.config.skip_prk_steps and state.counter < PRK_CALLS:
            return self.runge_kutta_step(plan, state, model_output, index, sample)
        return self.linear_multistep_step(plan, state, model_output, index, sample)

    def runge_kutta_step(self, plan: Plan, state, model_output, index: int, sample):
        counter = state.counter
        n_train = self.config.num_train_timesteps
        diff_to_prev = 0 if counter % 2 else n_train // plan.num_inference_steps // 2
        prev_timestep = int(plan.schedule_timesteps[index]) - diff_to_prev
        timestep = int(plan.schedule_timesteps[counter // 4 * 4])  # the RK step's start
        outputs, start_sample, rk_sum = state.model_outputs, state.start_sample, state.rk_sum

        def accumulate(weight):
            return weight * model_output if rk_sum is None else rk_sum + weight * model_output

        if counter % 4 == 0:
            rk_sum = accumulate(1 / 6)
            outputs = (*outputs, model_output)
            start_sample = sample
        elif counter % 4 in (1, 2):
            rk_sum = accumulate(1 / 3)
        else:  # the end of the RK step: its combined output
            model_output = accumulate(1 / 6)
            rk_sum = None
        restart = start_sample if start_sample is not None else sample
        prev_sample = self.previous_sample(restart, timestep, prev_timestep, model_output)
        new_state = PNDMState(
            counter=counter + 1, model_outputs=outputs, start_sample=start_sample, rk_sum=rk_sum
        )
        return StepResult(prev_sample=prev_sample, state=new_state, denoised=None)

    def linear_multistep_step(self, plan: Plan, state, model_output, index: int, sample):
        step_ratio = self.config.num_train_timesteps // plan.num_inference_steps
        timestep = int(plan.schedule_timesteps[index])
        prev_timestep = timestep - step_ratio
        outputs = state.model_outputs
        start_sample = state.start_sample

        if state.counter != 1:
            outputs = (*outputs[-3:], model_output)
        else:  # call 1 repeats the step of call 0, from its timestep and sample
            prev_timestep = timestep
            timestep = timestep + step_ratio

        if len(outputs) == 1 and state.counter == 0:
            combined = model_output
            start_sample = sample
        elif len(outputs) == 1 and state.counter == 1:
            combined = (model_output + outputs[-1]) / 2
            sample, start_sample = start_sample, None
        elif len(outputs) == 2:
            combined = (3 * outputs[-1] - outputs[-2]) / 2
        elif len(outputs) == 3:
            combined = (23 * outputs[-1] - 16 * outputs[-2] + 5 * outputs[-3]) / 12
        else:
            combined = (1 / 24) * (
                55 * outputs[-1] - 59 * outputs[-2] + 37 * outputs[-3] - 9 * outputs[-4]
            )

        prev_sample = self.previous_sample(sample, timestep, prev_timestep, combined)
        new_state = PNDMState(
            counter=state.counter + 1,
            model_outputs=outputs,
            start_sample=start_sample,
            rk_sum=state.rk_sum,
        )
        return StepResult(prev_sample=prev_sample, state=new_state, denoised=None)

    def previous_sample(self, sample, timestep: int, prev_timestep: int, model_output):
        """Formula (9) of the PNDM paper: x_{t-delta} from x_t and the noise estimate."""
        alpha_prod_t = self.alpha_bar(timestep)
        alpha_prod_t_prev = self.alpha_bar(prev_timestep, self.final_alpha_cumprod())
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        if self.config.prediction_type == "v_prediction":
            model_output = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** 0.5
        denominator = (
            alpha_prod_t * beta_prod_t_prev**0.5
            + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5
        )
        output_coeff = (alpha_prod_t_prev - alpha_prod_t) / denominator
        return sample_coeff * sample - output_coeff * model_output
