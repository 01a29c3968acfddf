"""Property tests (hypothesis): dtypes, batch sizes and independence of plans."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduler_oracle import MODEL_CONFIGS, fake_unet

from sdrt.schedulers import SCHEDULERS, create_scheduler

ALIASES = list(SCHEDULERS)
PROPERTY_SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

aliases = st.sampled_from(ALIASES)
models = st.sampled_from(list(MODEL_CONFIGS))
step_counts = st.integers(min_value=4, max_value=12)
strengths = st.sampled_from([1.0, 0.8, 0.5, 0.3])
batches = st.sampled_from([1, 8])
seeds = st.integers(min_value=0, max_value=2**16)


def run_loop(sched, plan, latents, noises, record_dtypes=None):
    """The pipeline's loop with the stand-in U-Net; returns the final latents."""
    state = sched.initial_state(plan)
    for i, t in enumerate(plan.timesteps):
        x = sched.scale_model_input(plan, latents, i)
        eps = fake_unet(x, t)
        noise = noises[i] if sched.needs_noise else None
        result = sched.step(plan, state, eps, i, latents, noise=noise)
        if record_dtypes is not None:
            record_dtypes.update({x.dtype, result.prev_sample.dtype})
            if result.denoised is not None:
                record_dtypes.add(result.denoised.dtype)
        latents, state = result.prev_sample, result.state
    return latents


def loop_arrays(seed, batch, steps, height=4, width=4):
    rng = np.random.default_rng(seed)
    shape = (batch, 4, height, width)
    image = rng.standard_normal(shape, dtype=np.float32)
    noises = rng.standard_normal((2 * steps + 1, *shape), dtype=np.float32)
    return image, noises


@PROPERTY_SETTINGS
@given(
    alias=aliases, model=models, steps=step_counts, strength=strengths, batch=batches, seed=seeds
)
def test_float32_in_float32_out(alias, model, steps, strength, batch, seed):
    sched = create_scheduler(alias, MODEL_CONFIGS[model])
    plan = sched.plan(steps, strength=strength)
    image, noises = loop_arrays(seed, batch, steps)
    latents = sched.add_noise(plan, image, noises[-1], 0)
    assert latents.dtype == np.float32
    dtypes: set = set()
    final = run_loop(sched, plan, latents, noises, dtypes)
    assert dtypes == {np.dtype(np.float32)}
    assert final.dtype == np.float32
    assert final.shape == image.shape
    assert np.isfinite(final).all()


@PROPERTY_SETTINGS
@given(alias=aliases, model=models, steps=step_counts, strength=strengths, seed=seeds)
def test_a_batch_of_8_equals_8_batches_of_1(alias, model, steps, strength, seed):
    sched = create_scheduler(alias, MODEL_CONFIGS[model])
    plan = sched.plan(steps, strength=strength)
    image, noises = loop_arrays(seed, 8, steps)
    batched = run_loop(sched, plan, sched.add_noise(plan, image, noises[-1], 0), noises)
    for k in range(8):
        row = slice(k, k + 1)
        single = run_loop(
            sched, plan, sched.add_noise(plan, image[row], noises[-1][row], 0), noises[:, row]
        )
        np.testing.assert_array_equal(single, batched[row])


@PROPERTY_SETTINGS
@given(
    alias=aliases,
    model=models,
    steps=st.tuples(step_counts, step_counts),
    strength=st.tuples(strengths, strengths),
    seed=seeds,
)
def test_no_state_leaks_between_two_plans_used_in_turn(alias, model, steps, strength, seed):
    """Two loops interleaved step by step on one scheduler give what each gives alone."""
    sched = create_scheduler(alias, MODEL_CONFIGS[model])
    plans = [sched.plan(n, strength=s) for n, s in zip(steps, strength, strict=True)]
    inputs = [loop_arrays(seed + k, 1, n) for k, n in enumerate(steps)]
    alone = [
        run_loop(sched, plan, sched.add_noise(plan, image, noises[-1], 0), noises)
        for plan, (image, noises) in zip(plans, inputs, strict=True)
    ]

    latents = [
        sched.add_noise(plan, image, noises[-1], 0)
        for plan, (image, noises) in zip(plans, inputs, strict=True)
    ]
    states = [sched.initial_state(plan) for plan in plans]
    for i in range(max(len(plan.timesteps) for plan in plans)):
        for k, plan in enumerate(plans):
            if i >= len(plan.timesteps):
                continue
            noises = inputs[k][1]
            x = sched.scale_model_input(plan, latents[k], i)
            noise = noises[i] if sched.needs_noise else None
            result = sched.step(
                plan, states[k], fake_unet(x, plan.timesteps[i]), i, latents[k], noise
            )
            latents[k], states[k] = result.prev_sample, result.state
    for k in range(2):
        np.testing.assert_array_equal(latents[k], alone[k])


@pytest.mark.parametrize("alias", ALIASES)
def test_a_step_does_not_modify_its_inputs(alias):
    sched = create_scheduler(alias, MODEL_CONFIGS["sd15"])
    plan = sched.plan(6)
    image, noises = loop_arrays(0, 1, 6)
    sample, model_output, noise = image.copy(), noises[0].copy(), noises[1].copy()
    state = sched.initial_state(plan)
    for i in range(3):
        result = sched.step(plan, state, model_output, i, sample, noise=noise)
        state = result.state
    np.testing.assert_array_equal(sample, image)
    np.testing.assert_array_equal(model_output, noises[0])
    np.testing.assert_array_equal(noise, noises[1])


@pytest.mark.parametrize("alias", ["dpmpp_2m", "heun", "unipc", "euler_a"])
def test_one_scheduler_serves_concurrent_threads(alias):
    from concurrent.futures import ThreadPoolExecutor

    sched = create_scheduler(alias, MODEL_CONFIGS["sdxl"])
    jobs = [
        (sched.plan(steps, strength=s), seed)
        for seed, (steps, s) in enumerate([(8, 1.0), (12, 0.6), (8, 0.5), (10, 1.0)] * 2)
    ]

    def run(job):
        plan, seed = job
        image, noises = loop_arrays(seed, 2, len(plan.timesteps))
        return run_loop(sched, plan, sched.add_noise(plan, image, noises[-1], 0), noises)

    sequential = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(run, jobs))
    for alone, together in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(alone, together)
