"""DDIM (Song et al., 2020), as diffusers' DDIMScheduler: deterministic at eta = 0 (the
default), at eta > 0 part of the step is fresh noise the caller draws (eta = 1: DDPM's)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdrt.schedulers.base import AlphaBarScheduler, NoHistory, StepResult, clip_predicted_original
from sdrt.schedulers.config import NoiseScheduleConfig
from sdrt.schedulers.schedule import Plan, full_plan, spaced_timesteps


@dataclass(frozen=True, kw_only=True)
class DDIMConfig(NoiseScheduleConfig):
    rescale_betas_zero_snr: bool = False
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    thresholding: bool = False

    def unsupported_values(self):
        # Dynamic thresholding is meant for pixel-space models, not latent diffusion.
        return {"thresholding": (False,)}


class DDIMScheduler(AlphaBarScheduler):
    name = "DDIMScheduler"
    Config = DDIMConfig
    takes_eta = True

    def full_schedule(self, num_inference_steps: int) -> Plan:
        timesteps = spaced_timesteps(self.config, num_inference_steps).round().astype(np.int64)
        return full_plan(timesteps, num_inference_steps)

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        cfg = self.config
        timestep = int(plan.schedule_timesteps[index])
        # diffusers steps back by the spacing ratio, not to the next planned timestep.
        prev_timestep = timestep - cfg.num_train_timesteps // plan.num_inference_steps

        alpha_prod_t = self.alpha_bar(timestep)
        alpha_prod_t_prev = self.alpha_bar(prev_timestep, self.final_alpha_cumprod())
        beta_prod_t = 1 - alpha_prod_t

        if cfg.prediction_type == "epsilon":
            pred_original = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
            pred_epsilon = model_output
        elif cfg.prediction_type == "sample":
            pred_original = model_output
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original) / beta_prod_t**0.5
        else:  # v_prediction
            pred_original = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
            pred_epsilon = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample

        pred_original = clip_predicted_original(cfg, pred_original)

        # sigma_t(eta) of the paper's formula (16); eta = 0: no variance term, the
        # direction to x_t is all predicted noise.
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = plan.eta * variance**0.5
        direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * pred_epsilon
        prev_sample = alpha_prod_t_prev**0.5 * pred_original + direction
        if plan.eta > 0:  # diffusers draws it at every step, the last one too
            prev_sample = prev_sample + std_dev_t * noise
        return StepResult(prev_sample=prev_sample, state=NoHistory(), denoised=pred_original)
