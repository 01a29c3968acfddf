"""Whole denoising loops in sdrt and in diffusers agree: every scheduler x the SD 1.5,
SD 2.1 (v-prediction) and SDXL configs x 1, 4, 20, 50 steps x strength 1.0 and 0.5."""

from __future__ import annotations

import numpy as np
import pytest
from scheduler_oracle import (
    MODEL_CONFIGS,
    img2img_start,
    make_diffusers_scheduler,
    relative_error,
    run_diffusers,
    run_sdrt,
)

from sdrt.errors import InputError
from sdrt.schedulers import SCHEDULERS, create_scheduler

# Final latents: max abs difference over max abs value (fp32 on both sides).
LATENT_RTOL = 1e-5
# The schedules. sdrt builds betas with numpy's linspace, diffusers with torch's; both
# round to float32, so a sigma may differ in its last bits: SIGMA_RTOL.
SIGMA_RTOL = 1e-6
# Each sigma is sqrt((1 - a) / a) of a = alphas_cumprod, a float32 product of up to 1000
# float32 factors (rescaled first with rescale_betas_zero_snr). Two correct float32
# implementations (numpy here, torch's kernels in diffusers, which differ by version and
# CPU) may round that product differently by a few units in the last place: a sequential
# float32 cumprod of SD's betas ends 9 eps from the float64 one. We allow 16 eps.
ALPHA_CUMPROD_RTOL = 16 * float(np.finfo(np.float32).eps)
TIMESTEP_ATOL = 1e-3  # fractional (Karras) timesteps; integer ones must be equal

# diffusers' schedulers call np.array on torch tensors, which numpy 2 warns about, and
# deprecate algorithm_type="dpmsolver", which a variant below still compares with.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`algorithm_types dpmsolver:FutureWarning"),
]


def assert_sigmas_match(actual: np.ndarray, expected: np.ndarray) -> None:
    """Sigmas equal up to float32 rounding of their alphas_cumprod.

    A relative error d in a moves sigma = sqrt((1 - a) / a) by d / (2 (1 - a)), which is
    d (1 + 1 / sigma^2) / 2: small sigmas (a near 1) amplify it, e.g. 10x at sigma 0.23.
    A zero sigma (the final one) must be exactly zero.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    zero = expected == 0
    np.testing.assert_array_equal(actual[zero], 0.0)
    sigma = expected[~zero]
    allowed = SIGMA_RTOL + ALPHA_CUMPROD_RTOL * (1 + 1 / sigma**2) / 2
    error = np.abs(actual[~zero] - sigma) / sigma
    worst = int(np.argmax(error / allowed)) if error.size else 0
    assert np.all(error <= allowed), (
        f"sigma {worst}: relative error {error[worst]:.3g} > allowed {allowed[worst]:.3g}"
    )


LATENT_SHAPE = (1, 4, 8, 8)
STEP_COUNTS = (1, 4, 20, 50)
STRENGTHS = (1.0, 0.5)


def loop_inputs(steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    initial = rng.standard_normal(LATENT_SHAPE, dtype=np.float32)
    image = rng.uniform(-1.5, 1.5, LATENT_SHAPE).astype(np.float32)
    # one noise draw per U-Net call (Heun makes up to 2 * steps calls)
    step_noises = rng.standard_normal((2 * steps, *LATENT_SHAPE), dtype=np.float32)
    return initial, image, step_noises


def allowed(alias: str, steps: int, strength: float) -> bool:
    """Settings the sampler (in diffusers too) cannot run: 1 step at strength 0.5."""
    return int(steps * strength) >= 1


CASES = [
    pytest.param(alias, model, steps, strength, id=f"{alias}-{model}-{steps}-{strength}")
    for alias in SCHEDULERS
    for model in MODEL_CONFIGS
    for steps in STEP_COUNTS
    for strength in STRENGTHS
    if allowed(alias, steps, strength)
]


@pytest.mark.parametrize(("alias", "model", "steps", "strength"), CASES)
def test_loop_matches_diffusers(alias, model, steps, strength, monkeypatch):
    config = MODEL_CONFIGS[model]
    initial, image, step_noises = loop_inputs(steps)
    expected, expected_timesteps, expected_sigmas = run_diffusers(
        alias, config, steps, strength, initial, image, step_noises, monkeypatch
    )
    actual, plan = run_sdrt(alias, config, steps, strength, initial, image, step_noises)

    assert actual.dtype == np.float32
    assert len(plan.timesteps) == len(expected_timesteps)
    if np.issubdtype(expected_timesteps.dtype, np.integer):
        np.testing.assert_array_equal(plan.timesteps, expected_timesteps)
    else:
        np.testing.assert_allclose(plan.timesteps, expected_timesteps, rtol=0, atol=TIMESTEP_ATOL)
    if plan.sigmas is not None and expected_sigmas is not None:
        assert_sigmas_match(plan.sigmas, expected_sigmas)
    error = relative_error(actual, expected)
    assert error <= LATENT_RTOL, f"relative error {error:.3g} > {LATENT_RTOL}"


@pytest.mark.parametrize("alias", list(SCHEDULERS))
@pytest.mark.parametrize("model", list(MODEL_CONFIGS))
def test_init_noise_sigma_matches_diffusers(alias, model):
    reference = make_diffusers_scheduler(alias, MODEL_CONFIGS[model])
    reference.set_timesteps(20)
    plan = create_scheduler(alias, MODEL_CONFIGS[model]).plan(20)
    assert plan.init_noise_sigma == pytest.approx(float(reference.init_noise_sigma), rel=1e-6)


@pytest.mark.parametrize("alias", list(SCHEDULERS))
def test_img2img_plan_starts_where_diffusers_does(alias):
    scheduler = create_scheduler(alias, MODEL_CONFIGS["sd15"])
    reference = make_diffusers_scheduler(alias, MODEL_CONFIGS["sd15"])
    reference.set_timesteps(20)
    for strength in (0.3, 0.75, 1.0):
        begin = img2img_start(20, strength, reference.order)
        plan = scheduler.plan(20, strength=strength)
        assert plan.begin_index == begin
        np.testing.assert_allclose(
            plan.timesteps, np.asarray(reference.timesteps[begin:]), rtol=0, atol=TIMESTEP_ATOL
        )


@pytest.mark.parametrize("alias", list(SCHEDULERS))
def test_strength_that_leaves_no_step_is_an_input_error(alias):
    scheduler = create_scheduler(alias, MODEL_CONFIGS["sd15"])
    with pytest.raises(InputError, match="leaves no denoising step"):
        scheduler.plan(1, strength=0.5)


# Config values beyond the three model configs: each variant runs 4 and 20 steps at both
# strengths on top of the SD 1.5 config (SD 2.1's for v-prediction variants).
VARIANTS = [
    ("pndm", "sd15", {"skip_prk_steps": False}),
    ("pndm", "sd21", {"skip_prk_steps": False, "timestep_spacing": "trailing"}),
    ("pndm", "sd15", {"timestep_spacing": "linspace", "set_alpha_to_one": True}),
    ("ddim", "sd15", {"clip_sample": True, "set_alpha_to_one": True}),
    ("ddim", "sd21", {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}),
    ("ddim", "sd15", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace"}),
    ("ddim", "sd15", {"prediction_type": "sample", "beta_schedule": "linear"}),
    ("euler", "sd15", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
    ("euler", "sd21", {"timestep_spacing": "trailing", "use_karras_sigmas": True}),
    ("euler", "sd15", {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}),
    ("euler_a", "sd21", {"timestep_spacing": "linspace"}),
    ("euler_a", "sd21", {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}),
    ("unipc", "sd21", {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}),
    ("lms", "sd15", {"rescale_betas_zero_snr": True}),  # unknown to LMS: ignored
    ("heun", "sd15", {"use_karras_sigmas": True}),
    ("heun", "sd21", {"clip_sample": True, "timestep_spacing": "trailing"}),
    ("lms", "sd15", {"use_karras_sigmas": True}),
    ("lms", "sd21", {"timestep_spacing": "linspace"}),
    ("dpmpp_2m", "sd15", {"timestep_spacing": "leading"}),
    ("dpmpp_2m", "sd21", {"timestep_spacing": "trailing", "final_sigmas_type": "sigma_min"}),
    ("dpmpp_2m", "sd15", {"solver_type": "heun", "lower_order_final": False}),
    ("dpmpp_2m", "sd15", {"euler_at_final": True, "lambda_min_clipped": -5.1}),
    ("DPMSolverMultistepScheduler", "sd15", {"solver_order": 3}),
    ("DPMSolverMultistepScheduler", "sd21", {"solver_order": 3, "solver_type": "heun"}),
    (
        "DPMSolverMultistepScheduler",
        "sd15",
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    ),
    ("dpmpp_2m_karras", "sd21", {"final_sigmas_type": "sigma_min"}),
    ("unipc", "sd15", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    ("unipc", "sd21", {"solver_order": 3, "timestep_spacing": "trailing"}),
    ("unipc", "sd15", {"predict_x0": False, "final_sigmas_type": "sigma_min"}),
    ("unipc", "sd15", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
    ("unipc", "sd15", {"disable_corrector": [0, 2], "final_sigmas_type": "sigma_min"}),
    ("unipc", "sd21", {"lower_order_final": False, "final_sigmas_type": "sigma_min"}),
    ("unipc", "sd15", {"solver_type": "midpoint"}),  # a DPM config's solver_type
    ("lcm", "sd15", {"original_inference_steps": 100, "clip_sample": True}),
    ("lcm", "sd21", {"set_alpha_to_one": False, "timestep_scaling": 5.0}),
    ("ddpm", "sd15", {"variance_type": "fixed_large", "clip_sample": True}),
    ("ddpm", "sd21", {"variance_type": "fixed_small_log", "timestep_spacing": "trailing"}),
]
VARIANT_CASES = [
    pytest.param(
        alias, model, overrides, steps, strength, id=f"{alias}-{model}-{i}-{steps}-{strength}"
    )
    for i, (alias, model, overrides) in enumerate(VARIANTS)
    for steps in (4, 20)
    for strength in STRENGTHS
]


@pytest.mark.parametrize(("alias", "model", "overrides", "steps", "strength"), VARIANT_CASES)
def test_config_variant_matches_diffusers(alias, model, overrides, steps, strength, monkeypatch):
    config = {**MODEL_CONFIGS[model], **overrides}
    initial, image, step_noises = loop_inputs(steps, seed=1)
    expected, expected_timesteps, expected_sigmas = run_diffusers(
        alias, config, steps, strength, initial, image, step_noises, monkeypatch
    )
    actual, plan = run_sdrt(alias, config, steps, strength, initial, image, step_noises)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(plan.timesteps, expected_timesteps, rtol=0, atol=TIMESTEP_ATOL)
    if plan.sigmas is not None and expected_sigmas is not None:
        assert_sigmas_match(plan.sigmas, expected_sigmas)
    error = relative_error(actual, expected)
    assert error <= LATENT_RTOL, f"relative error {error:.3g} > {LATENT_RTOL}"


def test_lms_coefficients_equal_numerical_integration():
    """sdrt integrates the Lagrange basis exactly (Gauss-Legendre); diffusers uses scipy."""
    integrate = pytest.importorskip("scipy.integrate")
    from sdrt.schedulers.lms import lms_coefficient

    sigmas = create_scheduler("lms", MODEL_CONFIGS["sd15"]).plan(20).sigmas
    for t in range(3, 20):
        for order in range(1, 5):
            for current in range(order):

                def basis(tau, order=order, current=current, t=t):
                    nodes = [float(sigmas[t - k]) for k in range(order)]
                    own = nodes[current]
                    return np.prod([(tau - n) / (own - n) for n in nodes if n != own])

                lower, upper = float(sigmas[t]), float(sigmas[t + 1])
                expected = integrate.quad(basis, lower, upper, epsrel=1e-12)[0]
                actual = lms_coefficient(sigmas, order, t, current)
                assert actual == pytest.approx(expected, rel=1e-10, abs=1e-14)


# eta (diffusers' pipeline argument, TCD's gamma) on the schedulers that take it: the noise
# of each step is the same array on both sides. TCD's grid of original_inference_steps is
# varied too, and a small eta (s close to t_prev).
ETA_CASES = [
    pytest.param(
        alias,
        model,
        overrides,
        steps,
        strength,
        eta,
        id=f"{alias}-{model}-{i}-{steps}-{strength}-{eta}",
    )
    for i, (alias, model, overrides) in enumerate(
        [
            ("tcd", "sd15", {}),
            ("tcd", "sd21", {"original_inference_steps": 100}),
            ("tcd", "sdxl", {}),
            # timestep_spacing is ignored by TCD (as by diffusers')
            ("tcd", "sd21", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
            ("TCDScheduler", "sd15", {"prediction_type": "sample"}),
            ("ddim", "sd15", {}),
            ("ddim", "sd21", {"timestep_spacing": "trailing", "set_alpha_to_one": True}),
        ]
    )
    for steps in (1, 2, 4, 8)
    for strength in STRENGTHS
    for eta in (0.0, 0.01, 0.3, 1.0)
    if allowed(alias, steps, strength)
]


@pytest.mark.parametrize(("alias", "model", "overrides", "steps", "strength", "eta"), ETA_CASES)
def test_eta_matches_diffusers(alias, model, overrides, steps, strength, eta, monkeypatch):
    config = {**MODEL_CONFIGS[model], **overrides}
    initial, image, step_noises = loop_inputs(steps, seed=2)
    expected, expected_timesteps, _ = run_diffusers(
        alias, config, steps, strength, initial, image, step_noises, monkeypatch, eta=eta
    )
    actual, plan = run_sdrt(alias, config, steps, strength, initial, image, step_noises, eta=eta)
    assert actual.dtype == np.float32
    np.testing.assert_array_equal(plan.timesteps, expected_timesteps)
    error = relative_error(actual, expected)
    assert error <= LATENT_RTOL, f"relative error {error:.3g} > {LATENT_RTOL}"


@pytest.mark.parametrize("eta", [0.3, 0.9])
def test_tcd_floors_its_intermediate_timestep_in_float32(eta, monkeypatch):
    """diffusers floors (1 - eta) * t_prev in float32: at t_prev = 90 (11 steps on a grid of
    1000) that is 63 for eta 0.3 where float64 gives 62 (and 9, not 8, for eta 0.9)."""
    config = {**MODEL_CONFIGS["sd15"], "original_inference_steps": 1000}
    initial, image, step_noises = loop_inputs(11, seed=3)
    expected, expected_timesteps, _ = run_diffusers(
        "tcd", config, 11, 1.0, initial, image, step_noises, monkeypatch, eta=eta
    )
    actual, plan = run_sdrt("tcd", config, 11, 1.0, initial, image, step_noises, eta=eta)
    assert 90 in plan.timesteps
    np.testing.assert_array_equal(plan.timesteps, expected_timesteps)
    error = relative_error(actual, expected)
    assert error <= LATENT_RTOL, f"relative error {error:.3g} > {LATENT_RTOL}"
