"""The scheduler base classes: the checks of plan and step, and what the algorithms share.

A scheduler is an immutable object made from a config (``config.py``). ``plan(steps,
strength)`` makes the per-call schedule once (host numpy, ``schedule.py``); ``step`` is a
pure function of the plan, the multistep history passed in (``state``) and the arrays,
and returns the new history. Nothing is counted inside the object, so one scheduler
serves many threads and calls.

Array code uses the namespace of its array arguments (``x.__array_namespace__()``), so
numpy on the CPU and cupy on a GPU run the same lines. Scalar coefficients are Python
floats: with a float32 array they keep the result float32 (NEP 50 "weak" scalars).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sdrt.arrays import namespace_of
from sdrt.errors import InputError, ParameterError
from sdrt.schedulers.config import NoiseScheduleConfig, config_fields, make_config
from sdrt.schedulers.schedule import (
    Plan,
    alphas_cumprod_for,
    full_plan,
    repeated_noise_level,
)


@dataclass(frozen=True)
class NoHistory:
    """The state of single-step samplers: nothing carries over between steps."""


@dataclass(frozen=True, eq=False)
class StepResult:
    prev_sample: Any
    state: Any
    denoised: Any = None  # the model's estimate of the clean latents, where the sampler forms one


def array_namespace(x):
    """numpy for numpy arrays, cupy for cupy arrays (both implement the array API)."""
    if type(x).__module__.startswith("cupy"):  # cupy's ndarray has no __array_namespace__
        return namespace_of(x)
    if hasattr(x, "__array_namespace__"):
        return x.__array_namespace__()
    if isinstance(x, np.ndarray):  # numpy < 2
        return np
    raise InputError(f"expected a numpy or cupy array; got {type(x).__name__}")


def clip_predicted_original(config: NoiseScheduleConfig, pred_original):
    """diffusers' clip_sample: x0 clipped to [-clip_sample_range, clip_sample_range] where
    the config's clip_sample is set (the configs with those keys: DDIM, DDPM, Heun, LCM)."""
    if not config.clip_sample:
        return pred_original
    limit = config.clip_sample_range
    return array_namespace(pred_original).clip(pred_original, -limit, limit)


def check_same_shape(name: str, array, reference, reference_name: str = "sample") -> None:
    if tuple(array.shape) != tuple(reference.shape):
        raise InputError(
            f"{name} has shape {tuple(array.shape)}; expected the shape of {reference_name} "
            f"{tuple(reference.shape)}"
        )


class Scheduler:
    """Base of all schedulers: config, plan-making with img2img strength, checks.

    Subclasses set ``name`` (the diffusers class name), ``Config``, ``State`` (the
    multistep history ``step`` passes on; NoHistory for single-step samplers), ``order``
    (U-Net calls per step, as diffusers' ``scheduler.order``), ``needs_noise`` (draws noise
    whatever the eta), ``takes_eta``, and
    implement ``full_schedule``, ``_update`` (the algorithm's step, on the arguments
    ``step`` has checked) and, where they differ from the defaults, the rest.
    """

    name: ClassVar[str]
    Config: ClassVar[type[NoiseScheduleConfig]]
    State: ClassVar[type] = NoHistory
    order: ClassVar[int] = 1
    needs_noise: ClassVar[bool] = False
    # Whether step takes diffusers' `eta` (DDIM, TCD). diffusers' pipelines pass eta only
    # to a step that accepts it (prepare_extra_step_kwargs): the others ignore it.
    takes_eta: ClassVar[bool] = False

    def __init__(self, config: NoiseScheduleConfig):
        if not isinstance(config, self.Config):
            raise InputError(
                f"{self.name} expects a {self.Config.__name__}; got {type(config).__name__}"
            )
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod_for(config))

    def __setattr__(self, key, value):
        raise AttributeError(f"{self.name} is immutable; cannot set {key!r}")

    def __repr__(self) -> str:
        return f"{self.name}({self.config})"

    @classmethod
    def from_config(cls, values: dict[str, Any], **overrides) -> Scheduler:
        """Make the scheduler from scheduler_config.json values plus user overrides.

        Unknown keys in the file are ignored (as diffusers' from_config does); an unknown
        override is a user mistake and raises InputError listing the valid keys.
        """
        valid = config_fields(cls.Config)
        unknown = sorted(k for k in overrides if k not in valid)
        if unknown:
            raise InputError(
                f"{cls.name}: unknown config override(s) {', '.join(unknown)}; "
                f"valid keys: {', '.join(valid)}"
            )
        return cls(make_config(cls.Config, {**values, **overrides}, cls.name))

    # -- plan --------------------------------------------------------------------------

    def full_schedule(self, num_inference_steps: int) -> Plan:
        """The whole schedule (strength 1), with begin_index 0."""
        raise NotImplementedError

    def max_inference_steps(self) -> int:
        return self.config.num_train_timesteps

    def plan(self, num_inference_steps: int, strength: float = 1.0, eta: float = 0.0) -> Plan:
        """The call's schedule; ``eta`` as diffusers' pipelines pass it to ``step`` (kept by
        the schedulers that take it, ignored by the others, as in diffusers)."""
        if isinstance(num_inference_steps, bool) or not isinstance(
            num_inference_steps, (int, np.integer)
        ):
            raise InputError(
                f"num_inference_steps must be an integer; got {type(num_inference_steps).__name__}"
            )
        num_inference_steps = int(num_inference_steps)
        limit = self.max_inference_steps()
        if not 1 <= num_inference_steps <= limit:
            raise ParameterError(
                f"{self.name}: {{num_inference_steps}} must be in [1, {limit}]; got "
                f"{num_inference_steps}"
            )
        if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)):
            raise InputError(f"strength must be a number in (0, 1]; got {type(strength).__name__}")
        strength = float(strength)
        if not 0.0 < strength <= 1.0:
            raise InputError(f"strength must be in (0, 1]; got {strength}")
        eta = self.check_eta(eta)
        full = self.full_schedule(num_inference_steps)
        problem = self.schedule_problem(full)
        if problem is not None:
            raise ParameterError(
                "{scheduler}: {num_inference_steps}={steps} {problem} (timestep_spacing="
                "{spacing!r}, steps_offset={offset}); expected {num_inference_steps} <= {most}",
                scheduler=self.name,
                steps=num_inference_steps,
                problem=problem,
                spacing=self.config.timestep_spacing,
                offset=self.config.steps_offset,
                most=self._most_steps_below(num_inference_steps),
            )
        # img2img, as diffusers' StableDiffusionImg2ImgPipeline.get_timesteps does it.
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        begin_index = t_start * self.order
        timesteps = full.schedule_timesteps[begin_index:]
        if len(timesteps) == 0:
            raise InputError(
                f"strength={strength} with num_inference_steps={num_inference_steps} leaves no "
                f"denoising step; expected num_inference_steps * strength >= 1"
            )
        return dataclasses.replace(
            full,
            timesteps=timesteps,
            begin_index=begin_index,
            eta=eta if self.takes_eta else 0.0,
        )

    def check_eta(self, eta) -> float:
        """eta as a float: finite and >= 0 for every scheduler; at most 1 for those that
        take it (TCD's gamma is a fraction of the step, DDIM's eta 1 is DDPM's variance)."""
        if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)):
            raise ParameterError(f"{{eta}} must be a number; got {type(eta).__name__}")
        eta = float(eta)
        if not (math.isfinite(eta) and eta >= 0.0):
            raise ParameterError(f"{{eta}} must be a finite number >= 0; got {eta}")
        if self.takes_eta and eta > 1.0:
            raise ParameterError(f"{self.name}: {{eta}} must be in [0, 1]; got {eta:g}")
        return eta

    def draws_noise(self, plan: Plan) -> bool:
        """Whether a loop over ``plan`` draws one noise array per U-Net call for ``step``
        (sdrt/noise.py): the samplers that always add noise, and those that take eta with
        an eta > 0."""
        return self.needs_noise or plan.eta > 0

    def steps_in(self, plan: Plan) -> int:
        """The denoising steps ``plan`` runs, counted as the user asked for them (as
        diffusers' progress bar counts them): PNDM's warm-up runs 21 U-Net calls for 20
        steps and Heun 39, both 20 steps here; img2img runs int(steps * strength)."""
        return plan.num_inference_steps - plan.begin_index // self.order

    def steps_done(self, plan: Plan, calls: int) -> int:
        """The steps done after ``calls`` of the plan's U-Net calls, as diffusers' progress
        bar advances: the calls beyond a steps * order count are warm-up (PNDM's extra
        call), then one step per ``order`` calls, and all of them after the last call."""
        total_calls, steps = len(plan.timesteps), self.steps_in(plan)
        if calls >= total_calls:
            return steps
        warm_up = max(total_calls - steps * self.order, 0)
        return min(max(calls // self.order - warm_up // self.order, 0), steps)

    def schedule_problem(self, full: Plan) -> str | None:
        """Why the algorithm cannot run this whole schedule, or None. Near as many steps as
        training timesteps, the spacing can plan a timestep past the training range or
        two steps at one noise level; diffusers plans them too, then fails in ``step``
        (IndexError) or returns NaN. The base runs every schedule."""
        return None

    def _most_steps_below(self, num_inference_steps: int) -> int:
        """The largest step count under ``num_inference_steps`` whose schedule runs (0: none;
        only for the error message, so a plain search)."""
        for steps in range(num_inference_steps - 1, 0, -1):
            try:
                if self.schedule_problem(self.full_schedule(steps)) is None:
                    return steps
            except InputError:  # too few steps for the algorithm (PNDM's Runge-Kutta start)
                return 0
        return 0

    def initial_state(self, plan: Plan):
        return self.State()

    # -- per step ----------------------------------------------------------------------

    def schedule_index(self, plan: Plan, i: int) -> int:
        """Position in the full schedule of plan.timesteps[i]; checks i."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise InputError(f"step index must be an integer; got {type(i).__name__}")
        if not 0 <= i < len(plan.timesteps):
            raise InputError(
                f"step index must be in [0, {len(plan.timesteps) - 1}] for this plan; got {i}"
            )
        return plan.begin_index + int(i)

    def scale_model_input(self, plan: Plan, x, i: int):
        """The U-Net input for step i; identity for samplers that work in alpha_bar."""
        self.schedule_index(plan, i)
        return x

    def step(self, plan: Plan, state, model_output, i: int, sample, noise=None) -> StepResult:
        """One step from plan.timesteps[i]: the checks, then the algorithm's ``_update``.

        ``state`` is initial_state(plan) or the previous step's; ``noise`` (standard
        normal, drawn by the caller, the shape of ``sample``) where ``noise_needed`` says.
        """
        index = self.schedule_index(plan, i)
        self.check_step_inputs(state, model_output, sample, noise, self.noise_needed(plan, index))
        return self._update(plan, state, model_output, index, sample, noise)

    def noise_needed(self, plan: Plan, index: int) -> bool:
        """Whether the step at this schedule index adds the caller's noise."""
        return self.draws_noise(plan)

    def check_step_inputs(self, state, model_output, sample, noise, noise_needed: bool):
        if not isinstance(state, self.State):
            raise InputError(
                f"{self.name}.step expects the state from initial_state() or the previous step "
                f"({self.State.__name__}); got {type(state).__name__}"
            )
        check_same_shape("model_output", model_output, sample)
        if noise_needed:
            if noise is None:
                raise InputError(
                    f"{self.name}.step needs a `noise` array of shape {tuple(sample.shape)} "
                    "(standard normal, drawn by the caller); got None"
                )
            check_same_shape("noise", noise, sample)

    def _update(self, plan: Plan, state, model_output, index: int, sample, noise) -> StepResult:
        """The algorithm's step at ``index`` in the full schedule, on checked arguments."""
        raise NotImplementedError

    def add_noise(self, plan: Plan, original, noise, i: int):
        """Forward-diffuse ``original`` to the noise level of plan.timesteps[i]."""
        raise NotImplementedError


class AlphaBarScheduler(Scheduler):
    """Samplers that index alpha_bar by integer timestep (DDIM, DDPM, PNDM, LCM)."""

    def alpha_bar(self, timestep: int, final_alpha_cumprod: float | None = None) -> float:
        """alpha_bar at a timestep; a negative timestep means "after the last step"."""
        if timestep >= 0:
            return float(self.alphas_cumprod[int(timestep)])
        if final_alpha_cumprod is None:
            raise ValueError("timestep < 0 needs final_alpha_cumprod")
        return final_alpha_cumprod

    def schedule_problem(self, full: Plan) -> str | None:
        # These index alpha_bar by timestep: one outside [0, N) has no noise level.
        timesteps = full.schedule_timesteps
        n_train = self.config.num_train_timesteps
        outside = timesteps[(timesteps < 0) | (timesteps >= n_train)]
        if len(outside):
            return (
                f"plans timestep {int(outside[0])}, outside the training timesteps "
                f"0 to {n_train - 1}"
            )
        return None

    def final_alpha_cumprod(self) -> float:
        """alpha_bar "after" the last step by set_alpha_to_one (DDIM, PNDM, LCM): 1, or
        alpha_bar at timestep 0."""
        return 1.0 if self.config.set_alpha_to_one else float(self.alphas_cumprod[0])

    def add_noise(self, plan: Plan, original, noise, i: int):
        index = self.schedule_index(plan, i)
        check_same_shape("noise", noise, original, "original")
        alpha_prod = self.alphas_cumprod[int(plan.schedule_timesteps[index])]
        # diffusers takes the square roots in float32, from the float32 alpha_bar.
        sqrt_alpha_prod = float(np.float32(alpha_prod) ** np.float32(0.5))
        sqrt_one_minus_alpha_prod = float((np.float32(1) - alpha_prod) ** np.float32(0.5))
        return sqrt_alpha_prod * original + sqrt_one_minus_alpha_prod * noise

    def predicted_original(self, model_output, sample, alpha_prod_t: float):
        """x0 from the model output, by prediction type (the DDIM/DDPM formulas)."""
        beta_prod_t = 1 - alpha_prod_t
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        if kind == "v_prediction":
            return alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
        return model_output  # "sample"


class SigmaScheduler(Scheduler):
    """Samplers that work in sigma = sqrt((1 - alpha_bar) / alpha_bar) (k-diffusion style)."""

    def sigma_plan(self, num_inference_steps: int, timesteps, sigmas: np.ndarray) -> Plan:
        """The whole schedule's plan, with diffusers' init_noise_sigma for these sigmas."""
        return full_plan(
            timesteps,
            num_inference_steps,
            init_noise_sigma=self.init_noise_sigma_for(sigmas),
            sigmas=sigmas,
        )

    def scale_model_input(self, plan: Plan, x, i: int):
        sigma = float(plan.sigmas[self.schedule_index(plan, i)])
        return x / ((sigma**2 + 1) ** 0.5)

    def add_noise(self, plan: Plan, original, noise, i: int):
        index = self.schedule_index(plan, i)
        check_same_shape("noise", noise, original, "original")
        return original + noise * float(plan.sigmas[index])

    def predicted_original(self, model_output, sample, sigma: float):
        """x0 from the model output at noise level sigma, by prediction type."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample - sigma * model_output
        if kind == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        return model_output  # "sample"

    def init_noise_sigma_for(self, sigmas: np.ndarray) -> float:
        """diffusers' init_noise_sigma: sigma_max, or sqrt(sigma_max^2 + 1) for "leading"."""
        max_sigma = float(np.max(sigmas))
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5


class VPSigmaScheduler(Scheduler):
    """Multistep solvers that keep sigmas but noise as x = alpha * x0 + sigma_t * eps
    (DPM-Solver, UniPC): unscaled model input, init_noise_sigma 1."""

    def schedule_problem(self, full: Plan) -> str | None:
        return repeated_noise_level(full.schedule_timesteps, full.sigmas)

    @staticmethod
    def alpha_sigma(sigma: float) -> tuple[float, float]:
        """(alpha_t, sigma_t) of the variance-preserving process at noise level sigma."""
        alpha_t = 1 / (sigma**2 + 1) ** 0.5
        return alpha_t, sigma * alpha_t

    @classmethod
    def log_snr(cls, sigma: float) -> float:
        """lambda = log(alpha_t) - log(sigma_t); +inf at sigma = 0 (the clean end)."""
        if sigma == 0:
            return math.inf
        alpha_t, sigma_t = cls.alpha_sigma(sigma)
        return math.log(alpha_t) - math.log(sigma_t)

    def add_noise(self, plan: Plan, original, noise, i: int):
        index = self.schedule_index(plan, i)
        check_same_shape("noise", noise, original, "original")
        alpha_t, sigma_t = self.alpha_sigma(float(plan.sigmas[index]))
        return alpha_t * original + sigma_t * noise

    def convert_to_data(self, model_output, sample, sigma: float):
        """The model output as a prediction of x0 (the "data prediction" of DPM-Solver++)."""
        alpha_t, sigma_t = self.alpha_sigma(sigma)
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (sample - sigma_t * model_output) / alpha_t
        if kind == "v_prediction":
            return alpha_t * sample - sigma_t * model_output
        return model_output  # "sample"

    def convert_to_noise(self, model_output, sample, sigma: float):
        """The model output as a prediction of the noise (DPM-Solver, UniPC's predict_x0=False)."""
        alpha_t, sigma_t = self.alpha_sigma(sigma)
        kind = self.config.prediction_type
        if kind == "epsilon":
            return model_output
        if kind == "v_prediction":
            return alpha_t * model_output + sigma_t * sample
        return (sample - alpha_t * model_output) / sigma_t  # "sample"
