"""PNDM (Liu et al., 2022): its pseudo linear multistep (PLMS) part, as diffusers'
PNDMScheduler with skip_prk_steps=True, the setting of Stable Diffusion's configs.

The plan repeats the second-highest timestep: call 0 takes an Euler-like step, call 1
redoes it with the mean of the two model outputs (a 2nd-order start); later calls
combine up to four past outputs with the Adams-Bashforth weights. The state holds
those outputs, the call counter and the sample call 1 restarts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sdrt.schedulers.base import (
    AlphaBarScheduler,
    NoiseScheduleConfig,
    Plan,
    StepResult,
)


@dataclass(frozen=True, kw_only=True)
class PNDMConfig(NoiseScheduleConfig):
    skip_prk_steps: bool = False
    set_alpha_to_one: bool = False
    PREDICTION_TYPES = ("epsilon", "v_prediction")

    def unsupported_values(self):
        # The Runge-Kutta warm-up (PRK) is not implemented: Stable Diffusion's configs skip it.
        return {"skip_prk_steps": (True,)}


@dataclass(frozen=True)
class PNDMState:
    counter: int = 0
    model_outputs: tuple[Any, ...] = ()  # the "ets" of diffusers, oldest first, at most 4
    start_sample: Any = None  # the sample of call 0, which call 1 steps from again


class PNDMScheduler(AlphaBarScheduler):
    name = "PNDMScheduler"
    Config = PNDMConfig

    def full_schedule(self, num_inference_steps: int) -> Plan:
        cfg = self.config
        n, n_train = num_inference_steps, cfg.num_train_timesteps
        if cfg.timestep_spacing == "linspace":
            ascending = np.linspace(0, n_train - 1, n).round().astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            ascending = (np.arange(0, n) * (n_train // n)).round() + cfg.steps_offset
        else:  # trailing
            ascending = np.round(np.arange(n_train, 0, -n_train / n))[::-1].astype(np.int64) - 1
        timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        timesteps = timesteps.astype(np.int64)
        return Plan(
            timesteps=timesteps,
            init_noise_sigma=1.0,
            num_inference_steps=n,
            begin_index=0,
            schedule_timesteps=timesteps,
        )

    def initial_state(self, plan: Plan) -> PNDMState:
        return PNDMState()

    def state_class(self) -> type:
        return PNDMState

    def step(self, plan: Plan, state, model_output, i: int, sample, noise=None) -> StepResult:
        index = self.schedule_index(plan, i)
        self.check_step_inputs(state, model_output, sample, noise, noise_needed=False)
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
            counter=state.counter + 1, model_outputs=outputs, start_sample=start_sample
        )
        return StepResult(prev_sample=prev_sample, state=new_state, denoised=None)

    def previous_sample(self, sample, timestep: int, prev_timestep: int, model_output):
        """Formula (9) of the PNDM paper: x_{t-delta} from x_t and the noise estimate."""
        final = 1.0 if self.config.set_alpha_to_one else float(self.alphas_cumprod[0])
        alpha_prod_t = self.alpha_bar(timestep)
        alpha_prod_t_prev = self.alpha_bar(prev_timestep, final)
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
