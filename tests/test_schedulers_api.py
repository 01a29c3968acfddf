"""The scheduler factory, config handling and input checks."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from scheduler_oracle import MODEL_CONFIGS, SD15_CONFIG, diffusers_module

from sdrt.errors import InputError, ModelFolderError
from sdrt.schedulers import (
    SCHEDULER_CLASSES,
    SCHEDULERS,
    StepResult,
    create_scheduler,
    load_scheduler_config,
)

ALIASES = list(SCHEDULERS)
# diffusers' schedulers call np.array on torch tensors, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def diffusers_default_config(class_name: str) -> dict:
    """What diffusers writes as scheduler_config.json for a default-constructed class."""
    cls = getattr(diffusers_module(class_name), class_name)
    return json.loads(cls().to_json_string())


def test_aliases_name_the_diffusers_classes():
    assert set(SCHEDULERS) == {
        "ddim",
        "pndm",
        "lms",
        "euler",
        "euler_a",
        "heun",
        "dpmpp_2m",
        "dpmpp_2m_karras",
        "unipc",
        "lcm",
        "ddpm",
        "tcd",
    }
    for alias, class_name in SCHEDULERS.items():
        assert create_scheduler(alias, SD15_CONFIG).name == class_name
        assert create_scheduler(class_name, SD15_CONFIG).name == class_name


def test_needs_noise_marks_the_samplers_that_draw_noise():
    drawing = {alias for alias in SCHEDULERS if create_scheduler(alias).needs_noise}
    assert drawing == {"euler_a", "lcm", "ddpm"}


def test_draws_noise_follows_eta_where_the_scheduler_takes_it():
    takers = {alias for alias in SCHEDULERS if create_scheduler(alias).takes_eta}
    assert takers == {"ddim", "tcd"}
    for alias in SCHEDULERS:
        sched = create_scheduler(alias, SD15_CONFIG)
        plan = sched.plan(4, eta=0.5)
        # diffusers' pipelines pass eta only to a step that takes it: the others ignore it
        assert plan.eta == (0.5 if sched.takes_eta else 0.0)
        assert sched.draws_noise(plan) == (sched.needs_noise or sched.takes_eta)
        assert sched.draws_noise(sched.plan(4)) == sched.needs_noise


@pytest.mark.parametrize("alias", ["ddim", "tcd", "euler"])
@pytest.mark.parametrize(
    ("eta", "message"),
    [
        (-0.1, "eta must be a finite number >= 0; got -0.1"),
        (float("nan"), "eta must be a finite number >= 0; got nan"),
        (float("inf"), "eta must be a finite number >= 0; got inf"),
        ("0.3", "eta must be a number; got str"),
        (True, "eta must be a number; got bool"),
    ],
)
def test_bad_eta_is_an_input_error(alias, eta, message):
    with pytest.raises(InputError, match=re.escape(message)):
        create_scheduler(alias, SD15_CONFIG).plan(4, eta=eta)


@pytest.mark.parametrize("alias", ["ddim", "tcd"])
def test_eta_above_one_is_refused_where_taken(alias):
    sched = create_scheduler(alias, SD15_CONFIG)
    with pytest.raises(
        InputError, match=re.escape(f"{sched.name}: eta must be in [0, 1]; got 1.5")
    ):
        sched.plan(4, eta=1.5)
    assert create_scheduler("euler", SD15_CONFIG).plan(4, eta=1.5).eta == 0.0


def test_tcd_last_step_takes_no_noise():
    sched = create_scheduler("tcd", SD15_CONFIG)
    plan = sched.plan(2, eta=0.3)
    x = np.ones((1, 4, 2, 2), np.float32)
    with pytest.raises(InputError, match="needs a `noise` array"):
        sched.step(plan, sched.initial_state(plan), x, 0, x)
    sched.step(plan, sched.initial_state(plan), x, 1, x)  # the last step: no noise


def test_karras_alias_turns_karras_sigmas_on_and_plain_alias_off():
    config = {**SD15_CONFIG, "use_karras_sigmas": True}
    assert create_scheduler("dpmpp_2m_karras", SD15_CONFIG).config.use_karras_sigmas
    assert not create_scheduler("dpmpp_2m", config).config.use_karras_sigmas
    # the class name keeps the file's value
    assert create_scheduler("DPMSolverMultistepScheduler", config).config.use_karras_sigmas


def test_unknown_name_lists_valid_names():
    with pytest.raises(InputError, match="unknown scheduler 'k_dpm_3'") as info:
        create_scheduler("k_dpm_3", SD15_CONFIG)
    for name in [*SCHEDULERS, *SCHEDULER_CLASSES]:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("alias", "key", "value", "listed"),
    [
        ("ddim", "beta_schedule", "sigmoid", "'scaled_linear'"),
        ("euler", "timestep_spacing", "middle", "'trailing'"),
        ("pndm", "prediction_type", "sample", "'v_prediction'"),
        ("euler", "interpolation_type", "log_linear", "'linear'"),
        ("DPMSolverMultistepScheduler", "algorithm_type", "sde-dpmsolver++", "'dpmsolver'"),
        ("ddpm", "variance_type", "learned_range", "'fixed_small'"),
        ("ddim", "thresholding", True, "False"),
    ],
)
def test_unsupported_config_value_lists_valid_choices(alias, key, value, listed):
    with pytest.raises(InputError, match=re.escape(f"{key}={value!r} is not supported")) as info:
        create_scheduler(alias, {**SD15_CONFIG, key: value})
    assert listed in str(info.value)


def test_unknown_override_lists_valid_keys_but_unknown_file_keys_are_ignored():
    with pytest.raises(InputError, match="unknown config override.*use_karas_sigmas"):
        create_scheduler("euler", SD15_CONFIG, use_karas_sigmas=True)
    # SD 1.5's file has PNDM's skip_prk_steps, which Euler does not know: ignored
    assert create_scheduler("euler", SD15_CONFIG).config.steps_offset == 1


def test_overrides_win_over_the_file():
    sched = create_scheduler("euler", SD15_CONFIG, timestep_spacing="trailing")
    assert sched.config.timestep_spacing == "trailing"
    assert sched.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize("source_class", sorted(set(SCHEDULERS.values())))
def test_every_class_config_is_accepted_by_every_scheduler(source_class):
    config = diffusers_default_config(source_class)
    for alias in ALIASES:
        plan = create_scheduler(alias, config).plan(20)
        assert len(plan.timesteps) >= 20


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("model", list(MODEL_CONFIGS))
def test_defaults_follow_the_diffusers_class(alias, model):
    """Keys absent from the file take the diffusers class's default, as from_config does."""
    class_name = SCHEDULERS[alias]
    defaults = diffusers_default_config(class_name)
    sched = create_scheduler(class_name, MODEL_CONFIGS[model])
    for key, value in vars(sched.config).items():
        expected = MODEL_CONFIGS[model].get(key, defaults[key])
        if isinstance(value, tuple):
            value = list(value)
        assert value == expected, key


def test_load_scheduler_config(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_CONFIG))
    assert load_scheduler_config(tmp_path) == SD15_CONFIG
    assert load_scheduler_config(str(tmp_path)) == SD15_CONFIG


def test_load_scheduler_config_errors(tmp_path):
    with pytest.raises(ModelFolderError, match="scheduler_config.json"):
        load_scheduler_config(tmp_path)
    (tmp_path / "scheduler").mkdir()
    path = tmp_path / "scheduler" / "scheduler_config.json"
    path.write_text("{not json")
    with pytest.raises(ModelFolderError, match="cannot read scheduler config"):
        load_scheduler_config(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(ModelFolderError, match="must hold a JSON object; got list"):
        load_scheduler_config(tmp_path)


@pytest.mark.parametrize(
    ("steps", "strength", "message"),
    [
        (0, 1.0, r"num_inference_steps must be in \[1, 1000\]; got 0"),
        (1001, 1.0, r"num_inference_steps must be in \[1, 1000\]; got 1001"),
        (2.5, 1.0, "num_inference_steps must be an integer; got float"),
        (20, 0.0, r"strength must be in \(0, 1\]; got 0.0"),
        (20, 1.5, r"strength must be in \(0, 1\]; got 1.5"),
        (4, 0.1, "leaves no denoising step"),
        (4, "0.5", r"strength must be a number in \(0, 1\]; got str"),
    ],
)
def test_plan_checks_its_arguments(steps, strength, message):
    with pytest.raises(InputError, match=message):
        create_scheduler("ddim", SD15_CONFIG).plan(steps, strength=strength)


def test_lcm_steps_are_bounded_by_original_inference_steps():
    with pytest.raises(InputError, match=r"must be in \[1, 50\]; got 51"):
        create_scheduler("lcm", SD15_CONFIG).plan(51)
    assert len(
        create_scheduler("lcm", SD15_CONFIG, original_inference_steps=100).plan(51).timesteps
    )


def test_pndm_runge_kutta_start_needs_four_steps():
    with pytest.raises(InputError, match="skip_prk_steps=False needs num_inference_steps >= 4"):
        create_scheduler("pndm", SD15_CONFIG, skip_prk_steps=False).plan(3)


def test_unipc_rejects_settings_without_a_limit_at_sigma_zero():
    with pytest.raises(InputError, match="predict_x0=False needs final_sigmas_type='sigma_min'"):
        create_scheduler("unipc", SD15_CONFIG, predict_x0=False)


def test_heun_plan_has_two_calls_per_step_but_the_first():
    plan = create_scheduler("heun", SD15_CONFIG).plan(10)
    assert len(plan.timesteps) == 19
    assert plan.num_inference_steps == 10
    half = create_scheduler("heun", SD15_CONFIG).plan(10, strength=0.5)
    assert half.begin_index == 10
    np.testing.assert_array_equal(half.timesteps, plan.timesteps[10:])


def make_step_inputs(alias, shape=(1, 4, 8, 8)):
    sched = create_scheduler(alias, SD15_CONFIG)
    plan = sched.plan(4)
    x = np.ones(shape, dtype=np.float32)
    return sched, plan, sched.initial_state(plan), x


@pytest.mark.parametrize("alias", ["euler_a", "ddpm", "lcm"])
def test_step_of_a_noise_drawing_sampler_needs_noise(alias):
    sched, plan, state, x = make_step_inputs(alias)
    with pytest.raises(InputError, match=r"needs a `noise` array of shape \(1, 4, 8, 8\)"):
        sched.step(plan, state, x, 0, x)
    with pytest.raises(InputError, match=r"noise has shape \(1, 4, 8, 7\)"):
        sched.step(plan, state, x, 0, x, noise=x[..., :7])


def test_lcm_last_step_and_ddpm_timestep_zero_need_no_noise():
    sched, plan, state, x = make_step_inputs("lcm")
    result = sched.step(plan, state, x, len(plan.timesteps) - 1, x)
    assert isinstance(result, StepResult)
    sched = create_scheduler("ddpm", SD15_CONFIG, timestep_spacing="trailing", steps_offset=0)
    plan = sched.plan(1000)
    assert plan.timesteps[-1] == 0
    sched.step(plan, sched.initial_state(plan), x, 999, x)


@pytest.mark.parametrize("alias", ALIASES)
def test_step_checks_index_shapes_and_state(alias):
    sched, plan, state, x = make_step_inputs(alias)
    noise = x if sched.needs_noise else None
    last = len(plan.timesteps) - 1
    with pytest.raises(InputError, match=rf"step index must be in \[0, {last}\] .*got {last + 1}"):
        sched.step(plan, state, x, last + 1, x, noise=noise)
    with pytest.raises(InputError, match=r"model_output has shape \(2, 4, 8, 8\)"):
        sched.step(plan, state, np.ones((2, 4, 8, 8), np.float32), 0, x, noise=noise)
    with pytest.raises(InputError, match="expects the state from initial_state"):
        sched.step(plan, object(), x, 0, x, noise=noise)
    with pytest.raises(InputError, match=r"step index must be in \[0, "):
        sched.scale_model_input(plan, x, -1)
    with pytest.raises(InputError, match=r"noise has shape \(1, 4, 8, 7\)"):
        sched.add_noise(plan, x, x[..., :7], 0)


@pytest.mark.parametrize("alias", ALIASES)
def test_schedulers_and_plans_are_immutable(alias):
    sched, plan, _, _ = make_step_inputs(alias)
    with pytest.raises(AttributeError):
        sched.config = None
    with pytest.raises(AttributeError):
        plan.init_noise_sigma = 2.0
    with pytest.raises(ValueError, match="read-only"):
        plan.timesteps[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        sched.alphas_cumprod[0] = 1


@pytest.mark.gpu
@pytest.mark.parametrize("alias", ALIASES)
def test_cupy_arrays_give_the_numpy_result(alias):
    cupy = pytest.importorskip("cupy")
    sched = create_scheduler(alias, SD15_CONFIG)
    plan = sched.plan(8, strength=0.75)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    noises = rng.standard_normal((2 * 8 + 1, 2, 4, 8, 8), dtype=np.float32)

    def run(xp):
        latents = sched.add_noise(plan, xp.asarray(image), xp.asarray(noises[-1]), 0)
        state = sched.initial_state(plan)
        for i, t in enumerate(plan.timesteps):
            x = sched.scale_model_input(plan, latents, i)
            eps = xp.tanh(x) * 0.9 + 0.01 * float(t) / 1000
            noise = xp.asarray(noises[i]) if sched.needs_noise else None
            result = sched.step(plan, state, eps, i, latents, noise=noise)
            latents, state = result.prev_sample, result.state
        return latents

    on_gpu = run(cupy)
    assert on_gpu.dtype == cupy.float32
    np.testing.assert_allclose(cupy.asnumpy(on_gpu), run(np), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("alias", "config", "message"),
    [
        ("ddim", {"num_train_timesteps": "1000"}, "num_train_timesteps must be int; got '1000'"),
        ("euler", {"use_karras_sigmas": 1}, "use_karras_sigmas must be bool; got 1"),
        ("euler", {"sigma_min": "0.1"}, "sigma_min must be float or None; got '0.1'"),
        ("unipc", {"disable_corrector": 3}, "disable_corrector must be a list of int; got 3"),
        ("ddim", {"trained_betas": [0.01] * 10}, "trained_betas has 10 entries; expected"),
    ],
)
def test_config_values_of_the_wrong_type_are_input_errors(alias, config, message):
    with pytest.raises(InputError, match=re.escape(message)):
        create_scheduler(alias, config)


def test_trained_betas_from_json_are_used():
    betas = np.linspace(0.0001, 0.02, 1000).tolist()
    sched = create_scheduler("ddim", {"trained_betas": betas, "beta_schedule": "unknown"})
    expected = np.cumprod(1 - np.asarray(betas, dtype=np.float32).astype(np.float64))
    np.testing.assert_allclose(sched.alphas_cumprod, expected, rtol=1e-6)


def test_importing_the_schedulers_does_not_import_torch():
    code = (
        "import sys, sdrt.schedulers as s; s.create_scheduler('euler_a').plan(4); "
        "sys.exit(int(any(m in sys.modules for m in ('torch', 'diffusers', 'scipy'))))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("alias", "overrides"),
    [("dpmpp_2m", {}), ("unipc", {}), ("unipc", {"solver_type": "bh1"}), ("euler", {})],
)
def test_last_step_to_sigma_zero_returns_the_x0_estimate(alias, overrides):
    """At a final sigma of 0 the solvers' last update is their clean estimate (diffusers
    gives NaN for UniPC bh1 there; sdrt takes the limit)."""
    sched = create_scheduler(alias, SD15_CONFIG, **overrides)
    plan = sched.plan(5)
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    state = sched.initial_state(plan)
    for i, t in enumerate(plan.timesteps):
        eps = np.tanh(sched.scale_model_input(plan, latents, i)) + np.float32(t / 1000)
        result = sched.step(plan, state, eps, i, latents)
        latents, state = result.prev_sample, result.state
    assert np.isfinite(latents).all()
    np.testing.assert_allclose(latents, result.denoised, rtol=1e-6, atol=1e-6)
