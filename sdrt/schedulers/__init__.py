"""Numpy (array API) schedulers with the numerics of diffusers' schedulers.

    config = load_scheduler_config(model_folder)
    sched = create_scheduler("euler_a", config, **overrides)
    plan = sched.plan(num_inference_steps, strength=1.0, eta=0.0)
    state = sched.initial_state(plan)
    for i, t in enumerate(plan.timesteps):
        x = sched.scale_model_input(plan, latents, i)
        eps = unet(x, t)
        res = sched.step(plan, state, eps, i, latents, noise=... if sched.draws_noise(plan) else None)
        latents, state = res.prev_sample, res.state

Any diffusers scheduler config is accepted by any scheduler, as diffusers' from_config
does: keys the algorithm does not know are ignored, absent keys take its defaults.

Numerics follow diffusers (the parity tests hold whole loops to 1e-5 relative in fp32).
``StepResult.denoised`` is the sampler's x0 estimate; None where the algorithm forms
none (PNDM, DPM-Solver with algorithm_type="dpmsolver", UniPC with predict_x0=False).

Not implemented (InputError naming the supported values): dynamic thresholding,
exponential / beta / Lu-lambda / flow sigmas, Euler's log_linear interpolation and
continuous timesteps, the SDE variants of DPM-Solver, learned DDPM variances, custom
timestep lists, Euler's s_churn (noise diffusers' default pipelines do not draw). ``eta``
(a ``plan`` argument, diffusers' pipeline argument) is taken by DDIM and TCD, in [0, 1],
and ignored by the others, as diffusers' pipelines ignore it. Where diffusers yields NaN, sdrt either rejects the config (UniPC
with predict_x0=False or lower_order_final=False and a final sigma of 0) or takes the
limit (UniPC bh1 with a final sigma of 0: the last step returns the x0 estimate).
"""

from __future__ import annotations

from typing import Any

from sdrt.errors import InputError
from sdrt.schedulers.base import NoHistory, Scheduler, StepResult
from sdrt.schedulers.config import load_scheduler_config
from sdrt.schedulers.ddim import DDIMScheduler
from sdrt.schedulers.ddpm import DDPMScheduler
from sdrt.schedulers.dpm_solver import DPMSolverMultistepScheduler
from sdrt.schedulers.euler import EulerDiscreteScheduler
from sdrt.schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
from sdrt.schedulers.heun import HeunDiscreteScheduler
from sdrt.schedulers.lcm import LCMScheduler
from sdrt.schedulers.lms import LMSDiscreteScheduler
from sdrt.schedulers.pndm import PNDMScheduler
from sdrt.schedulers.schedule import Plan
from sdrt.schedulers.tcd import TCDScheduler
from sdrt.schedulers.unipc import UniPCMultistepScheduler

# alias -> diffusers class name
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_karras": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lcm": "LCMScheduler",
    "ddpm": "DDPMScheduler",
    "tcd": "TCDScheduler",
}

# What an alias fixes beyond the class (user overrides still win).
ALIAS_OVERRIDES: dict[str, dict[str, Any]] = {
    "dpmpp_2m": {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    "dpmpp_2m_karras": {
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "use_karras_sigmas": True,
    },
}

SCHEDULER_CLASSES: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (
        DDIMScheduler,
        PNDMScheduler,
        LMSDiscreteScheduler,
        EulerDiscreteScheduler,
        EulerAncestralDiscreteScheduler,
        HeunDiscreteScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
        LCMScheduler,
        DDPMScheduler,
        TCDScheduler,
    )
}

__all__ = [
    "SCHEDULERS",
    "NoHistory",
    "Plan",
    "Scheduler",
    "StepResult",
    "create_scheduler",
    "load_scheduler_config",
    "scheduler_class_name",
    *SCHEDULER_CLASSES,
]


def _valid_names() -> str:
    return ", ".join([*SCHEDULERS, *SCHEDULER_CLASSES])


def create_scheduler(name: str, config: dict[str, Any] | None = None, **overrides) -> Scheduler:
    """A scheduler by diffusers class name or short alias, from a scheduler_config dict.

    ``config`` is the content of scheduler_config.json (None: the class's defaults);
    ``overrides`` replace single keys. Unknown names, unknown override keys and values
    the algorithm does not implement raise InputError listing the valid choices.
    """
    if not isinstance(name, str):
        raise InputError(f"scheduler name must be a string; got {type(name).__name__}")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InputError(f"scheduler config must be a dict; got {type(config).__name__}")
    class_name = scheduler_class_name(name)
    overrides = {**ALIAS_OVERRIDES.get(name.strip().lower(), {}), **overrides}
    return SCHEDULER_CLASSES[class_name].from_config(config, **overrides)


def scheduler_class_name(name: str) -> str:
    """The diffusers class a scheduler name or alias stands for; InputError if none."""
    alias = name.strip().lower()
    if alias in SCHEDULERS:
        return SCHEDULERS[alias]
    if name in SCHEDULER_CLASSES:
        return name
    raise InputError(f"unknown scheduler {name!r}; expected one of {_valid_names()}")
