"""Helpers of the scheduler tests (no tests here): the three model configs, a stand-in
U-Net, and the same denoising loop run in sdrt and in diffusers (the oracle)."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import torch

from sdrt.schedulers import SCHEDULERS, create_scheduler

# scheduler/scheduler_config.json of the three model families, as published on the Hub.
SD15_CONFIG = {  # runwayml/stable-diffusion-v1-5
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD21_CONFIG = {  # stabilityai/stable-diffusion-2-1
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_CONFIG = {  # stabilityai/stable-diffusion-xl-base-1.0
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
MODEL_CONFIGS = {"sd15": SD15_CONFIG, "sd21": SD21_CONFIG, "sdxl": SDXL_CONFIG}

# diffusers module of each class, where its noise draw (randn_tensor) is looked up.
DIFFUSERS_MODULES = {
    "DDIMScheduler": "scheduling_ddim",
    "PNDMScheduler": "scheduling_pndm",
    "LMSDiscreteScheduler": "scheduling_lms_discrete",
    "EulerDiscreteScheduler": "scheduling_euler_discrete",
    "EulerAncestralDiscreteScheduler": "scheduling_euler_ancestral_discrete",
    "HeunDiscreteScheduler": "scheduling_heun_discrete",
    "DPMSolverMultistepScheduler": "scheduling_dpmsolver_multistep",
    "UniPCMultistepScheduler": "scheduling_unipc_multistep",
    "LCMScheduler": "scheduling_lcm",
    "DDPMScheduler": "scheduling_ddpm",
    "TCDScheduler": "scheduling_tcd",
}

# What an alias means in diffusers terms (mirrors sdrt's ALIAS_OVERRIDES on purpose:
# written out here so that a wrong alias in sdrt fails the parity test).
DIFFUSERS_ALIAS_OVERRIDES = {
    "dpmpp_2m": {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    "dpmpp_2m_karras": {
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "use_karras_sigmas": True,
    },
}


def fake_unet(x: np.ndarray, t: float) -> np.ndarray:
    """A deterministic stand-in for the U-Net: bounded, nonlinear in x, varies with t."""
    t = float(t)
    out = 0.9 * np.tanh(x) + 0.1 * np.sin(0.37 * x + 0.013 * t) + 0.02 * np.cos(0.007 * t)
    return out.astype(np.float32)


def diffusers_module(class_name: str):
    return importlib.import_module(f"diffusers.schedulers.{DIFFUSERS_MODULES[class_name]}")


def class_name_of(alias: str) -> str:
    return SCHEDULERS.get(alias, alias)


def make_diffusers_scheduler(alias: str, config: dict):
    class_name = class_name_of(alias)
    cls = getattr(diffusers_module(class_name), class_name)
    return cls.from_config(config, **DIFFUSERS_ALIAS_OVERRIDES.get(alias, {}))


def img2img_start(num_inference_steps: int, strength: float, order: int) -> int:
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - init_timestep, 0) * order


def run_diffusers(
    alias, config, steps, strength, initial, image, step_noises, monkeypatch, eta=0.0
):
    """diffusers' StableDiffusion(Img2Img)Pipeline loop around the stand-in U-Net, with
    ``eta`` passed to a step that takes it, as the pipeline's prepare_extra_step_kwargs.

    Returns (final latents, timesteps used, full sigmas or None).
    """
    scheduler = make_diffusers_scheduler(alias, config)
    current = {"i": 0}

    def injected_noise(shape, generator=None, device=None, dtype=None, layout=None):
        noise = torch.from_numpy(step_noises[current["i"]])
        if tuple(noise.shape) != tuple(shape):
            raise AssertionError(f"noise of shape {tuple(shape)} requested")
        return noise.to(dtype=dtype or torch.float32)

    module = diffusers_module(class_name_of(alias))
    if hasattr(module, "randn_tensor"):  # deterministic samplers do not import it
        monkeypatch.setattr(module, "randn_tensor", injected_noise)

    extra_step_kwargs = {}
    if "eta" in inspect.signature(scheduler.step).parameters:
        extra_step_kwargs["eta"] = eta
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    if strength < 1.0:
        begin = img2img_start(steps, strength, scheduler.order)
        timesteps = timesteps[begin:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        latents = scheduler.add_noise(
            torch.from_numpy(image), torch.from_numpy(initial), timesteps[:1]
        )
    else:
        latents = torch.from_numpy(initial) * scheduler.init_noise_sigma
    for i, t in enumerate(timesteps):
        current["i"] = i
        x = scheduler.scale_model_input(latents, t)
        eps = torch.from_numpy(fake_unet(x.numpy(), t))
        latents = scheduler.step(eps, t, latents, **extra_step_kwargs).prev_sample
    sigmas = getattr(scheduler, "sigmas", None)
    sigmas = None if sigmas is None else np.asarray(sigmas, dtype=np.float32)
    return latents.numpy(), np.asarray(timesteps), sigmas


def run_sdrt(alias, config, steps, strength, initial, image, step_noises, eta=0.0):
    """The loop sdrt's pipeline runs. Returns (final latents, plan)."""
    scheduler = create_scheduler(alias, config)
    plan = scheduler.plan(steps, strength=strength, eta=eta)
    if strength < 1.0:
        latents = scheduler.add_noise(plan, image, initial, 0)
    else:
        latents = initial * plan.init_noise_sigma
    state = scheduler.initial_state(plan)
    for i, t in enumerate(plan.timesteps):
        x = scheduler.scale_model_input(plan, latents, i)
        eps = fake_unet(x, t)
        noise = step_noises[i] if scheduler.draws_noise(plan) else None
        result = scheduler.step(plan, state, eps, i, latents, noise=noise)
        latents, state = result.prev_sample, result.state
    return latents, plan


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: error relative to the latents' scale."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12))
