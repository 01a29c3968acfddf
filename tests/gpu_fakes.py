"""Strict numpy fakes of cupy, tensorrt, polygraphy and onnxruntime's CUDA parts.

The CPU tests of the GPU code (sdrt/backends/ort_cuda.py, tensorrt.py, engines/tensorrt.py)
inject these through ``sys.modules``. They are strict in two ways:

- **names**: each fake has only names the real library has (tests/test_gpu_fake_names.py
  checks them against the installed onnxruntime and against tests/data/gpu_api_names.json,
  taken from TensorRT's and cupy's binding sources); no ``__getattr__`` catch-alls, and
  ``trt.nptype`` maps TensorRT data types as the real one does (TypeError otherwise);
- **streams**: a small model of CUDA's ordering. Every stream has a clock and the latest
  clock of every other stream it has waited for (through ``record()``/``wait_event()``).
  Each device buffer remembers the stream and clock of its last write; a read on a stream
  that has not waited for that write raises :class:`RaceError`, a read of freed memory
  raises :class:`UseAfterFreeError`. Kernels (a TensorRT ``execute_async_v3``, an ONNX
  Runtime run) and copies are checked when they are queued, as if they ran at once, on the
  stream they are queued on. Every record, wait, copy, kernel and free goes into
  ``GPU.log`` so that tests can assert the order too.

ONNX Runtime is modelled pessimistically: its run is queued on its compute stream and not
synchronised at the end, so the caller must order itself after the run by an event.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import types
import weakref
from collections.abc import Callable

import numpy as np
import onnxruntime as real_ort


class RaceError(AssertionError):
    """A stream read what another stream wrote without waiting for it."""


class UseAfterFreeError(AssertionError):
    """A kernel or copy read device memory that no live buffer owns any more."""


# ---------------------------------------------------------------------------- the device model


class Gpu:
    """One fake device: its streams, its live buffers and the log of what was queued."""

    def __init__(self):
        self.log: list[tuple] = []
        self.buffers: dict[int, weakref.ref] = {}  # start address -> the buffer (weakly)
        self._memory: list[np.ndarray] = []  # every buffer's memory, kept: never reused
        self.streams: dict[int, FakeStream] = {}
        self.current: list[FakeStream] = []
        self._names = itertools.count(1)
        self._events = itertools.count(1)
        self.caller = FakeStream(name="caller")

    def reset(self):
        self.__init__()

    def stream(self) -> FakeStream:
        return self.current[-1] if self.current else self.caller

    def new_stream_name(self) -> str:
        return f"s{next(self._names)}"

    def new_event_name(self) -> str:
        return f"e{next(self._events)}"

    # -- memory

    def allocate(self, shape, dtype, label: str = "buffer") -> FakeArray:
        """A new device buffer. Its memory is never handed out again (not even once the
        buffer is freed), so that a read after free is always seen as one."""
        memory = np.zeros(shape, dtype=dtype)
        self._memory.append(memory)
        root = memory.view(FakeArray)  # views of it have it as their base (numpy collapses)
        root._label = label
        self.buffers[_address(root)] = weakref.ref(root)
        weakref.finalize(root, self.log.append, ("host", "free", label))
        return root

    def at(self, pointer: int, shape, dtype) -> FakeArray:
        """A view of the live buffer holding ``pointer`` (what a kernel given an address sees)."""
        for start, ref in self.buffers.items():
            root = ref()
            size = max(self._size(start), 1)
            if not start <= pointer < start + size:
                continue
            if root is None:
                raise UseAfterFreeError(f"device memory at {pointer:#x} was freed")
            count = math.prod(shape)
            flat = root.reshape(-1).view(np.uint8)[pointer - start :]
            return flat[: count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
        raise UseAfterFreeError(f"no device buffer at address {pointer:#x}")

    def _size(self, start: int) -> int:
        for memory in self._memory:
            if _address(memory) == start:
                return memory.nbytes
        return 0

    # -- ordering

    def read(self, array, stream: FakeStream, what: str) -> None:
        root = _root(array)
        written = getattr(root, "_written", None)
        if written is None:
            return
        writer, clock = written
        if writer is not stream and stream._known.get(writer._name, 0) < clock:
            raise RaceError(
                f"{what} on stream {stream._name} reads {root._label}, written on "
                f"{writer._name} at {clock}, without waiting for it (it waited up to "
                f"{stream._known.get(writer._name, 0)})"
            )

    def write(self, array, stream: FakeStream, what: str) -> None:
        stream._tick(what)
        _root(array)._written = (stream, stream._clock)


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _root(array):
    """The buffer a FakeArray view is of (numpy makes that buffer the base of every view)."""
    while array._label is None and isinstance(array.base, FakeArray):
        array = array.base
    return array


# ---------------------------------------------------------------------------- fake cupy


class _Memory:
    """cupy.cuda.UnownedMemory: device memory someone else owns (``owner`` keeps it)."""

    def __init__(self, ptr, size, owner, device_id=-1):
        self.ptr, self.size, self._owner = ptr, size, owner


class _Pointer:
    """cupy.cuda.MemoryPointer: ``ptr`` and the memory it points into."""

    def __init__(self, mem, offset: int = 0):
        self.mem = mem
        self.ptr = mem.ptr + offset


class FakeArray(np.ndarray):
    """cupy.ndarray over fake device memory; host arrays in its arithmetic are refused."""

    _label = None

    def __new__(cls, shape, dtype=float, memptr=None):
        # cupy.ndarray(shape, dtype, memptr): an array over existing device memory.
        view = GPU.at(memptr.ptr, tuple(shape), dtype)
        view._owner = memptr.mem  # keeps the memory's owner alive, as cupy does
        return view

    @property
    def data(self):
        return _Pointer(_Memory(_address(self), self.nbytes, self))

    def get(self):
        stream = GPU.stream()
        GPU.read(self, stream, "get")
        GPU.log.append((stream._name, "to_host", _root(self)._label))
        return np.array(self.view(np.ndarray), copy=True)

    def copy(self, order="C"):
        stream = GPU.stream()
        GPU.read(self, stream, "copy")
        out = GPU.allocate(self.shape, self.dtype, label=f"copy of {_root(self)._label}")
        np.copyto(out.view(np.ndarray), self.view(np.ndarray))
        GPU.write(out, stream, "copy")
        return out

    def astype(self, dtype, copy=True):
        stream = GPU.stream()
        GPU.read(self, stream, "astype")
        out = GPU.allocate(self.shape, dtype, label=f"astype of {_root(self)._label}")
        np.copyto(out.view(np.ndarray), self.view(np.ndarray), casting="unsafe")
        GPU.write(out, stream, "astype")
        return out

    def __setitem__(self, key, value):
        stream = GPU.stream()
        if isinstance(value, FakeArray):
            GPU.read(value, stream, "copy")
            value = value.view(np.ndarray)
        np.ndarray.__setitem__(self.view(np.ndarray), key, value)
        GPU.write(self, stream, "copy")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        stream = GPU.stream()
        plain = []
        for value in inputs:
            if isinstance(value, FakeArray):
                GPU.read(value, stream, ufunc.__name__)
                plain.append(value.view(np.ndarray))
            elif isinstance(value, np.ndarray) and value.ndim:
                raise TypeError(f"{ufunc.__name__}: a host array in a device computation")
            else:
                plain.append(value)
        result = np.asarray(getattr(ufunc, method)(*plain, **kwargs))
        out = GPU.allocate(result.shape, result.dtype, label=ufunc.__name__)
        np.copyto(out.view(np.ndarray), result)
        GPU.write(out, stream, ufunc.__name__)
        return out

    def __bool__(self):
        GPU.read(self, GPU.stream(), "bool")
        return bool(self.view(np.ndarray))


FakeArray.__module__ = "cupy._core.core"  # what sdrt.arrays.namespace_of looks at


class FakeEvent:
    """cupy.cuda.Event as ``Stream.record()`` returns it: what its stream had done then."""

    def __init__(self, stream: FakeStream):
        self._name = GPU.new_event_name()
        self._stream = stream
        self._known = dict(stream._known)

    def synchronize(self):
        pass


class FakeGraph:
    """cupy.cuda.Graph: replays the kernels captured on a stream."""

    def __init__(self, work):
        self._work = work

    def launch(self, stream=None):
        stream = stream or GPU.stream()
        for kernel in self._work:
            kernel(stream)


class FakeStream:
    """cupy.cuda.Stream with a clock; see the module docstring."""

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None, *, name=None):
        self._name = name or GPU.new_stream_name()
        self.ptr = 0 if name == "caller" else 0x5000 + len(GPU.streams) + 1
        self._clock = 0
        self._known = {self._name: 0}
        self._capture: list | None = None
        if name != "caller":
            GPU.streams[self.ptr] = self

    def _tick(self, what: str) -> None:
        self._clock += 1
        self._known[self._name] = self._clock
        GPU.log.append((self._name, what))

    def __enter__(self):
        GPU.current.append(self)
        return self

    def __exit__(self, *exc):
        GPU.current.pop()

    def record(self, event=None):
        event = FakeEvent(self)
        GPU.log.append((self._name, "record", event._name))
        return event

    def wait_event(self, event):
        for name, clock in event._known.items():
            self._known[name] = max(self._known.get(name, 0), clock)
        GPU.log.append((self._name, "wait", event._name))

    def synchronize(self):
        GPU.log.append((self._name, "synchronize"))

    def begin_capture(self, mode=None):
        self._capture = []

    def end_capture(self):
        work, self._capture = self._capture, None
        return FakeGraph(work)

    def _enqueue(self, kernel: Callable[[FakeStream], None]) -> None:
        if self._capture is not None:
            self._capture.append(kernel)
        else:
            kernel(self)


GPU = Gpu()


def stream_at(pointer: int) -> FakeStream:
    return GPU.caller if pointer == 0 else GPU.streams[pointer]


class FakeDevice:
    def __init__(self, device=None):
        self.id = int(device or 0)
        self.compute_capability = FakeRuntime._compute_capability

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class FakeRuntime:
    """cupy.cuda.runtime: the device count and properties the machine probe asks for."""

    _devices = 1
    _compute_capability = "90"
    _name = b"NVIDIA H200"

    @classmethod
    def getDeviceCount(cls):  # noqa: N802 (cupy's name)
        return cls._devices

    @classmethod
    def getDeviceProperties(cls, device):  # noqa: N802
        return {"name": cls._name}


def _asarray(a, dtype=None):
    if isinstance(a, FakeArray):
        return a if dtype is None else a.astype(dtype)
    host = np.asarray(a, dtype=dtype)
    out = GPU.allocate(host.shape, host.dtype, label="upload")
    np.copyto(out.view(np.ndarray), host)
    GPU.write(out, GPU.stream(), "upload")
    return out


def _ascontiguousarray(a, dtype=None):
    # cupy returns a C-contiguous array as it is and copies any other, on the current stream.
    if isinstance(a, FakeArray) and a.flags.c_contiguous and dtype is None:
        return a
    if not isinstance(a, FakeArray):
        return _asarray(np.ascontiguousarray(a), dtype)
    stream = GPU.stream()
    GPU.read(a, stream, "ascontiguousarray")
    out = GPU.allocate(a.shape, dtype or a.dtype, label=f"contiguous copy of {_root(a)._label}")
    np.copyto(out.view(np.ndarray), a.view(np.ndarray))
    GPU.write(out, stream, "ascontiguousarray")
    return out


def _empty(shape, dtype=float):
    return GPU.allocate(shape, dtype, label="empty")


def _isfinite(x):
    return np.isfinite(x)  # goes through FakeArray.__array_ufunc__ (checked, on the device)


def _alloc(size):
    block = GPU.allocate((max(int(size), 1),), np.uint8, label="alloc")
    return _Pointer(_Memory(_address(block), block.nbytes, block))


def fake_cupy() -> types.ModuleType:
    cp = types.ModuleType("cupy")
    cp.__version__ = "14.2.0"
    cp.ndarray = FakeArray
    cp.asarray = _asarray
    cp.ascontiguousarray = _ascontiguousarray
    cp.empty = _empty
    cp.isfinite = _isfinite
    cp.float16, cp.float32 = np.float16, np.float32
    cuda = types.ModuleType("cupy.cuda")
    cuda.Stream = FakeStream
    cuda.Event = FakeEvent
    cuda.Graph = FakeGraph
    cuda.Device = FakeDevice
    cuda.runtime = FakeRuntime
    cuda.get_current_stream = GPU.stream
    cuda.alloc = _alloc
    cuda.UnownedMemory = _Memory
    cuda.MemoryPointer = _Pointer
    cp.cuda = cuda
    return cp


# ---------------------------------------------------------------------------- fake tensorrt


class _Enum:
    """A TensorRT enum: named members that are only equal to themselves."""

    def __init__(self, kind: str, *names: str):
        for name in names:
            setattr(self, name, f"{kind}.{name}")


DataType = _Enum("DataType", "FLOAT", "HALF", "INT8", "INT32", "INT64", "BOOL", "UINT8", "BF16")
_NPTYPES = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.INT64: np.int64,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
}
_TRT_TYPES = {np.dtype(v): k for k, v in _NPTYPES.items()}


def nptype(trt_type):
    """As tensorrt.nptype: TensorRT's data type -> numpy's, TypeError for others."""
    if trt_type in _NPTYPES:
        return _NPTYPES[trt_type]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


class FakeEngine:
    """An ICudaEngine computing ``compute(inputs) -> outputs`` at the bound addresses.

    ``tensors``: name -> (mode, numpy dtype, (min, opt, max) for inputs or a function of
    the input shapes for outputs). The plan it came from is remembered as ``plan``.
    """

    def __init__(self, tensors, compute, memory=1024, plan=b"", weights=None, refittable=False):
        self._tensors = tensors
        self._compute = compute
        self._memory = memory
        self._plan = plan
        self._contexts = []
        self.num_io_tensors = len(tensors)
        self.refittable = refittable
        # Named weights (what a refit replaces): device buffers that ``compute`` sees under
        # their names. A refit puts new buffers here, as weights may move when refitted.
        self._weights = {
            n: _device_copy(np.asarray(w), f"weight {n}") for n, w in (weights or {}).items()
        }
        self._refit_groups: list[set[str]] = []  # weights TensorRT wants refitted together

    @property
    def device_memory_size_v2(self):
        return self._memory

    def get_tensor_name(self, index):
        return list(self._tensors)[index]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if self._tensors[name][0] == "input" else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return _TRT_TYPES[np.dtype(self._tensors[name][1])]

    def get_tensor_profile_shape(self, name, profile_index):
        assert profile_index == 0
        return self._tensors[name][2]

    def create_execution_context(self, strategy=None):
        assert strategy == ExecutionContextAllocationStrategy.USER_MANAGED
        context = FakeContext(self)
        self._contexts.append(context)
        return context


class FakeContext:
    """An IExecutionContext without its own activation memory."""

    def __init__(self, engine: FakeEngine):
        self._engine = engine
        self._memory = None
        self._shapes = {}
        self._addresses = {}
        self._executions = 0
        self._shape_calls = 0

    def set_device_memory(self, memory, size):
        assert size >= self._engine._memory
        self._memory = memory

    def set_input_shape(self, name, shape):
        self._shape_calls += 1
        self._shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        mode, _, shape = self._engine._tensors[name]
        return self._shapes[name] if mode == "input" else shape(self._shapes)

    def set_tensor_address(self, name, memory):
        self._addresses[name] = memory
        return True

    def _tensor(self, name, shapes):
        mode, dtype, shape = self._engine._tensors[name]
        shape = shapes[name] if mode == "input" else shape(shapes)
        return GPU.at(self._addresses[name], shape, dtype)

    def execute_async_v3(self, stream_handle):
        shapes = dict(self._shapes)  # a captured graph replays the kernels of these shapes
        inputs = [n for n, (mode, _, _) in self._engine._tensors.items() if mode == "input"]
        outputs = [n for n in self._engine._tensors if n not in inputs]

        # Bound now: a captured graph keeps the weight buffers it was captured with.
        weights = dict(self._engine._weights)

        def kernel(stream):
            assert self._memory is not None, "ran without activation memory"
            self._executions += 1
            values = {}
            for n, w in weights.items():
                GPU.read(w, stream, "execute_async_v3")
                values[n] = w.view(np.ndarray)
            for n in inputs:
                view = self._tensor(n, shapes)
                GPU.read(view, stream, "execute_async_v3")
                values[n] = view.view(np.ndarray)
            with np.errstate(over="ignore", invalid="ignore"):
                results = self._engine._compute(values)
            for n in outputs:
                view = self._tensor(n, shapes)
                view.view(np.ndarray)[...] = results[n]
                GPU.write(view, stream, "execute_async_v3")

        stream_at(stream_handle)._enqueue(kernel)
        return True


def _device_copy(host: np.ndarray, label: str) -> FakeArray:
    out = GPU.allocate(host.shape, host.dtype, label=label)
    np.copyto(out.view(np.ndarray), host)
    return out


class FakeWeights:
    """tensorrt.Weights over a host numpy array (zero-copy, as the real one keeps a pointer)."""

    def __init__(self, a):
        self._array = a
        self.dtype = _TRT_TYPES[a.dtype]
        self.size = a.size
        self.nbytes = a.nbytes

    def numpy(self):
        return self._array

    def __len__(self):
        return self.size


class FakeRefitter:
    """tensorrt.Refitter: names weights, takes new ones, refits on a stream.

    Like TensorRT: it exists only for an engine built refittable (pybind11 raises TypeError
    when createInferRefitter returns null); ``set_named_weights`` returns False for an unknown
    name or a different type or count; a refit fails while weights of a group are missing;
    and the host arrays are read when the refit runs on its stream (they must stay alive).
    """

    def __init__(self, engine, logger):
        if not engine.refittable:
            raise TypeError("pybind11::init(): factory function returned nullptr")
        self._engine = engine
        self._pending: dict[str, FakeWeights] = {}
        self.logger = logger

    def get_all_weights(self):
        return list(self._engine._weights)

    def get_weights_prototype(self, weights_name):
        current = self._engine._weights[weights_name]
        return FakeWeights(np.zeros(current.size, current.dtype))

    def set_named_weights(self, name, weights):
        current = self._engine._weights.get(name)
        if (
            current is None
            or weights.size != current.size
            or weights.dtype != _TRT_TYPES[current.dtype]
        ):
            return False
        self._pending[name] = weights
        return True

    def get_missing_weights(self):
        touched = set(self._pending)
        return sorted(
            n for group in self._engine._refit_groups if group & touched for n in group - touched
        )

    def refit_cuda_engine_async(self, stream_handle):
        if self.get_missing_weights():
            return False
        pending, self._pending = self._pending, {}

        def kernel(stream):
            for name, weights in pending.items():
                current = self._engine._weights[name]
                new = _device_copy(weights.numpy().reshape(current.shape), f"weight {name}")
                GPU.write(new, stream, "refit")
                self._engine._weights[name] = new

        stream_at(stream_handle)._enqueue(kernel)
        return True


class FakeTrtRuntime:
    """tensorrt.Runtime: deserializes the plans registered in ``PLANS`` (None for others)."""

    _plans: dict[bytes, Callable[[], FakeEngine]] = {}
    _deserialized: list[bytes] = []

    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine):
        serialized_engine = bytes(serialized_engine)
        FakeTrtRuntime._deserialized.append(serialized_engine)
        make = FakeTrtRuntime._plans.get(serialized_engine)
        if make is None:
            return None
        engine = make()
        engine._plan = serialized_engine
        return engine


class FakeLogger:
    WARNING = "Severity.WARNING"

    def __init__(self, min_severity=None):
        self.min_severity = min_severity


TensorIOMode = _Enum("TensorIOMode", "INPUT", "OUTPUT")
ExecutionContextAllocationStrategy = _Enum(
    "ExecutionContextAllocationStrategy", "STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"
)


def fake_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType = DataType
    trt.nptype = nptype
    trt.TensorIOMode = TensorIOMode
    trt.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
    trt.Runtime = FakeTrtRuntime
    trt.Logger = FakeLogger
    trt.Refitter = FakeRefitter
    trt.Weights = FakeWeights
    # TensorRT 10 has the FP16 builder flag (weak typing); 11 builds strongly typed only.
    flags = ("TF32", "REFIT", "FP16") if version.startswith("10.") else ("TF32", "REFIT")
    trt.BuilderFlag = _Enum("BuilderFlag", *flags)
    return trt


def unet_like_engine(max_batch=4, max_side=16, memory=1024, dtype=np.float32):
    """out_sample = 2 * sample + timestep (per batch item), computed in ``dtype``."""

    def compute(values):
        sample, timestep = values["sample"].astype(dtype), values["timestep"].astype(dtype)
        return {"out_sample": (2 * sample + timestep[:, None, None, None]).astype(np.float32)}

    tensors = {
        "sample": (
            "input",
            np.float32,
            ((1, 4, 4, 4), (2, 4, 8, 8), (max_batch, 4, max_side, max_side)),
        ),
        "timestep": ("input", np.float32, ((1,), (2,), (max_batch,))),
        "out_sample": ("output", np.float32, lambda shapes: shapes["sample"]),
    }
    return FakeEngine(tensors, compute, memory=memory)


def vae_like_engine(dtype=np.float32, memory=2048, max_batch=4, max_side=32):
    """sample = 2 * latent_sample, its first 3 channels, computed in ``dtype`` (fp16 overflows
    above 32752, as an fp16 VAE decoder does for some latents)."""

    def compute(values):
        return {"sample": (2 * values["latent_sample"][:, :3].astype(dtype)).astype(np.float32)}

    tensors = {
        "latent_sample": (
            "input",
            np.float32,
            ((1, 4, 1, 1), (1, 4, 8, 8), (max_batch, 4, max_side, max_side)),
        ),
        "sample": (
            "output",
            np.float32,
            lambda s: (s["latent_sample"][0], 3, *s["latent_sample"][2:]),
        ),
    }
    return FakeEngine(tensors, compute, memory=memory)


def plan_bytes(component: str, precision: str) -> bytes:
    return json.dumps({"component": component, "precision": precision}).encode()


# ---------------------------------------------------------------------------- fake polygraphy


class FakeProfile:
    def __init__(self):
        self._shapes = {}

    def add(self, name, min, opt, max):  # noqa: A002 (Polygraphy's names)
        self._shapes[name] = (tuple(min), tuple(opt), tuple(max))
        return self


class FakePolygraphy:
    """polygraphy.backend.trt's loaders, recording what the builder asks of them."""

    def __init__(self, create_config_keywords: tuple[str, ...], result: bytes | None = b"plan"):
        self.keywords = set(create_config_keywords)
        self.result = result
        self.configs: list[dict] = []
        self.networks: list[tuple[str, dict]] = []
        self.builds: list[dict] = []

    def CreateConfig(self, **kwargs):  # noqa: N802 (Polygraphy's name)
        unknown = set(kwargs) - self.keywords
        if unknown:
            raise TypeError(f"CreateConfig() got unexpected keyword arguments {sorted(unknown)}")
        self.configs.append(kwargs)
        return kwargs

    def network_from_onnx_path(
        self, path, flags=None, plugin_instancenorm=None, strongly_typed=None
    ):
        with open(path, "rb") as f:
            graph = f.read()
        self.networks.append((path, {"strongly_typed": strongly_typed, "graph": graph}))
        return ("network", path)

    def engine_bytes_from_network(self, network, config=None, save_timing_cache=None):
        self.builds.append(
            {"network": network, "config": config, "save_timing_cache": save_timing_cache}
        )
        if save_timing_cache:
            with open(save_timing_cache, "w") as f:
                f.write("timings")
        return self.result

    def modules(self) -> dict[str, types.ModuleType]:
        root = types.ModuleType("polygraphy")
        backend = types.ModuleType("polygraphy.backend")
        trt = types.ModuleType("polygraphy.backend.trt")
        trt.CreateConfig = self.CreateConfig
        trt.Profile = FakeProfile
        trt.network_from_onnx_path = self.network_from_onnx_path
        trt.engine_bytes_from_network = self.engine_bytes_from_network
        root.backend, backend.trt = backend, trt
        return {"polygraphy": root, "polygraphy.backend": backend, "polygraphy.backend.trt": trt}


# ---------------------------------------------------------------------------- fake onnxruntime

_ONNX_TYPES = {
    np.dtype(np.float32): "tensor(float)",
    np.dtype(np.float16): "tensor(float16)",
    np.dtype(np.int32): "tensor(int32)",
    np.dtype(np.int64): "tensor(int64)",
}


class FakeOrtValue:
    """An OrtValue in (fake) device memory."""

    def __init__(self, array):
        self._array = array

    @staticmethod
    def ortvalue_from_shape_and_type(
        shape, element_type, device_type="cpu", device_id=0, vendor_id=-1, memory_info=None
    ):
        assert device_type == "cuda" and isinstance(element_type, type)
        return FakeOrtValue(GPU.allocate(tuple(shape), element_type, label="OrtValue"))

    def data_ptr(self):
        return _address(self._array)

    def shape(self):
        return list(self._array.shape)

    def data_type(self):
        return _ONNX_TYPES[self._array.dtype]


class FakeIOBinding:
    def __init__(self):
        self._inputs, self._outputs = {}, {}
        self._uploads = 0

    def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr):
        assert device_type == "cuda" and isinstance(element_type, type)
        self._inputs[name] = ("device", buffer_ptr, tuple(shape), element_type)

    def bind_cpu_input(self, name, arr_on_cpu):
        assert type(arr_on_cpu) is np.ndarray
        self._uploads += 1
        self._inputs[name] = ("host", arr_on_cpu)

    def bind_output(
        self, name, device_type="cpu", device_id=0, element_type=None, shape=None, buffer_ptr=None
    ):
        assert device_type == "cuda"
        self._outputs[name] = None  # ONNX Runtime allocates at run time

    def bind_ortvalue_input(self, name, ortvalue):
        self._inputs[name] = ("device", ortvalue.data_ptr(), tuple(ortvalue.shape()), None)

    def bind_ortvalue_output(self, name, ortvalue):
        self._outputs[name] = ortvalue

    def get_outputs(self):
        return list(self._outputs.values())


class FakeInferenceSession:
    """out_sample = 2 * sample + timestep, queued on the provider's user_compute_stream."""

    _made: list[FakeInferenceSession] = []

    def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None):
        assert isinstance(sess_options, real_ort.SessionOptions)  # the real, strict class
        self._providers_given = providers
        self._runs = []
        FakeInferenceSession._made.append(self)

    def get_outputs(self):
        return [types.SimpleNamespace(name="out_sample")]

    def io_binding(self):
        return FakeIOBinding()

    def _stream(self):
        name, options = self._providers_given[0]
        assert name == "CUDAExecutionProvider"
        return stream_at(int(options["user_compute_stream"]))

    def _input(self, binding, name, stream):
        bound = binding._inputs[name]
        if bound[0] == "host":
            return bound[1]
        _, pointer, shape, dtype = bound
        view = GPU.at(pointer, shape, dtype or np.float32)
        GPU.read(view, stream, "run_with_iobinding")
        return view.view(np.ndarray)

    def run_with_iobinding(self, iobinding, run_options=None):
        graph_id = None
        if run_options is not None:
            assert isinstance(run_options, real_ort.RunOptions)
            graph_id = run_options.get_run_config_entry("gpu_graph_id")
        self._runs.append(graph_id)
        stream = self._stream()
        sample = self._input(iobinding, "sample", stream)
        timestep = self._input(iobinding, "timestep", stream)
        result = (2 * sample + timestep.reshape(-1)[0]).astype(np.float32)
        target = iobinding._outputs["out_sample"]
        if target is None:
            target = iobinding._outputs["out_sample"] = FakeOrtValue.ortvalue_from_shape_and_type(
                result.shape, np.float32, "cuda", 0
            )
        target._array.view(np.ndarray)[...] = result
        GPU.write(target._array, stream, "run_with_iobinding")


def fake_onnxruntime(preloads: list | None = None) -> types.ModuleType:
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = real_ort.__version__
    ort.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    ort.preload_dlls = lambda cuda=True, cudnn=True, msvc=True, directory=None: (
        preloads.append((cuda, cudnn, directory)) if preloads is not None else None
    )
    ort.SessionOptions = real_ort.SessionOptions
    ort.RunOptions = real_ort.RunOptions
    ort.InferenceSession = FakeInferenceSession
    ort.OrtValue = FakeOrtValue
    ort.IOBinding = FakeIOBinding
    return ort


# ---------------------------------------------------------------------------- helpers


def install(monkeypatch, **modules: types.ModuleType) -> None:
    """Put fakes into sys.modules for one test (names: cupy, tensorrt, onnxruntime...)."""
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name.replace("__", "."), module)


def events(log=None, streams=None) -> list[tuple]:
    """The records and waits of ``GPU.log`` (of the given streams), in order."""
    log = GPU.log if log is None else log
    return [
        e
        for e in log
        if len(e) == 3 and e[1] in ("record", "wait") and (not streams or e[0] in streams)
    ]


def use_fake_tensorrt(monkeypatch) -> None:
    """The strict cupy and TensorRT fakes in sys.modules, with sdrt's TensorRT runtime, the
    fake GPU and the fake plan store reset, for one test."""
    install(monkeypatch, cupy=fake_cupy(), tensorrt=fake_tensorrt())
    import sdrt.backends.tensorrt as backend

    monkeypatch.setattr(backend, "_runtime", None)
    GPU.reset()
    FakeTrtRuntime._plans.clear()
