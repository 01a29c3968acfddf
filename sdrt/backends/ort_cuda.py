"""The ort-cuda backend: ONNX Runtime on CUDA, I/O binding on device arrays, CUDA graphs.

The CPU session (sdrt/backends/ort_cpu.py) hands numpy arrays to ``session.run``,
which copies every input to the device and every output back. Here inputs and outputs stay
on the GPU: cupy arrays are bound by pointer (``IOBinding.bind_input``), outputs are left
in ONNX Runtime's device memory and handed back as cupy arrays over that memory (no copy),
and numpy inputs are uploaded by ONNX Runtime itself (``bind_cpu_input``).

ONNX Runtime computes on a stream we own (``user_compute_stream``), ordered after the
caller's current cupy stream by an event, so no host synchronisation is needed on the way
in; the caller's stream in turn waits on an event recorded on ours after the run, so the
outputs are ready for whatever the caller queues next (whether or not ONNX Runtime
synchronises its stream at the end of a run). Device inputs that are not C-contiguous are
copied on the caller's stream *before* the first event is recorded (so our stream's wait
covers the copy), and the copies are kept alive until the run and the second event are
queued (so their memory is not handed out again while ONNX Runtime may still read it).

``onnxruntime.preload_dlls()`` (ONNX Runtime 1.21+) is called once before the first CUDA
session, so that CUDA and cuDNN installed from pip (the nvidia-* wheels) are found without
LD_LIBRARY_PATH.

With ``cuda_graph=True`` the CUDA execution provider captures the graph on the first runs
and replays it after; that needs inputs and outputs at fixed device addresses, so each
input shape gets its own preallocated OrtValues and graph id. Output shapes come from the
component's symbolic output dimensions (the same names as in its inputs); a graph whose
outputs cannot be sized that way is refused with a clear error.

This module is separate from the CPU session because the CUDA provider takes provider
options (device, stream, graph) that ``OrtOptions.providers`` (names only) does not carry.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.arrays import import_cupy
from sdrt.backends.machine import Machine
from sdrt.backends.protocol import Session, check_feeds, options_of_type
from sdrt.backends.shapes import resolve_output_shapes
from sdrt.errors import BackendUnavailableError, InputError, ModelFolderError
from sdrt.manifest import Component, Manifest

NAME = "ort-cuda"
PROVIDER = "CUDAExecutionProvider"


@dataclass(frozen=True)
class OrtCudaOptions:
    device_id: int = 0
    cuda_graph: bool = False
    # Heuristic convolution algorithm search: "EXHAUSTIVE" is faster per run once warmed up
    # but slows every first run of a new shape by seconds.
    cudnn_conv_algo_search: str = "HEURISTIC"
    # The CUDA provider runs fp32 convolutions and matmuls in TF32 (10-bit mantissa
    # products) unless told not to; off, an fp32 graph matches the CPU to fp32 rounding.
    # fp16 graphs are unaffected. Turn on for speed on fp32 folders.
    use_tf32: bool = False


# OrtValue.data_type() names ONNX element types: "tensor(float)" is float32.
_ONNX_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _ort_dtype(type_name: str) -> np.dtype:
    if type_name not in _ONNX_TO_NUMPY:
        raise InputError(f"unsupported ONNX Runtime output type {type_name}")
    return np.dtype(_ONNX_TO_NUMPY[type_name])


_preload_lock = threading.Lock()
_preloaded = False


def preload_cuda_libraries(ort) -> None:
    """``ort.preload_dlls()`` once per process, where this onnxruntime has it (1.21+)."""
    global _preloaded
    with _preload_lock:
        if _preloaded:
            return
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            preload()
        _preloaded = True


def cupy_view(value, cp) -> Any:
    """A cupy array over an OrtValue's device memory; the array keeps the OrtValue alive."""
    dtype = _ort_dtype(value.data_type())
    shape = tuple(value.shape())
    nbytes = max(math.prod(shape), 1) * dtype.itemsize
    memory = cp.cuda.UnownedMemory(value.data_ptr(), nbytes, owner=value)
    return cp.ndarray(shape, dtype=dtype, memptr=cp.cuda.MemoryPointer(memory, 0))


class OrtCudaSession:
    """One component on ONNX Runtime's CUDA provider; returns cupy arrays."""

    def __init__(
        self,
        folder: str | Path,
        component: Component,
        options: OrtCudaOptions = OrtCudaOptions(),
    ):
        import onnxruntime as ort

        if PROVIDER not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"the ort-cuda backend needs ONNX Runtime's {PROVIDER} (pip install "
                f"onnxruntime-gpu); this onnxruntime has {ort.get_available_providers()}"
            )
        preload_cuda_libraries(ort)
        cp = import_cupy()
        path = Path(folder) / component.file
        if not path.is_file():
            raise ModelFolderError(
                f"{folder}: the {component.name} graph {component.file} is missing"
            )
        self.name = component.name
        self.inputs = component.inputs
        self.outputs = component.outputs
        # LoRA branch factors (sdrt/adapters/lora_state.py), bound as host inputs per run; a
        # CUDA graph replays fixed bindings, so with one the session takes none (None).
        branches = tuple(s for b in component.lora_branches for s in b.specs)
        self.weight_inputs = None if options.cuda_graph else branches
        self.options = options
        self._ort = ort
        self._cp = cp
        self._lock = threading.Lock()
        with cp.cuda.Device(options.device_id):
            self._stream = cp.cuda.Stream(non_blocking=True)
        provider_options = {
            "device_id": str(options.device_id),
            "user_compute_stream": str(self._stream.ptr),
            "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
            "enable_cuda_graph": "1" if options.cuda_graph else "0",
            "use_tf32": "1" if options.use_tf32 else "0",
        }
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(path), so, providers=[(PROVIDER, provider_options), "CPUExecutionProvider"]
        )
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._graphs: dict[tuple, tuple[int, Any, dict[str, Any], dict[str, Any]]] = {}

    # ------------------------------------------------------------------ plain I/O binding

    def _contiguous(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Device inputs made C-contiguous, on the caller's stream (before its event)."""
        cp = self._cp
        return {
            spec.name: cp.ascontiguousarray(feeds[spec.name])
            if isinstance(feeds[spec.name], cp.ndarray)
            else feeds[spec.name]
            for spec in self.inputs
        }

    def _bind_feed(self, binding, name: str, value) -> None:
        if isinstance(value, self._cp.ndarray):
            binding.bind_input(
                name,
                "cuda",
                self.options.device_id,
                value.dtype.type,
                list(value.shape),
                value.data.ptr,
            )
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(value))

    def _run_bound(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        binding = self._session.io_binding()
        for spec in self.inputs:
            self._bind_feed(binding, spec.name, feeds[spec.name])
        for spec in self.weight_inputs or ():
            if spec.name in feeds:
                binding.bind_cpu_input(spec.name, np.ascontiguousarray(feeds[spec.name]))
        for name in self._output_names:
            binding.bind_output(name, "cuda", self.options.device_id)
        self._session.run_with_iobinding(binding)
        return {
            name: cupy_view(value, self._cp)
            for name, value in zip(self._output_names, binding.get_outputs(), strict=True)
        }

    # ------------------------------------------------------------------ CUDA graph

    def _graph_for(self, shapes: Mapping[str, tuple[int, ...]]):
        key = tuple(shapes[s.name] for s in self.inputs)
        if key in self._graphs:
            return self._graphs[key]
        ort, cp = self._ort, self._cp
        out_shapes = resolve_output_shapes(self.inputs, self.outputs, shapes)
        device = ("cuda", self.options.device_id)
        inputs = {
            s.name: ort.OrtValue.ortvalue_from_shape_and_type(
                list(shapes[s.name]), np.dtype(s.dtype).type, *device
            )
            for s in self.inputs
        }
        outputs = {
            s.name: ort.OrtValue.ortvalue_from_shape_and_type(
                list(out_shapes[s.name]), np.dtype(s.dtype).type, *device
            )
            for s in self.outputs
        }
        binding = self._session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(len(self._graphs) + 1))
        views = {name: cupy_view(value, cp) for name, value in inputs.items()}
        self._graphs[key] = (binding, run_options, views, outputs)
        return self._graphs[key]

    def _run_graph(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        cp = self._cp
        shapes = {s.name: tuple(int(d) for d in feeds[s.name].shape) for s in self.inputs}
        binding, run_options, views, outputs = self._graph_for(shapes)
        with self._stream:
            for name, view in views.items():
                view[...] = cp.asarray(feeds[name])
        self._session.run_with_iobinding(binding, run_options)
        with self._stream:
            return {name: cupy_view(value, cp).copy() for name, value in outputs.items()}

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        check_feeds(self.name, self.inputs, feeds, self.weight_inputs or ())
        cp = self._cp
        with self._lock, cp.cuda.Device(self.options.device_id):
            caller = cp.cuda.get_current_stream()
            # Queued on the caller's stream before its event: our stream's wait covers them.
            # Referenced until the end of this block: their memory is not reused meanwhile.
            contiguous = {**feeds, **self._contiguous(feeds)}
            self._stream.wait_event(caller.record())
            run = self._run_graph if self.options.cuda_graph else self._run_bound
            results = run(contiguous)
            caller.wait_event(self._stream.record())
            del contiguous  # only now: the caller's stream is ordered after the run
        return results


class OrtCudaBackend:
    name = NAME
    options_type = OrtCudaOptions

    def missing(self, machine: Machine) -> list[str]:
        missing = []
        if PROVIDER not in machine.ort_providers:
            missing.append(
                f"ONNX Runtime's {PROVIDER} (onnxruntime-gpu; this onnxruntime has "
                f"{', '.join(machine.ort_providers) or 'no providers'})"
            )
        return missing + machine.missing_cuda()

    def folder_problem(self, manifest: Manifest, machine: Machine) -> str | None:
        return None  # runs each graph in the precision it was exported in

    def open_sessions(
        self,
        folder: Path,
        manifest: Manifest,
        names: tuple[str, ...],
        machine: Machine,
        options: OrtCudaOptions | None = None,
    ) -> dict[str, Session]:
        options = options_of_type(self, options)
        return {name: OrtCudaSession(folder, manifest.components[name], options) for name in names}


BACKEND = OrtCudaBackend()
