"""Backend selection with and without the GPU libraries (imports and devices simulated)."""

from __future__ import annotations

import builtins
import logging
import sys
import types

import pytest
from engine_helpers import make_folder
from test_engines_build import build

from sdrt.backends.machine import Machine, probe_machine
from sdrt.backends.registry import select_backend
from sdrt.errors import BackendUnavailableError, InputError
from sdrt.manifest import read_manifest

CPU_ONLY = Machine(None, None, 0, ("CPUExecutionProvider",))
FULL_GPU = Machine("10.3.0", "13.3.0", 1, ("CUDAExecutionProvider", "CPUExecutionProvider"), "8.9")


def machine(m):
    return lambda: m


def test_auto_on_a_cpu_machine_picks_ort_cpu_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="sdrt.backends.registry"):
        choice = select_backend("auto", probe=machine(CPU_ONLY))
    assert choice.backend == "ort-cpu"
    assert "not tensorrt: needs the tensorrt package" in choice.reason
    assert "not ort-cuda: needs ONNX Runtime's CUDAExecutionProvider" in choice.reason
    assert "backend auto: picked ort-cpu" in caplog.text


def test_auto_picks_tensorrt_when_everything_is_there():
    assert select_backend("auto", probe=machine(FULL_GPU)).backend == "tensorrt"


def test_auto_without_tensorrt_picks_ort_cuda():
    gpu_ort = Machine(None, "13.3.0", 1, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    choice = select_backend("auto", probe=machine(gpu_ort))
    assert choice.backend == "ort-cuda"
    assert "not tensorrt: needs the tensorrt package" in choice.reason


def test_libraries_without_a_device_fall_back_to_the_cpu():
    no_device = Machine("10.3.0", "13.3.0", 0, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    choice = select_backend("auto", probe=machine(no_device))
    assert choice.backend == "ort-cpu"
    assert "a CUDA device (cupy sees none)" in choice.reason


def test_auto_needs_engines_built_for_this_gpu_before_picking_tensorrt(tmp_path):
    folder = tmp_path / "model"
    manifest = make_folder(folder)
    choice = select_backend("auto", manifest, probe=machine(FULL_GPU))
    assert choice.backend == "ort-cuda"
    assert "no fp16 TensorRT engine for text_encoder" in choice.reason

    build(folder)  # engines for TensorRT 10.3.0 on compute capability 8.9
    manifest = read_manifest(folder)
    assert select_backend("auto", manifest, probe=machine(FULL_GPU)).backend == "tensorrt"
    hopper = Machine("10.3.0", "13.3.0", 1, FULL_GPU.ort_providers, "9.0")
    choice = select_backend("auto", manifest, probe=machine(hopper))
    assert choice.backend == "ort-cuda"
    assert "compute capability 8.9" in choice.reason and "rebuild" in choice.reason
    with pytest.raises(
        BackendUnavailableError, match="this machine has TensorRT 10.3.0 on compute capability 9.0"
    ):
        select_backend("tensorrt", manifest, probe=machine(hopper))


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (
            "tensorrt",
            r"backend 'tensorrt' is not available here: it needs the tensorrt package \(pip install 'sdrt\[gpu\]'\); cupy",
        ),
        (
            "ort-cuda",
            "it needs ONNX Runtime's CUDAExecutionProvider .*this onnxruntime has CPUExecutionProvider",
        ),
    ],
)
def test_explicit_backend_that_is_missing_names_what_is_missing(backend, message):
    with pytest.raises(BackendUnavailableError, match=message):
        select_backend(backend, probe=machine(CPU_ONLY))


def test_explicit_cpu_and_unknown_names():
    assert select_backend("ort-cpu", probe=machine(FULL_GPU)).backend == "ort-cpu"
    with pytest.raises(
        InputError,
        match="backend: expected one of auto, openvino, ort-cpu, ort-cuda, tensorrt, got 'cuda'",
    ):
        select_backend("cuda", probe=machine(CPU_ONLY))


def test_probe_on_this_machine_without_gpu_libraries(monkeypatch):
    real_import = builtins.__import__

    def no_gpu(name, *args, **kwargs):
        if name in ("tensorrt", "cupy"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gpu)
    found = probe_machine()
    assert found.tensorrt_version is None and found.cupy_version is None
    assert found.cuda_devices == 0
    assert "CPUExecutionProvider" in found.ort_providers
    assert select_backend("auto", probe=lambda: found).backend == "ort-cpu"


def test_probe_with_gpu_libraries_present(monkeypatch):
    fake_trt = types.ModuleType("tensorrt")
    fake_trt.__version__ = "10.3.0"
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.__version__ = "13.3.0"
    fake_cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 2),
        Device=lambda i: types.SimpleNamespace(compute_capability="90"),
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    found = probe_machine()
    assert found == Machine(
        "10.3.0",
        "13.3.0",
        2,
        ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        "9.0",
    )
    assert select_backend("auto", probe=lambda: found).backend == "tensorrt"


def test_probe_with_cupy_but_no_driver(monkeypatch):
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.__version__ = "13.3.0"

    class CUDARuntimeError(RuntimeError):
        pass

    def no_driver():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake_cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_driver))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    found = probe_machine()
    assert found.cupy_version == "13.3.0" and found.cuda_devices == 0
    with pytest.raises(BackendUnavailableError, match="a CUDA device"):
        select_backend("ort-cuda", probe=lambda: found)


def test_create_sessions_routes_gpu_backends_through_the_selection(tmp_path, monkeypatch):
    from sdrt.backends import create_sessions, select_backend

    real_import = builtins.__import__

    def no_gpu(name, *args, **kwargs):
        if name in ("tensorrt", "cupy"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gpu)
    manifest = make_folder(tmp_path / "model")
    assert select_backend("auto", manifest).backend == "ort-cpu"
    for backend, missing in (("tensorrt", "the tensorrt package"), ("ort-cuda", "cupy")):
        with pytest.raises(BackendUnavailableError, match=f"backend '{backend}' .*{missing}"):
            create_sessions(tmp_path / "model", manifest, backend)


def test_an_sdxl_folder_needs_its_second_text_encoder_engine_too(tmp_path):
    import dataclasses

    folder = tmp_path / "model"
    make_folder(folder)
    build(folder)
    manifest = read_manifest(folder)
    sdxl = dataclasses.replace(
        manifest,
        components={
            **manifest.components,
            "text_encoder_2": dataclasses.replace(
                manifest.components["text_encoder"], name="text_encoder_2"
            ),
        },
    )
    choice = select_backend("auto", sdxl, probe=machine(FULL_GPU))
    assert choice.backend == "ort-cuda"
    assert "no fp16 TensorRT engine for text_encoder_2" in choice.reason
