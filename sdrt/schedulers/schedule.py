"""Schedule math: the training noise schedule, inference timesteps and sigmas, the plan.

Host numpy, computed once per scheduler (``alphas_cumprod_for``) or once per call
(timesteps, sigmas, the ``Plan``), with the float32/float64 roundings of diffusers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sdrt.schedulers.config import NoiseScheduleConfig

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


# --- inference timesteps and sigmas ------------------------------------------------------


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


def karras_schedule(
    alphas_cumprod: np.ndarray,
    num_inference_steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Karras sigmas (float64) from sigma_max down to sigma_min, by default the training
    range, and the fractional training timestep of each (float64)."""
    sigmas = train_sigmas(alphas_cumprod)
    sigma_min = float(sigmas[0]) if sigma_min is None else sigma_min
    sigma_max = float(sigmas[-1]) if sigma_max is None else sigma_max
    karras = karras_sigmas(sigma_min, sigma_max, num_inference_steps)
    return karras, sigma_to_t(karras, np.log(sigmas))


def sigma_schedule(
    config: NoiseScheduleConfig, alphas_cumprod: np.ndarray, num_inference_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Timesteps (float32) and sigmas (float32, final level appended) of the k-samplers.

    Shared by Euler, Euler ancestral, Heun and LMS, which build them the same way; the
    config keys that only some of them have (use_karras_sigmas, sigma_min, sigma_max,
    final_sigmas_type) take diffusers' defaults where absent.
    """
    timesteps = spaced_timesteps(config, num_inference_steps).astype(np.float32)
    sigmas = interpolated_sigmas(alphas_cumprod, timesteps)
    if getattr(config, "use_karras_sigmas", False):
        # Karras between the planned sigmas, not the training range, as diffusers does.
        sigma_min = getattr(config, "sigma_min", None)
        sigma_max = getattr(config, "sigma_max", None)
        sigma_min = sigma_min if sigma_min is not None else float(sigmas[-1])
        sigma_max = sigma_max if sigma_max is not None else float(sigmas[0])
        sigmas, timesteps = karras_schedule(
            alphas_cumprod, num_inference_steps, sigma_min, sigma_max
        )
        timesteps = timesteps.astype(np.float32)
    sigma_last = final_sigma(getattr(config, "final_sigmas_type", "zero"), alphas_cumprod)
    sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
    return timesteps, sigmas


def consistency_timesteps(
    num_train_timesteps: int,
    original_inference_steps: int,
    num_inference_steps: int,
    strength: float = 1.0,
) -> np.ndarray:
    """Descending int64 timesteps of the consistency samplers (LCM, TCD): evenly spaced
    picks from the grid of ``original_inference_steps`` the model was distilled on (the
    part of it that ``strength`` keeps, as LCM's img2img passes it to set_timesteps)."""
    k = num_train_timesteps // original_inference_steps
    grid = int(original_inference_steps * strength)
    origin = np.arange(1, grid + 1) * k - 1  # the distillation grid
    origin = origin[::-1].copy()
    picks = np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)
    return origin[np.floor(picks).astype(np.int64)].astype(np.int64)


def repeated_noise_level(timesteps: np.ndarray, sigmas: np.ndarray) -> str | None:
    """Where two planned steps share a noise level (a timestep past the training range
    takes the last one's sigma): the problem, for the samplers that divide by the
    difference (LMS, DPM-Solver, UniPC); None where every sigma is below the one before."""
    planned = sigmas[: len(timesteps)]
    same = np.flatnonzero(np.diff(planned) >= 0)
    if len(same) == 0:
        return None
    first, second = timesteps[same[0]], timesteps[same[0] + 1]
    return f"plans two steps at one noise level (timesteps {first:g} and {second:g})"


# --- the plan of one call -----------------------------------------------------------------


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
    that index alpha_bar by timestep. ``eta`` is the call's stochasticity, as diffusers'
    pipelines pass it to ``step`` (DDIM, TCD); 0 for the schedulers that take none.
    Holding arrays, plans compare by identity.
    """

    timesteps: np.ndarray
    init_noise_sigma: float
    num_inference_steps: int
    begin_index: int
    schedule_timesteps: np.ndarray
    sigmas: np.ndarray | None = None
    eta: float = 0.0

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
