"""What every scheduler shares: config, noise schedule, plan, state, step result, checks.

A scheduler is an immutable object made from a config. ``plan(steps, strength)`` makes
the per-call schedule once (host numpy); ``step`` is a pure function of the plan, the
multistep history passed in (``state``) and the arrays, and returns the new history.
Nothing is counted inside the object, so one scheduler serves many threads and calls.

Array code uses the namespace of its array arguments (``x.__array_namespace__()``), so
numpy on the CPU and cupy on a GPU run the same lines. Scalar coefficients are Python
floats: with a float32 array they keep the result float32 (NEP 50 "weak" scalars).
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sdrt.arrays import namespace_of
from sdrt.errors import InputError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def check_choice(key: str, value: Any, choices: tuple, scheduler: str) -> None:
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise InputError(f"{scheduler}: {key}={value!r} is not supported; expected one of {valid}")


def _has_kind(value: Any, kind: str) -> bool:
    """Whether a config value fits one alternative of its field's annotation."""
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("tuple[") and kind.endswith(", ...]"):  # e.g. tuple[float, ...]
        item_kind = kind[len("tuple[") : -len(", ...]")]
        return isinstance(value, tuple) and all(_has_kind(item, item_kind) for item in value)
    raise TypeError(f"config annotation {kind!r} has no check")


def _describe_kind(kind: str) -> str:
    if kind.startswith("tuple["):  # what JSON spells as a list
        return f"a list of {kind[len('tuple[') : -len(', ...]')]}"
    return kind


@dataclass(frozen=True, kw_only=True)
class NoiseScheduleConfig:
    """The keys of diffusers' scheduler_config.json that define the training noise schedule.

    Defaults are those of diffusers' DDIMScheduler; each scheduler's config subclass
    restates the defaults its diffusers class has, so ``from_config`` semantics hold:
    a key present in the file wins, an absent key takes the class's default.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    # Subclasses whose diffusers class has `rescale_betas_zero_snr` declare that field;
    # the sigma-based ones also floor the terminal alpha_bar, as their diffusers class does.
    TERMINAL_ALPHA_FLOOR: ClassVar[bool] = False

    # Each subclass narrows these to what its algorithm implements.
    PREDICTION_TYPES: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction", "sample")

    def validate(self, scheduler: str) -> None:
        """Raise InputError for a value of the wrong type or that this scheduler does not
        implement."""
        self.check_types(scheduler)
        if self.trained_betas is None:
            check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES, scheduler)
        elif len(self.trained_betas) != self.num_train_timesteps:
            raise InputError(
                f"{scheduler}: trained_betas has {len(self.trained_betas)} entries; expected "
                f"num_train_timesteps={self.num_train_timesteps}"
            )
        check_choice("prediction_type", self.prediction_type, self.PREDICTION_TYPES, scheduler)
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS, scheduler)
        if self.num_train_timesteps < 2:
            raise InputError(
                f"{scheduler}: num_train_timesteps must be >= 2; got {self.num_train_timesteps}"
            )
        for key, choices in self.unsupported_values().items():
            check_choice(key, getattr(self, key), choices, scheduler)

    def check_types(self, scheduler: str) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kinds = [kind.strip() for kind in str(field.type).split("|")]
            if not any(_has_kind(value, kind) for kind in kinds):
                expected = " or ".join(_describe_kind(kind) for kind in kinds)
                raise InputError(
                    f"{scheduler}: config key {field.name} must be {expected}; "
                    f"got {reprlib.repr(value)} ({type(value).__name__})"
                )

    def unsupported_values(self) -> dict[str, tuple]:
        """Keys whose diffusers options this runtime does not implement -> values it does."""
        return {}

    @classmethod
    def normalized(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Values as diffusers' __init__ rewrites them (e.g. another solver's solver_type)."""
        return values


def config_fields(config_class: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(config_class))


def make_config(config_class: type, values: dict[str, Any], scheduler: str):
    """Build a frozen config from file values (unknown keys ignored, as diffusers does)."""
    known = set(config_fields(config_class))
    kwargs = {k: v for k, v in config_class.normalized(dict(values)).items() if k in known}
    if isinstance(kwargs.get("trained_betas"), (list, tuple)):  # JSON has lists, not tuples
        kwargs["trained_betas"] = tuple(kwargs["trained_betas"])
    try:
        config = config_class(**kwargs)
    except TypeError as exc:  # a wrong-typed value that the dataclass cannot take
        raise InputError(f"{scheduler}: invalid scheduler config: {exc}") from exc
    config.validate(scheduler)
    return config


# --- the training noise schedule ---------------------------------------------------------


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule ("squaredcos_cap_v2"), as diffusers computes them."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(
            1
            - alpha_bar((i + 1) / num_diffusion_timesteps) / alpha_bar(i / num_diffusion_timesteps),
            max_beta,
        )
        for i in range(num_diffusion_timesteps)
    ]
    return np.asarray(betas, dtype=np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas to zero terminal SNR (arXiv 2305.08891, algorithm 1), in float32."""
    alphas_cumprod = np.cumprod((1.0 - betas).astype(np.float64)).astype(np.float32)
    sqrt_bar = np.sqrt(alphas_cumprod)
    first, last = sqrt_bar[0].copy(), sqrt_bar[-1].copy()
    sqrt_bar = (sqrt_bar - last) * (first / (first - last))
    bar = sqrt_bar**2
    alphas = np.concatenate([bar[:1], bar[1:] / bar[:-1]])
    return (1 - alphas).astype(np.float32)


def alphas_cumprod_for(config: NoiseScheduleConfig) -> np.ndarray:
    """Cumulative product of (1 - beta) in float32, read-only.

    diffusers builds betas in float32 and torch's CPU cumprod accumulates in double
    before rounding each entry to float32; the same is done here.
    """
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float32)
    elif config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, n).astype(np.float32)
    elif config.beta_schedule == "scaled_linear":
        betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n).astype(np.float32) ** 2
    else:  # squaredcos_cap_v2 (validated before)
        betas = betas_for_alpha_bar(n)
    rescale = getattr(config, "rescale_betas_zero_snr", False)
    if rescale:
        betas = rescale_zero_terminal_snr(betas)
    alphas_cumprod = np.cumprod((np.float32(1.0) - betas).astype(np.float64)).astype(np.float32)
    if rescale and config.TERMINAL_ALPHA_FLOOR:
        alphas_cumprod[-1] = 2**-24  # keeps the terminal sigma finite
    alphas_cumprod.setflags(write=False)
    return alphas_cumprod


def spaced_timesteps(config: NoiseScheduleConfig, num_inference_steps: int) -> np.ndarray:
    """Descending timesteps by ``timestep_spacing`` (float64; linspace is not rounded).

    The common recipe of DDIM, DDPM, Euler, Euler ancestral, Heun and LMS; callers round
    or cast as their diffusers class does.
    """
    n_train = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        return np.linspace(0, n_train - 1, num_inference_steps)[::-1].copy()
    if config.timestep_spacing == "leading":
        step_ratio = n_train // num_inference_steps
        timesteps = (
            (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].astype(np.float64)
        )
        return timesteps + config.steps_offset
    step_ratio = n_train / num_inference_steps  # trailing
    return np.round(np.arange(n_train, 0, -step_ratio)) - 1


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Karras et al. (2022) noise levels, rho = 7, from sigma_max down to sigma_min."""
    rho = 7.0
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma, by interpolation in log sigma."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sigma(t) = sqrt((1 - alpha_bar) / alpha_bar) for every training timestep, float32."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def interpolated_sigmas(alphas_cumprod: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """Training sigmas linearly interpolated at (possibly fractional) timesteps, float64."""
    sigmas = train_sigmas(alphas_cumprod)
    return np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)


def final_sigma(final_sigmas_type: str, alphas_cumprod: np.ndarray) -> float:
    """The noise level after the last step: 0 ("zero"), or the lowest training sigma
    ("sigma_min")."""
    if final_sigmas_type == "sigma_min":
        return float(train_sigmas(alphas_cumprod[:1])[0])
    return 0.0


# --- what a call carries -----------------------------------------------------------------


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Plan:
    """The schedule of one call, made by ``Scheduler.plan``; host numpy, read-only.

    ``timesteps`` has one entry per U-Net call, already sliced for img2img strength;
    ``begin_index`` is where it starts in the full schedule (``schedule_timesteps``).
    ``sigmas`` is the full schedule's noise levels, one more than its timesteps (the
    final level), for the samplers that keep them as diffusers' do; None for those
    that index alpha_bar by timestep. Holding arrays, plans compare by identity.
    """

    timesteps: np.ndarray
    init_noise_sigma: float
    num_inference_steps: int
    begin_index: int
    schedule_timesteps: np.ndarray
    sigmas: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "timesteps", _read_only(self.timesteps))
        object.__setattr__(self, "schedule_timesteps", _read_only(self.schedule_timesteps))
        if self.sigmas is not None:
            object.__setattr__(self, "sigmas", _read_only(self.sigmas))


def full_plan(
    timesteps: np.ndarray,
    num_inference_steps: int,
    *,
    init_noise_sigma: float = 1.0,
    sigmas: np.ndarray | None = None,
) -> Plan:
    """The plan of a whole schedule (strength 1): every timestep, from begin_index 0."""
    return Plan(
        timesteps=timesteps,
        init_noise_sigma=init_noise_sigma,
        num_inference_steps=num_inference_steps,
        begin_index=0,
        schedule_timesteps=timesteps,
        sigmas=sigmas,
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
    (U-Net calls per step, as diffusers' ``scheduler.order``), ``needs_noise``, and
    implement ``full_schedule``, ``step`` and, where they differ from the defaults, the rest.
    """

    name: ClassVar[str]
    Config: ClassVar[type[NoiseScheduleConfig]]
    State: ClassVar[type] = NoHistory
    order: ClassVar[int] = 1
    needs_noise: ClassVar[bool] = False

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

    def plan(self, num_inference_steps: int, strength: float = 1.0) -> Plan:
        if isinstance(num_inference_steps, bool) or not isinstance(
            num_inference_steps, (int, np.integer)
        ):
            raise InputError(
                f"num_inference_steps must be an integer; got {type(num_inference_steps).__name__}"
            )
        num_inference_steps = int(num_inference_steps)
        limit = self.max_inference_steps()
        if not 1 <= num_inference_steps <= limit:
            raise InputError(
                f"{self.name}: num_inference_steps must be in [1, {limit}]; got {num_inference_steps}"
            )
        if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)):
            raise InputError(f"strength must be a number in (0, 1]; got {type(strength).__name__}")
        strength = float(strength)
        if not 0.0 < strength <= 1.0:
            raise InputError(f"strength must be in (0, 1]; got {strength}")
        full = self.full_schedule(num_inference_steps)
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
        return dataclasses.replace(full, timesteps=timesteps, begin_index=begin_index)

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

    def check_step_inputs(self, state, model_output, sample, noise, noise_needed: bool):
        if not isinstance(state, self.state_class()):
            raise InputError(
                f"{self.name}.step expects the state from initial_state() or the previous step "
                f"({self.state_class().__name__}); got {type(state).__name__}"
            )
        check_same_shape("model_output", model_output, sample)
        if noise_needed:
            if noise is None:
                raise InputError(
                    f"{self.name}.step needs a `noise` array of shape {tuple(sample.shape)} "
                    "(standard normal, drawn by the caller); got None"
                )
            check_same_shape("noise", noise, sample)

    def state_class(self) -> type:
        return self.State

    def step(self, plan: Plan, state, model_output, i: int, sample, noise=None) -> StepResult:
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

    def sigma_schedule(self, num_inference_steps: int, use_karras: bool):
        """Timesteps (float32) and sigmas (float32, final level appended) of the k-samplers.

        Shared by Euler, Euler ancestral, Heun and LMS, which build them the same way.
        """
        cfg = self.config
        timesteps = spaced_timesteps(cfg, num_inference_steps).astype(np.float32)
        sigmas = interpolated_sigmas(self.alphas_cumprod, timesteps)
        if use_karras:
            sigma_min = getattr(cfg, "sigma_min", None)
            sigma_max = getattr(cfg, "sigma_max", None)
            sigma_min = sigma_min if sigma_min is not None else float(sigmas[-1])
            sigma_max = sigma_max if sigma_max is not None else float(sigmas[0])
            sigmas = karras_sigmas(sigma_min, sigma_max, num_inference_steps)
            log_sigmas = np.log(train_sigmas(self.alphas_cumprod))
            timesteps = sigma_to_t(sigmas, log_sigmas).astype(np.float32)
        sigma_last = final_sigma(getattr(cfg, "final_sigmas_type", "zero"), self.alphas_cumprod)
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        return timesteps, sigmas

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


def multistep_timesteps(
    config: NoiseScheduleConfig, num_inference_steps: int, last_timestep: int
) -> np.ndarray:
    """Descending int64 timesteps of the multistep solvers (DPM-Solver, UniPC).

    Unlike ``spaced_timesteps`` they space num_inference_steps + 1 points and drop the
    last, so the final step lands beyond timestep 0.
    """
    n = num_inference_steps
    if config.timestep_spacing == "linspace":
        timesteps = np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1]
    elif config.timestep_spacing == "leading":
        step_ratio = last_timestep // (n + 1)
        timesteps = (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1] + config.steps_offset
    else:  # trailing
        step_ratio = config.num_train_timesteps / n
        timesteps = np.arange(last_timestep, 0, -step_ratio).round() - 1
    return timesteps.copy().astype(np.int64)


class VPSigmaScheduler(Scheduler):
    """Multistep solvers that keep sigmas but noise as x = alpha * x0 + sigma_t * eps
    (DPM-Solver, UniPC): unscaled model input, init_noise_sigma 1."""

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
