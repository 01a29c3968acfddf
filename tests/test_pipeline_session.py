"""The ONNX Runtime session on a two-node graph: feeds checked, errors named, graphs cached."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from sdrt.backends.ort_cpu import OrtSession
from sdrt.backends.ort_cpu_options import (
    KEY_RECORD,
    OrtOptions,
    optimized_model_path,
    physical_cores,
)
from sdrt.errors import BackendUnavailableError, InputError, ModelFolderError, SdrtError
from sdrt.manifest import Component, TensorSpec

onnx = pytest.importorskip("onnx")
helper = onnx.helper

SCALE = 2.0


def _write_graph(folder: Path) -> Component:
    """y = relu(x @ (SCALE * I)) with x of shape (batch, 4)."""
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [4, 4], (np.eye(4) * SCALE).ravel())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Relu", ["z"], ["y"])],
        "g",
        [x],
        [y],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, folder / "unet" / "model.onnx")
    return Component(
        name="unet",
        file="unet/model.onnx",
        sha256="0" * 64,
        precision="fp32",
        opset=17,
        inputs=(TensorSpec("x", "float32", ("batch", 4)),),
        outputs=(TensorSpec("y", "float32", ("batch", 4)),),
    )


def test_runs_and_saves_the_optimised_graph_once(tmp_path):
    component = _write_graph(tmp_path)
    session = OrtSession(tmp_path, component, OrtOptions())
    x = np.array([[1, -1, 2, -2]], np.float32)
    np.testing.assert_array_equal(session.run({"x": x})["y"], np.maximum(x * SCALE, 0))
    saved = optimized_model_path(tmp_path, component, OrtOptions())
    assert session.model_path == saved and saved.is_file()
    again = OrtSession(tmp_path, component, OrtOptions())
    assert again.model_path == saved
    other_level = OrtOptions(graph_optimization="basic")
    assert optimized_model_path(tmp_path, component, other_level) != saved
    changed = dataclasses.replace(component, sha256="1" * 64)
    assert optimized_model_path(tmp_path, changed, OrtOptions()) != saved
    no_cache = OrtSession(tmp_path, component, OrtOptions(cache_optimized_model=False))
    assert no_cache.model_path == tmp_path / component.file


def test_saving_a_graph_removes_the_copies_it_supersedes(tmp_path):
    import json
    import shutil

    component = _write_graph(tmp_path)
    first = OrtSession(tmp_path, component, OrtOptions())
    saved_dir = first.model_path.parent
    ours = json.loads((saved_dir / KEY_RECORD).read_text())
    assert ours["sha256"] == component.sha256 and ours["component"] == "unet"
    siblings = {
        "unet-othergraph": {**ours, "sha256": "1" * 64},
        "unet-olderort": {**ours, "onnxruntime": "0.0.1"},
        "unet-othercpu": {**ours, "cpu": "another", "onnxruntime": "0.0.1"},
        "unet-otheroptions": ours,
        "unet-unknown": None,
        "unet_2-othergraph": {**ours, "component": "unet_2", "sha256": "1" * 64},
    }
    for name, record in siblings.items():
        (saved_dir.parent / name).mkdir()
        if record is not None:
            (saved_dir.parent / name / KEY_RECORD).write_text(json.dumps(record))
    shutil.rmtree(saved_dir)  # the next session writes it again, and prunes then
    again = OrtSession(tmp_path, component, OrtOptions())
    assert again.model_path == first.model_path
    left = sorted(p.name for p in saved_dir.parent.iterdir())
    expected = {"unet-othercpu", "unet-otheroptions", "unet-unknown", "unet_2-othergraph"}
    assert left == sorted({saved_dir.name, *expected})


def test_read_only_folder_still_loads(tmp_path, monkeypatch):
    component = _write_graph(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr("sdrt.backends.ort_saved_graphs.write_optimized_model", refuse)
    session = OrtSession(tmp_path, component, OrtOptions())
    assert session.model_path == tmp_path / component.file
    assert session.run({"x": np.ones((2, 4), np.float32)})["y"].shape == (2, 4)


def test_concurrent_runs_match_sequential_runs(tmp_path):
    session = OrtSession(tmp_path, _write_graph(tmp_path), OrtOptions())
    inputs = [np.random.default_rng(i).standard_normal((3, 4), dtype=np.float32) for i in range(16)]
    sequential = [session.run({"x": x})["y"] for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda x: session.run({"x": x})["y"], inputs))
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(a, b)


def test_feeds_are_checked(tmp_path):
    session = OrtSession(tmp_path, _write_graph(tmp_path), OrtOptions())
    with pytest.raises(InputError, match=r"unet: input 'x' expected dtype float32, got float64"):
        session.run({"x": np.ones((1, 4))})
    with pytest.raises(
        InputError, match=r"unet: input 'x' expected shape \['batch', 4\], got \[1, 5\]"
    ):
        session.run({"x": np.ones((1, 5), np.float32)})
    with pytest.raises(InputError, match=r"unet: expected inputs \['x'\], got \['y'\]"):
        session.run({"y": np.ones((1, 4), np.float32)})


def test_graph_that_does_not_load(tmp_path):
    component = _write_graph(tmp_path)
    (tmp_path / component.file).write_bytes(b"not a protobuf")
    with pytest.raises(ModelFolderError, match=r"ONNX Runtime .* cannot load unet/model.onnx"):
        OrtSession(tmp_path, component, OrtOptions(cache_optimized_model=False))
    (tmp_path / component.file).unlink()
    with pytest.raises(ModelFolderError, match=r"the unet graph unet/model.onnx is missing"):
        OrtSession(tmp_path, component, OrtOptions())


def test_run_failure_names_the_graph_and_shapes(tmp_path):
    component = _write_graph(tmp_path)
    # A spec looser than the graph lets a bad shape reach ORT itself.
    loose = dataclasses.replace(component, inputs=(TensorSpec("x", "float32", ("batch", "n")),))
    session = OrtSession(tmp_path, loose, OrtOptions())
    with pytest.raises(SdrtError, match=r"unet: ONNX Runtime failed on inputs \{'x': \[1, 3\]\}"):
        session.run({"x": np.ones((1, 3), np.float32)})


def test_unavailable_provider(tmp_path):
    options = OrtOptions(providers=("NoSuchExecutionProvider",))
    with pytest.raises(BackendUnavailableError, match=r"NoSuchExecutionProvider"):
        OrtSession(tmp_path, _write_graph(tmp_path), options)


def test_options_are_checked():
    with pytest.raises(ValueError, match=r"graph_optimization: expected one of .*, got 'max'"):
        OrtOptions(graph_optimization="max")
    assert physical_cores() >= 1
