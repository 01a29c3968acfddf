"""Engine parity measurement, with ONNX Runtime on both sides (the GPU run swaps in TensorRT)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from sdrt.engines.compare import (
    FP16,
    measure,
    output_errors,
    sample_inputs,
    verification_cases,
    verify,
)

from sdrt.errors import VerificationError
from sdrt.manifest import TensorSpec

SPECS = (TensorSpec("latent_sample", "float32", ("batch", 4, "height", "width")),)


def conv_model(weights: np.ndarray, dtype=TensorProto.FLOAT) -> bytes:
    """latent_sample (N,4,H,W) -> sample (N,3,H,W): a 3x3 convolution, the VAE's last layer."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["latent_sample", "w"], ["sample"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("latent_sample", dtype, ["batch", 4, "height", "width"])],
        [helper.make_tensor_value_info("sample", dtype, ["batch", 3, "height", "width"])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def runner(model: bytes, cast=None):
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    def run(feeds):
        feeds = {k: v.astype(cast) if cast else v for k, v in feeds.items()}
        return {"sample": session.run(["sample"], feeds)[0].astype(np.float32)}

    return run


WEIGHTS = np.random.default_rng(0).standard_normal((3, 4, 3, 3)).astype(np.float32) * 0.3
CASES = verification_cases(
    {"latent_sample": {"min": (1, 4, 8, 8), "opt": (2, 4, 16, 16), "max": (2, 4, 32, 32)}}
)


def test_cases_are_the_opt_then_the_min_shapes():
    assert CASES == ({"latent_sample": (2, 4, 16, 16)}, {"latent_sample": (1, 4, 8, 8)})
    static = {"x": {"min": (1, 2), "opt": (1, 2), "max": (1, 2)}}
    assert verification_cases(static) == ({"x": (1, 2)},)


def test_an_fp16_graph_passes_against_its_fp32_reference():
    reference = runner(conv_model(WEIGHTS))
    fp16 = runner(conv_model(WEIGHTS.astype(np.float16), TensorProto.FLOAT16), cast=np.float16)
    result = verify(reference, fp16, SPECS, CASES, FP16)
    assert result.passed
    assert result.reference == "onnxruntime-fp32"
    assert len(result.cases) == 2
    # fp16 rounding is visible but small.
    assert result.max_abs_error > 1e-5 and result.max_rel_error < FP16.rel
    assert result.cases[1].input_shapes == {"latent_sample": (1, 4, 8, 8)}


def test_a_wrong_engine_fails():
    reference = runner(conv_model(WEIGHTS))
    wrong = runner(conv_model(WEIGHTS * 1.2))
    result = verify(reference, wrong, SPECS, CASES, FP16)
    assert not result.passed
    assert result.max_rel_error > 0.1


def test_nan_output_is_an_infinite_error():
    reference = runner(conv_model(WEIGHTS))

    def overflowing(feeds):
        out = reference(feeds)["sample"].copy()
        out[0, 0, 0, 0] = np.nan
        return {"sample": out}

    result = verify(reference, overflowing, SPECS, CASES[:1], FP16)
    assert not result.passed and result.max_abs_error == float("inf")


def test_relative_error_is_against_the_reference_scale():
    ref = {"y": np.array([100.0, 0.001, -50.0])}
    got = {"y": np.array([100.5, 0.002, -50.0])}
    max_abs, max_rel = measure(ref, got)
    assert max_abs == pytest.approx(0.5)
    assert max_rel == pytest.approx(0.5 / 100.0)  # not 0.001 / 0.001


def test_output_errors_are_relative_to_the_reference_scale_and_inf_when_not_finite():
    expected = np.array([[0.0, 10.0], [-20.0, 5.0]], np.float32)
    actual = expected + np.array([[0.0, 0.5], [0.0, -1.0]], np.float32)
    assert output_errors(actual, expected) == (1.0, 1.0 / 20.0)
    assert output_errors(expected, expected) == (0.0, 0.0)
    with_nan = actual.copy()
    with_nan[0, 0] = np.nan
    assert output_errors(with_nan, expected) == (math.inf, math.inf)
    # Either side: a reference that is not finite cannot vouch for the candidate.
    assert measure({"y": with_nan}, {"y": expected}) == (math.inf, math.inf)


def test_shape_or_output_mismatch_is_an_error():
    with pytest.raises(VerificationError, match="did not return the outputs \\['b'\\]"):
        measure({"a": np.zeros(2), "b": np.zeros(2)}, {"a": np.zeros(2)})
    with pytest.raises(VerificationError, match="returned shape \\[3\\], the reference \\[2\\]"):
        measure({"a": np.zeros(2)}, {"a": np.zeros(3)})


def test_sample_inputs_follow_the_specs_and_the_seed():
    specs = (
        TensorSpec("input_ids", "int32", ("batch", "sequence")),
        TensorSpec("timestep", "int64", ("steps",)),
        TensorSpec("sample", "float16", ("batch", 4, "h", "w")),
    )
    shapes = {"input_ids": (2, 77), "timestep": (1,), "sample": (2, 4, 8, 8)}
    feeds = sample_inputs(specs, shapes, seed=3)
    assert feeds["input_ids"].dtype == np.int32 and feeds["input_ids"].shape == (2, 77)
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 256
    assert feeds["timestep"].dtype == np.int64 and 0 <= feeds["timestep"][0] < 1000
    assert feeds["sample"].dtype == np.float16 and feeds["sample"].shape == (2, 4, 8, 8)
    again = sample_inputs(specs, shapes, seed=3)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    other = sample_inputs(specs, shapes, seed=4)
    assert not np.array_equal(feeds["sample"], other["sample"])
