"""The int8 build's default gate: its documented values, and a build above it failing.

The other int8 tests pass thresholds of their own, so a loosened ``INT8_THRESHOLDS`` would
pass them. Here the real build functions run with their defaults on a one-node stand-in for
the U-Net (no pipeline, no calibration: both are replaced by feeds and an "int8" graph whose
error is known), so the gate itself is what decides.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sdrt.engines import int8_unet
from sdrt.engines.compare import Thresholds

from sdrt.errors import VerificationError
from sdrt.manifest import Component, TensorSpec, sha256_file

# README ("int8 U-Net"): "above INT8_THRESHOLDS (max rel error 0.25) the build fails".
DOCUMENTED_INT8_GATE = Thresholds(abs=1e-3, rel=0.25)
# The stand-in's output is 1.0 everywhere, so a weight off by E gives max abs = max rel = E.
OVER_THE_GATE = 0.30
UNDER_THE_GATE = 0.20


def test_the_default_int8_gate_is_the_documented_one():
    assert int8_unet.INT8_THRESHOLDS == DOCUMENTED_INT8_GATE


def _graph(weight: np.ndarray) -> onnx.ModelProto:
    """out = sample * weight + timestep: a U-Net stand-in with two of the U-Net's inputs."""
    nodes = [
        helper.make_node("Mul", ["sample", "weight"], ["scaled"]),
        helper.make_node("Add", ["scaled", "timestep"], ["out_sample"]),
    ]
    graph = helper.make_graph(
        nodes,
        "unet",
        [
            helper.make_tensor_value_info("sample", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(weight, "weight")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fp32_folder(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    onnx.save(_graph(np.ones(4, np.float32)), str(unet / "model.onnx"))
    spec = (TensorSpec("sample", "float32", (1, 4)), TensorSpec("timestep", "float32", (1,)))
    component = Component(
        name="unet",
        file="unet/model.onnx",
        sha256=sha256_file(unet / "model.onnx"),
        precision="fp32",
        opset=17,
        inputs=spec,
        outputs=(TensorSpec("out_sample", "float32", (1, 4)),),
    )
    return tmp_path, component


def _perturbed(error: float) -> onnx.ModelProto:
    weight = np.ones(4, np.float32)
    weight[0] += error
    return _graph(weight)


def _fake_feeds(monkeypatch, module):
    feeds = [{"sample": np.ones((1, 4), np.float32), "timestep": np.zeros(1, np.float32)}]
    monkeypatch.setattr(module, "record_unet_feeds", lambda *a, **k: feeds)
    monkeypatch.setattr(module, "held_out_feeds", lambda *a, **k: feeds)


def _ort_build(monkeypatch, folder, component, error):
    def quantize_unet(fp32_file, out_file, feeds, options):
        onnx.save(_perturbed(error), str(out_file))
        return []

    _fake_feeds(monkeypatch, int8_unet)
    monkeypatch.setattr(int8_unet, "quantize_unet", quantize_unet)
    return int8_unet.build_int8_unet(folder, component, int8_unet.Int8Options())


def _nncf_build(monkeypatch, folder, component, error):
    pytest.importorskip("openvino")
    from sdrt.engines import int8_unet_nncf

    def quantize(onnx_file, feeds, keep_fp32):
        import openvino as ov

        perturbed = onnx_file.parent / "perturbed.onnx"
        onnx.save(_perturbed(error), str(perturbed))
        return ov.Core().read_model(str(perturbed))

    _fake_feeds(monkeypatch, int8_unet_nncf)
    monkeypatch.setattr(int8_unet_nncf, "quantize", quantize)
    return int8_unet_nncf.build_nncf_unet(folder, component, int8_unet.Int8Options())


BUILDS = pytest.mark.parametrize("build", [_ort_build, _nncf_build], ids=["ort", "nncf"])


@BUILDS
def test_an_int8_unet_over_the_default_gate_fails_the_build(monkeypatch, tmp_path, build):
    folder, component = _fp32_folder(tmp_path)
    with pytest.raises(VerificationError, match=r"max rel error 0\.3 .*rel 0\.25"):
        build(monkeypatch, folder, component, OVER_THE_GATE)


@BUILDS
def test_an_int8_unet_under_the_default_gate_is_kept(monkeypatch, tmp_path, build):
    folder, component = _fp32_folder(tmp_path)
    record = build(monkeypatch, folder, component, UNDER_THE_GATE)
    verification = record.openvino.verification if record.openvino else record.verification
    assert verification.passed
    assert verification.threshold_rel == DOCUMENTED_INT8_GATE.rel
    assert verification.max_rel_error == pytest.approx(UNDER_THE_GATE, rel=1e-5)
