"""Refitting a TensorRT engine's named weights (how a LoRA switch reaches TensorRT), on the CPU
with the strict fakes of tensorrt and cupy (tests/gpu_fakes.py): what sdrt checks before it
asks TensorRT, that a refused refit leaves the engine as it was, that the refit runs on the
session's stream after the caller's work and is waited for before the host arrays may go,
and that CUDA graphs captured with the old weights are not replayed after.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_fakes import GPU, FakeEngine, use_fake_tensorrt

from sdrt.errors import InputError
from sdrt.manifest import TensorSpec

WEIGHT = "unet.down_blocks.0.attn.to_q.weight"
BIAS = "unet.down_blocks.0.attn.to_q.bias"
INPUTS = (TensorSpec("sample", "float32", ("batch", 4)),)
OUTPUTS = (TensorSpec("out_sample", "float32", ("batch", 4)),)


@pytest.fixture
def fakes(monkeypatch):
    use_fake_tensorrt(monkeypatch)


def linear_engine(weight, bias, *, refittable=True, dtype=np.float32):
    """out_sample = sample @ WEIGHT + BIAS, with both as refittable named weights."""

    def compute(values):
        w, b = values[WEIGHT].astype(np.float32), values[BIAS].astype(np.float32)
        return {"out_sample": values["sample"] @ w.reshape(4, 4) + b}

    tensors = {
        "sample": ("input", np.float32, ((1, 4), (2, 4), (4, 4))),
        "out_sample": ("output", np.float32, lambda shapes: shapes["sample"]),
    }
    weights = {WEIGHT: np.asarray(weight, dtype), BIAS: np.asarray(bias, dtype)}
    return FakeEngine(tensors, compute, weights=weights, refittable=refittable)


def session(engine, **kwargs):
    from sdrt.backends.tensorrt import TensorRTSession

    return TensorRTSession("unet", engine, INPUTS, OUTPUTS, **kwargs)


SAMPLE = np.arange(8, dtype=np.float32).reshape(2, 4)
BASE_W, BASE_B = np.eye(4, dtype=np.float32), np.zeros(4, np.float32)


def out(s):
    return s.run({"sample": SAMPLE})["out_sample"].get()


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_a_refit_changes_what_the_engine_computes(fakes, cuda_graph):
    s = session(linear_engine(BASE_W, BASE_B), cuda_graph=cuda_graph)
    np.testing.assert_array_equal(out(s), SAMPLE)  # captures a graph when cuda_graph
    delta = np.full((4, 4), 0.5, np.float32)
    report = s.refit({WEIGHT: BASE_W + delta})
    assert (report.weights, report.elements) == (1, 16)
    np.testing.assert_allclose(out(s), SAMPLE @ (BASE_W + delta))
    s.refit({WEIGHT: BASE_W})  # back to the base: the first image again
    np.testing.assert_array_equal(out(s), SAMPLE)


def test_an_fp16_engine_takes_its_weights_as_fp16(fakes):
    engine = linear_engine(BASE_W, BASE_B, dtype=np.float16)
    s = session(engine)
    s.refit({BIAS: np.full(4, 1 / 3, np.float64)})
    assert engine._weights[BIAS].dtype == np.float16
    np.testing.assert_array_equal(out(s), SAMPLE + np.float32(np.float16(1 / 3)))


def test_the_refit_runs_on_the_sessions_stream_after_the_caller_and_is_waited_for(fakes):
    s = session(linear_engine(BASE_W, BASE_B))
    ours = s._memory.stream._name
    GPU.log.clear()
    s.refit({WEIGHT: 2 * BASE_W})
    log = [e for e in GPU.log if e[0] == ours]
    assert log[0][1] == "wait"  # ordered after the caller's current stream
    assert log.index((ours, "refit")) < log.index((ours, "synchronize"))
    assert log[-1] == (ours, "synchronize")  # host arrays may go once refit returns


@pytest.mark.parametrize(
    ("weights", "engine_kwargs", "message"),
    [
        ({WEIGHT: BASE_W}, {"refittable": False}, "not built refittable.*--refit"),
        ({"unet.no.such.weight": BASE_W}, {}, r"no weights named \['unet.no.such.weight'\]"),
        (
            {WEIGHT: np.ones((4, 5))},
            {},
            r"have 16 values in the engine; 20 came \(shape \[4, 5\]\)",
        ),
    ],
    ids=["not-refittable", "unknown-name", "wrong-size"],
)
def test_a_refused_refit_names_the_problem_and_leaves_the_engine_as_it_was(
    fakes, weights, engine_kwargs, message
):
    engine = linear_engine(BASE_W, BASE_B, **engine_kwargs)
    s = session(engine)
    before = out(s)
    with pytest.raises(InputError, match=message):
        s.refit({BIAS: np.ones(4), **weights})
    np.testing.assert_array_equal(out(s), before)


def test_weights_tensorrt_wants_together_must_all_come(fakes):
    engine = linear_engine(BASE_W, BASE_B)
    engine._refit_groups.append({WEIGHT, BIAS})  # e.g. a bias folded into its kernel
    s = session(engine)
    with pytest.raises(InputError, match=r"needs these weights refitted too: \[.*to_q.bias'\]"):
        s.refit({WEIGHT: 2 * BASE_W})
    np.testing.assert_array_equal(out(s), SAMPLE)
    s.refit({WEIGHT: 2 * BASE_W, BIAS: np.ones(4)})
    np.testing.assert_array_equal(out(s), 2 * SAMPLE + 1)


def test_companions_give_the_weights_tensorrt_wants_together_unchanged(fakes):
    engine = linear_engine(BASE_W, np.full(4, 3, np.float32))
    engine._refit_groups.append({WEIGHT, BIAS})
    s = session(engine)
    asked = []

    def current(name):
        asked.append(name)
        return np.full(4, 3, np.float32)

    report = s.refit({WEIGHT: 2 * BASE_W}, companions=current)
    assert asked == [BIAS] and (report.weights, report.elements) == (1, 16)
    np.testing.assert_array_equal(out(s), 2 * SAMPLE + 3)


def test_the_session_says_whether_its_engine_is_refittable(fakes):
    assert session(linear_engine(BASE_W, BASE_B)).refittable
    assert not session(linear_engine(BASE_W, BASE_B, refittable=False)).refittable
