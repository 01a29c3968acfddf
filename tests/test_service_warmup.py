"""sdrt serve's warm-up (sdrt/service/state.py): on ort-cpu every weight of the graphs a
text-to-image call runs is read once on the smallest inputs, without a generation;
elsewhere, or for inputs it does not know, one small generation instead."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")

from sdrt.manifest import TensorSpec  # noqa: E402
from sdrt.service import state  # noqa: E402


@pytest.fixture(scope="module")
def pipe(tiny_built):
    import sdrt

    return sdrt.Pipeline.load(tiny_built, backend="ort-cpu")


def test_ort_cpu_warm_up_runs_each_graph_once_on_8x8_latents(pipe, monkeypatch):
    runs = []
    for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        session = pipe._session(name)
        original = session.run

        def spy(feeds, name=name, original=original):
            runs.append((name, {k: v.shape for k, v in feeds.items()}))
            return original(feeds)

        monkeypatch.setattr(session, "run", spy)
    monkeypatch.setattr(
        state, "_warm_up_by_generating", lambda p: pytest.fail("no generation expected")
    )
    assert state.warm_up(pipe) > 0
    assert [name for name, _ in runs] == ["text_encoder", "unet", "vae_decoder"]
    shapes = dict(runs)
    assert shapes["unet"]["sample"] == (1, 4, 8, 8)
    assert shapes["vae_decoder"]["latent_sample"] == (1, 4, 8, 8)
    assert shapes["text_encoder"]["input_ids"] == (1, 77)


def test_the_warm_up_changes_no_image(pipe):
    settings = dict(height=64, width=64, num_inference_steps=2, seed=3, output_type="np")
    before = pipe("a red fox", **settings).images
    state.warm_up(pipe)
    assert np.array_equal(pipe("a red fox", **settings).images, before)


def _fake_pipe(backend, inputs):
    component = SimpleNamespace(inputs=inputs)
    manifest = SimpleNamespace(components={"unet": component})
    return SimpleNamespace(backend=backend, manifest=manifest)


def test_other_backends_and_unknown_inputs_warm_up_by_generating(monkeypatch):
    generated = []
    monkeypatch.setattr(state, "_warm_up_by_generating", generated.append)
    known = (TensorSpec("sample", "float32", ("batch", 4, "latent_height", "latent_width")),)
    unknown = (TensorSpec("features", "float32", ("batch", "channels_of_a_cache")),)
    tensorrt, odd = _fake_pipe("tensorrt", known), _fake_pipe("ort-cpu", unknown)
    state.warm_up(tensorrt)
    state.warm_up(odd)
    assert generated == [tensorrt, odd]
    assert state.touch_feeds(odd.manifest.components["unet"]) is None
    feeds = state.touch_feeds(SimpleNamespace(inputs=known))
    assert feeds["sample"].shape == (1, 4, 8, 8) and feeds["sample"].dtype == np.float32
