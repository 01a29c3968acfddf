"""Trajectory consistency distillation sampling (Zheng et al., 2024), as diffusers'
TCDScheduler: the sampler of TCD-LoRA and Hyper-SD.

Each step estimates x0 and the noise, then goes to the next timestep by way of an
intermediate one, s = floor((1 - eta) * t_prev): it forms the noised estimate at s
("pred_noised_sample"), and, except at the last step, noises that forward to t_prev with
noise the caller draws. ``eta`` (the paper's gamma, the call's ``eta``) sets how much of
each step is fresh noise: 0 is deterministic, 1 re-noises from x0 as LCM does. The
timesteps are those of LCM: a subset of the ``original_inference_steps`` grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdrt.schedulers.base import AlphaBarScheduler, NoHistory, StepResult
from sdrt.schedulers.config import NoiseScheduleConfig, check_original_inference_steps
from sdrt.schedulers.schedule import Plan, consistency_timesteps, full_plan


@dataclass(frozen=True, kw_only=True)
class TCDConfig(NoiseScheduleConfig):
    # diffusers' TCDScheduler also has clip_sample, set_alpha_to_one and timestep_scaling
    # (its step uses none of them) and timestep_spacing (its set_timesteps ignores it).
    rescale_betas_zero_snr: bool = False
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    original_inference_steps: int = 50
    thresholding: bool = False

    def unsupported_values(self):
        return {"thresholding": (False,)}

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        check_original_inference_steps(self, scheduler)


class TCDScheduler(AlphaBarScheduler):
    name = "TCDScheduler"
    Config = TCDConfig
    takes_eta = True

    def max_inference_steps(self) -> int:
        return self.config.original_inference_steps

    def full_schedule(self, num_inference_steps: int) -> Plan:
        cfg = self.config
        timesteps = consistency_timesteps(
            cfg.num_train_timesteps, cfg.original_inference_steps, num_inference_steps
        )
        return full_plan(timesteps, num_inference_steps)

    def noise_needed(self, plan: Plan, index: int) -> bool:
        # The last step returns the noised estimate as it is (so does a 1-step call).
        return plan.eta > 0 and index != plan.num_inference_steps - 1

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        timestep = int(plan.schedule_timesteps[index])
        # diffusers' "previous" timestep after the last step is 0, not -1: the last step
        # lands on alpha_bar[0], never on final_alpha_cumprod.
        if index + 1 < len(plan.schedule_timesteps):
            prev_timestep = int(plan.schedule_timesteps[index + 1])
        else:
            prev_timestep = 0
        # diffusers computes (1 - eta) * t_prev in float32 before flooring it.
        timestep_s = int(np.floor(np.float32(1.0 - plan.eta) * np.float32(prev_timestep)))

        alpha_prod_t = self.alpha_bar(timestep)
        alpha_prod_t_prev = self.alpha_bar(prev_timestep)
        alpha_prod_s = self.alpha_bar(timestep_s)
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_s = 1 - alpha_prod_s

        kind = self.config.prediction_type
        if kind == "epsilon":
            pred_original = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
            pred_epsilon = model_output
        elif kind == "sample":
            pred_original = model_output
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original) / beta_prod_t**0.5
        else:  # v_prediction
            pred_original = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
            pred_epsilon = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        pred_noised = alpha_prod_s**0.5 * pred_original + beta_prod_s**0.5 * pred_epsilon

        if not self.noise_needed(plan, index):
            prev_sample = pred_noised
        else:
            # Forward-diffuse the estimate from s to t_prev (alpha_bar[s] >= alpha_bar[t_prev]).
            ratio = alpha_prod_t_prev / alpha_prod_s
            prev_sample = ratio**0.5 * pred_noised + (1 - ratio) ** 0.5 * noise
        return StepResult(prev_sample=prev_sample, state=NoHistory(), denoised=pred_original)
