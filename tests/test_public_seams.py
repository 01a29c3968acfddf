"""Code outside sdrt/pipeline.py reaches a Pipeline through its public seams only.

The Pipeline's private names (underscore methods, and the ``self._x`` attributes its class
and mixins set) are read from the class itself; then every module of sdrt/, export/,
engines/ and benchmarks/ but the class's own is parsed, and an access of one of those names
on anything but ``self``/``cls`` fails the test. (Other classes' own ``self._x`` stay theirs.)
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import sdrt
from sdrt.errors import InputError
from sdrt.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("sdrt", "export", "engines", "benchmarks")


def _class_files() -> set[Path]:
    """The files that define the Pipeline class: pipeline.py and its mixins'."""
    return {
        Path(inspect.getsourcefile(cls)).resolve() for cls in Pipeline.__mro__ if cls is not object
    }


def private_names() -> set[str]:
    names = {n for n in dir(Pipeline) if n.startswith("_") and not n.startswith("__")}
    for cls in Pipeline.__mro__[:-1]:
        for node in ast.walk(ast.parse(inspect.getsource(cls))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                names.add(node.attr)
    return names


def reaches(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, expression) of each ``X._name`` with ``_name`` in ``names``, X not self/cls."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Attribute) and node.attr in names):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_private_names_are_found():
    names = private_names()
    assert {"_session", "_sessions", "_decode", "_unet", "_condition", "_lora"} <= names


def test_the_reach_finder_sees_attribute_chains_and_not_self():
    source = "pipe._session('unet')\nself.pipe._decode(x)\nself._session = s\n"
    assert reaches(source, {"_session", "_decode"}) == [
        (1, "pipe._session"),
        (2, "self.pipe._decode"),
    ]


def test_nothing_outside_the_pipeline_reaches_into_it():
    names = private_names()
    own = _class_files()
    offenders = []
    for folder in CODE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.resolve() in own:
                continue
            for line, expression in reaches(path.read_text(encoding="utf-8"), names):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {expression}")
    assert offenders == [], "use the Pipeline's public seams:\n" + "\n".join(offenders)


# ---------------------------------------------------------------------- the seams themselves

STEPS, GUIDANCE = 3, 7.5


def _latents(pipe, request):
    f = pipe.manifest.vae_scale_factor
    shape = (1, pipe.manifest.latent_channels, request.height // f, request.width // f)
    return np.random.default_rng(3).standard_normal(shape).astype(np.float32)


def test_the_stages_make_the_image_a_call_makes(tiny_built):
    """plan, condition, predict_noise and decode, driven by hand, give a call's image."""
    pipe = sdrt.Pipeline.load(tiny_built, backend="ort-cpu")
    settings = dict(
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        scheduler="EulerDiscreteScheduler",
        output_type="np",
    )
    latents = _latents(pipe, pipe.request("a red fox", **settings))
    request = pipe.request("a red fox", latents=latents, **settings)
    expected = pipe("a red fox", latents=latents, **settings).images

    scheduler, plan = pipe.plan(request)
    conditioning = pipe.condition(request)
    x = latents * plan.init_noise_sigma
    state = scheduler.initial_state(plan)
    for i, timestep in enumerate(plan.timesteps):
        sample = scheduler.scale_model_input(plan, np.concatenate([x, x]), i)
        uncond, text = np.split(pipe.predict_noise(sample, timestep, conditioning), 2)
        step = scheduler.step(plan, state, uncond + GUIDANCE * (text - uncond), i, x)
        x, state = step.prev_sample, step.state
    np.testing.assert_array_equal(pipe.decode(x), expected)


class _CountingSession:
    def __init__(self, session):
        self.session, self.calls = session, 0
        self.name, self.inputs, self.outputs = session.name, session.inputs, session.outputs

    def run(self, feeds):
        self.calls += 1
        return self.session.run(feeds)


def test_a_replaced_session_runs_in_the_calls(tiny_built):
    pipe = sdrt.Pipeline.load(tiny_built, backend="ort-cpu")
    unet = pipe.session("unet")
    counting = _CountingSession(unet)
    assert pipe.replace_session("unet", counting) is unet
    assert pipe.session("unet") is counting
    pipe("a red fox", num_inference_steps=2, scheduler="EulerDiscreteScheduler", output_type="np")
    assert counting.calls == 2


def test_a_text_encoder_session_is_not_replaced(tiny_built):
    pipe = sdrt.Pipeline.load(tiny_built, backend="ort-cpu")
    encoder = pipe.session("text_encoder")
    with pytest.raises(InputError, match="other than the text encoders"):
        pipe.replace_session("text_encoder", _CountingSession(encoder))
    assert pipe.session("text_encoder") is encoder


def test_encode_image_gives_scaled_latents_of_the_image_size(tiny_built):
    pipe = sdrt.Pipeline.load(tiny_built, backend="ort-cpu")
    size = pipe.request("x").height
    pixels = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    latents = pipe.encode_image(pixels)
    f = pipe.manifest.vae_scale_factor
    assert latents.shape == (1, pipe.manifest.latent_channels, size // f, size // f)
    np.testing.assert_array_equal(latents, pipe.encode_image(pixels))
