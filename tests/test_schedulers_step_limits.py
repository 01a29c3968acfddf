"""Step counts near the number of training timesteps, against diffusers' plans (plans
only, no loop): at 1000 steps on the SD 1.5 config (the tiny folder's: PNDM, steps_offset
1, each class's default spacing) each scheduler either plans what diffusers plans, or refuses
with InputError where diffusers' plan cannot run (a timestep past the training range:
IndexError in its step; two steps at one noise level: NaN or ZeroDivisionError)."""

from __future__ import annotations

import numpy as np
import pytest
from scheduler_oracle import SD15_CONFIG, make_diffusers_scheduler

from sdrt.errors import InputError
from sdrt.schedulers import SCHEDULERS, create_scheduler

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N_TRAIN = 1000

# 1000 steps run in diffusers for these.
RUNS_AT_1000 = ("euler", "euler_a", "heun", "lms", "dpmpp_2m_karras")
# ...and not for these: (what diffusers plans, the most steps that run).
REFUSED_AT_1000 = {
    "ddim": ("timestep 1000, outside the training timesteps 0 to 999", 999),
    "pndm": ("timestep 1000, outside the training timesteps 0 to 999", 999),
    "ddpm": ("timestep 1000, outside the training timesteps 0 to 999", 999),
    # their default spacing, "linspace", rounds two of 1001 points to one timestep
    "dpmpp_2m": ("two steps at one noise level (timesteps 500 and 500)", 999),
    "unipc": ("two steps at one noise level (timesteps 500 and 500)", 999),
}


def _assert_plan_is_diffusers(alias: str, steps: int) -> None:
    plan = create_scheduler(alias, SD15_CONFIG).plan(steps)
    theirs = make_diffusers_scheduler(alias, SD15_CONFIG)
    theirs.set_timesteps(steps)
    np.testing.assert_allclose(plan.schedule_timesteps, theirs.timesteps.numpy(), atol=1e-3)
    if plan.sigmas is not None:
        np.testing.assert_allclose(plan.sigmas, theirs.sigmas.numpy(), rtol=1e-5)


@pytest.mark.parametrize("alias", RUNS_AT_1000)
def test_1000_steps_plan_as_diffusers(alias):
    _assert_plan_is_diffusers(alias, N_TRAIN)


@pytest.mark.parametrize("alias", sorted(REFUSED_AT_1000))
def test_1000_steps_are_refused_where_diffusers_plan_cannot_run(alias):
    problem, most = REFUSED_AT_1000[alias]
    with pytest.raises(InputError) as refused:
        create_scheduler(alias, SD15_CONFIG).plan(N_TRAIN)
    message = str(refused.value)
    assert f"num_inference_steps=1000 plans {problem}" in message
    assert message.endswith(f"expected num_inference_steps <= {most}")
    _assert_plan_is_diffusers(alias, most)  # the count the message offers runs


@pytest.mark.parametrize("alias", ["ddim", "ddpm"])
def test_more_steps_than_training_timesteps_are_refused_as_diffusers_does(alias):
    with pytest.raises(ValueError):  # diffusers' check in set_timesteps
        make_diffusers_scheduler(alias, SD15_CONFIG).set_timesteps(N_TRAIN + 1)
    with pytest.raises(InputError, match=r"num_inference_steps must be in \[1, 1000\]; got 1001"):
        create_scheduler(alias, SD15_CONFIG).plan(N_TRAIN + 1)


@pytest.mark.parametrize("alias", sorted(SCHEDULERS))
def test_every_scheduler_refuses_more_steps_than_training_timesteps(alias):
    """diffusers' other classes plan 1001 steps without a word (and fail in step)."""
    with pytest.raises(InputError, match=r"num_inference_steps must be in \[1, \d+\]; got 1001"):
        create_scheduler(alias, SD15_CONFIG).plan(N_TRAIN + 1)


def test_trailing_spacing_never_plans_timestep_minus_1():
    """Spacing "trailing" can round its last timestep to -1 (diffusers' torch indexing then
    silently reads the last alpha_bar)."""
    config = {**SD15_CONFIG, "timestep_spacing": "trailing"}
    with pytest.raises(InputError, match=r"plans timestep -1, outside the training timesteps"):
        create_scheduler("ddim", config).plan(998)
