"""Whole denoising loops in sdrt and in diffusers agree: every scheduler x the SD 1.5,
SD 2.1 (v-prediction) and SDXL configs x 1, 4, 20, 50 steps x strength 1.0 and 0.5."""

from __future__ import annotations

import numpy as np
import pytest
from test_schedulers_oracle import (
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
# The schedules: sdrt builds betas with numpy's linspace, diffusers with torch's; both
# round to float32, so entries may differ in the last bit.
SIGMA_RTOL = 1e-6
TIMESTEP_ATOL = 1e-3  # fractional (Karras) timesteps; integer ones must be equal

# diffusers' schedulers call np.array on torch tensors, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

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
        np.testing.assert_allclose(plan.sigmas, expected_sigmas, rtol=SIGMA_RTOL, atol=0)
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
