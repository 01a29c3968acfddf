"""The ORT CUDA session's own logic on the CPU, with numpy fakes of onnxruntime and cupy.

ONNX Runtime's CUDA provider is not run here (the gpu tests do that). What is tested is
what the session does around it: cupy inputs bound by address, numpy inputs uploaded by
ONNX Runtime, outputs handed back as cupy arrays over ONNX Runtime's memory (kept alive by
the array), and in CUDA-graph mode fixed OrtValues per input shape, one graph id each,
inputs copied in and outputs copied out. The fakes follow the documented Python API
(``IOBinding.bind_input/bind_cpu_input/bind_output/bind_ortvalue_*``, ``get_outputs``,
``OrtValue.ortvalue_from_shape_and_type``, ``RunOptions.add_run_config_entry``).
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

from sdrt.manifest import Component, TensorSpec

MEMORY: dict[int, np.ndarray] = {}  # device address -> the buffer that starts there


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _register(array: np.ndarray) -> np.ndarray:
    MEMORY[_address(array)] = array
    return array


# ---------------------------------------------------------------------------- fake cupy


class FakeArray(np.ndarray):
    def __new__(cls, shape=None, dtype=None, memptr=None):
        # cupy.ndarray(shape, dtype, memptr): an array over existing device memory.
        base = MEMORY[memptr.ptr].view(np.uint8)
        count = math.prod(shape)
        flat = base[: count * np.dtype(dtype).itemsize].view(dtype)
        array = flat.reshape(shape).view(cls)
        array.owner = memptr.mem.owner
        return array

    @property
    def data(self):
        return types.SimpleNamespace(ptr=_address(self))

    def get(self):
        return np.array(self.view(np.ndarray), copy=True)


FakeArray.__module__ = "cupy._core.core"


class FakeStream:
    def __init__(self, non_blocking=False):
        self.ptr = 4242

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def record(self):
        return object()

    def wait_event(self, event):
        pass


class Device:
    def __init__(self, index):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def fake_cupy():
    cp = types.ModuleType("cupy")
    cp.ndarray = FakeArray

    def asarray(a):
        array = np.array(a, copy=True) if not isinstance(a, FakeArray) else a
        return _register(np.ascontiguousarray(array)).view(FakeArray)

    cp.asarray = asarray
    cp.ascontiguousarray = lambda a: a
    cp.cuda = types.SimpleNamespace(
        Device=Device,
        Stream=FakeStream,
        get_current_stream=lambda: FakeStream(),
        UnownedMemory=lambda ptr, size, owner: types.SimpleNamespace(ptr=ptr, owner=owner),
        MemoryPointer=lambda mem, offset: types.SimpleNamespace(ptr=mem.ptr + offset, mem=mem),
    )
    return cp


# ---------------------------------------------------------------------------- fake onnxruntime

ONNX_TYPES = {np.dtype(np.float32): "tensor(float)", np.dtype(np.float16): "tensor(float16)"}


class FakeOrtValue:
    def __init__(self, array):
        self.array = _register(np.ascontiguousarray(array))

    @classmethod
    def ortvalue_from_shape_and_type(cls, shape, element_type, device_type, device_id):
        assert device_type == "cuda"
        return cls(np.zeros(shape, dtype=element_type))

    def data_ptr(self):
        return _address(self.array)

    def shape(self):
        return list(self.array.shape)

    def data_type(self):
        return ONNX_TYPES[self.array.dtype]


class FakeBinding:
    def __init__(self):
        self.inputs, self.outputs = {}, {}
        self.uploads = 0

    def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr):
        assert device_type == "cuda" and isinstance(element_type, type)
        count = math.prod(shape)
        self.inputs[name] = MEMORY[buffer_ptr].reshape(-1)[:count].reshape(shape)

    def bind_cpu_input(self, name, array):
        assert type(array) is np.ndarray
        self.uploads += 1
        self.inputs[name] = array

    def bind_output(self, name, device_type, device_id):
        assert device_type == "cuda"
        self.outputs[name] = None  # ONNX Runtime allocates at run time

    def bind_ortvalue_input(self, name, value):
        self.inputs[name] = value.array

    def bind_ortvalue_output(self, name, value):
        self.outputs[name] = value

    def get_outputs(self):
        return list(self.outputs.values())


class FakeRunOptions:
    def __init__(self):
        self.entries = {}

    def add_run_config_entry(self, key, value):
        self.entries[key] = value


class FakeInferenceSession:
    """out_sample = 2 * sample + timestep; records providers and graph ids."""

    made = []

    def __init__(self, path, options, providers):
        self.providers = providers
        self.runs = []
        FakeInferenceSession.made.append(self)

    def get_outputs(self):
        return [types.SimpleNamespace(name="out_sample")]

    def io_binding(self):
        return FakeBinding()

    def run_with_iobinding(self, binding, run_options=None):
        graph_id = run_options.entries.get("gpu_graph_id") if run_options else None
        self.runs.append(graph_id)
        sample, timestep = binding.inputs["sample"], binding.inputs["timestep"]
        result = (2 * sample + timestep.reshape(-1)[0]).astype(np.float32)
        target = binding.outputs["out_sample"]
        if target is None:
            binding.outputs["out_sample"] = FakeOrtValue(result)
        else:
            target.array[...] = result


def fake_onnxruntime():
    ort = types.ModuleType("onnxruntime")
    ort.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    ort.SessionOptions = lambda: types.SimpleNamespace()
    ort.InferenceSession = FakeInferenceSession
    ort.OrtValue = FakeOrtValue
    ort.RunOptions = FakeRunOptions
    return ort


@pytest.fixture
def component(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_onnxruntime())
    MEMORY.clear()
    FakeInferenceSession.made.clear()
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "model.onnx").write_bytes(b"graph")
    return Component(
        name="unet",
        file="unet/model.onnx",
        sha256="",
        precision="fp32",
        opset=17,
        inputs=(
            TensorSpec("sample", "float32", ("steps", 4, "h", "w")),
            TensorSpec("timestep", "float32", ("steps",)),
        ),
        outputs=(TensorSpec("out_sample", "float32", ("steps", 4, "h", "w")),),
    )


def feeds(batch, side, seed, timestep):
    sample = np.random.default_rng(seed).standard_normal((batch, 4, side, side), np.float32)
    return {"sample": sample, "timestep": np.array([timestep], np.float32)}


def test_device_inputs_are_bound_and_outputs_stay_on_the_device(component, tmp_path):
    from sdrt.backends.ort_cuda import OrtCudaSession

    cp = sys.modules["cupy"]
    session = OrtCudaSession(tmp_path, component)
    (made,) = FakeInferenceSession.made
    name, options = made.providers[0]
    assert name == "CUDAExecutionProvider"
    assert options["user_compute_stream"] == "4242" and options["enable_cuda_graph"] == "0"
    f = feeds(2, 8, seed=0, timestep=3.0)
    out = session.run({k: cp.asarray(v) for k, v in f.items()})["out_sample"]
    assert type(out) is FakeArray and out.shape == (2, 4, 8, 8)
    assert isinstance(out.owner, FakeOrtValue)  # the array keeps ONNX Runtime's value alive
    np.testing.assert_array_equal(out.get(), 2 * f["sample"] + 3.0)
    # numpy inputs are uploaded by ONNX Runtime (bind_cpu_input).
    out = session.run(feeds(1, 4, seed=1, timestep=1.0))["out_sample"]
    assert out.shape == (1, 4, 4, 4)


def test_cuda_graph_mode_uses_fixed_values_and_one_graph_id_per_shape(component, tmp_path):
    from sdrt.backends.ort_cuda import OrtCudaOptions, OrtCudaSession

    cp = sys.modules["cupy"]
    session = OrtCudaSession(tmp_path, component, OrtCudaOptions(cuda_graph=True))
    (made,) = FakeInferenceSession.made
    assert made.providers[0][1]["enable_cuda_graph"] == "1"
    results = []
    for batch, seed in ((2, 0), (2, 1), (1, 2), (2, 3)):
        f = feeds(batch, 8, seed=seed, timestep=float(seed))
        out = session.run({k: cp.asarray(v) for k, v in f.items()})["out_sample"]
        np.testing.assert_array_equal(out.get(), 2 * f["sample"] + seed)
        results.append(out)
    # Outputs are copies: the fixed output value was overwritten by later runs.
    np.testing.assert_array_equal(results[0].get(), 2 * feeds(2, 8, seed=0, timestep=0.0)["sample"])
    assert made.runs == ["1", "1", "2", "1"]
    assert len(session._graphs) == 2
