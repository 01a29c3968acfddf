"""The tensorrt backend: the folder's verified fp16 TensorRT engines as Sessions.

Activation (``load``) is separate from building (engines/tensorrt.py builds the plans and
records them in sdrt.json). An engine loads only if its record's cache key, recomputed for
this TensorRT version and GPU (sdrt/backends/engine_key.py), matches: a stale plan is never
loaded; nor is a plan that is not the one built (sdrt.integrity.check_engine_plan: its
sha256, hashed only when it changed since it last matched). A session:

- deserializes the plan once and allocates its input and output buffers once, at the
  largest shape of its optimization profile; each call uses the leading part of them;
- runs without its own activation memory: every engine of a pipeline attaches to one
  ``SharedDeviceMemory`` block, sized for the hungriest engine, because the pipeline runs
  them one after another (text encoder, U-Net, VAE); a lock makes that order hold across
  threads too;
- enqueues with ``execute_async_v3`` on the block's single stream, ordered after the
  caller's current cupy stream and before whatever the caller does next (events, no host
  synchronisation), and returns cupy arrays (copies: the buffers are reused next call);
- with ``cuda_graph=True`` captures one CUDA graph per input shape on first use and
  replays it after; the buffers never move, so a graph stays valid until the shared block
  grows (then it is captured again).

TensorRT and cupy are imported here only; ``import sdrt`` never pulls them in.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.arrays import import_cupy
from sdrt.backends.engine_key import BuildEnvironment, engine_cache_key
from sdrt.backends.machine import GPU_EXTRA, Machine
from sdrt.backends.nan_guard import NanGuardedSession
from sdrt.backends.protocol import Session, check_feeds, options_of_type
from sdrt.backends.shapes import broadcast_named_dims
from sdrt.backends.tensorrt_refit import RefitReport, refit_engine
from sdrt.errors import BackendUnavailableError, InputError
from sdrt.integrity import check_engine_plan
from sdrt.manifest import Engine, Manifest, TensorSpec

logger = logging.getLogger(__name__)

NAME = "tensorrt"
# The components every call needs (SDXL adds its second text encoder).
NEEDED_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
REBUILD_HINT = "build them with `sdrt engines build FOLDER`"

_runtime_lock = threading.Lock()
_runtime = None


def _trt():
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(
            "the tensorrt backend needs the tensorrt package (pip install 'sdrt[gpu]')"
        ) from None
    return tensorrt


def trt_runtime():
    """One TensorRT runtime (and logger) per process."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            trt = _trt()
            _runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        return _runtime


def _activation_size(engine) -> int:
    # TensorRT 10.1 added the _v2 query (it accounts for dynamic shapes); 10.0 has the old one.
    size = getattr(engine, "device_memory_size_v2", None)
    return int(engine.device_memory_size if size is None else size)


def _context_without_memory(engine):
    trt = _trt()
    strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
    if strategy is not None:
        return engine.create_execution_context(strategy.USER_MANAGED)
    return engine.create_execution_context_without_device_memory()


def _bind_memory(context, pointer: int, size: int) -> None:
    if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
        context.set_device_memory(pointer, size)
    else:
        context.device_memory = pointer


class SharedDeviceMemory:
    """One activation block and one stream shared by every engine of a pipeline."""

    def __init__(self):
        cp = import_cupy()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.lock = threading.RLock()
        self.generation = 0  # bumped when the block moves; captured graphs are then stale
        self._contexts = []
        self._block = None
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def attach(self, engine):
        """An execution context of ``engine`` running in the shared block."""
        with self.lock:
            context = _context_without_memory(engine)
            self._contexts.append(context)
            needed = _activation_size(engine)
            if needed > self._size or self._block is None:
                self.stream.synchronize()
                self._block = import_cupy().cuda.alloc(max(needed, 1))
                self._size = needed
                self.generation += 1
                for each in self._contexts:
                    _bind_memory(each, self._block.ptr, self._size)
            else:
                _bind_memory(context, self._block.ptr, self._size)
            return context


class TensorRTSession:
    """One deserialized engine, implementing the Session protocol with cupy arrays."""

    def __init__(
        self,
        name: str,
        engine,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        *,
        memory: SharedDeviceMemory | None = None,
        cuda_graph: bool = False,
    ):
        trt, cp = _trt(), import_cupy()
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.cuda_graph = cuda_graph
        self._engine = engine
        self._memory = memory or SharedDeviceMemory()
        self._context = self._memory.attach(engine)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._input_names = [
            n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        ]
        self._output_names = [n for n in names if n not in self._input_names]
        expected = {s.name for s in inputs}
        if set(self._input_names) != expected:
            raise InputError(
                f"{name}: the engine's inputs {sorted(self._input_names)} do not match the "
                f"model folder's {sorted(expected)}; rebuild the engines"
            )
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._limits = {
            n: tuple(tuple(s) for s in engine.get_tensor_profile_shape(n, 0))
            for n in self._input_names
        }
        # Largest outputs: set every input to its max shape and ask.
        for n in self._input_names:
            self._context.set_input_shape(n, self._limits[n][2])
        max_shapes = {n: self._limits[n][2] for n in self._input_names}
        max_shapes |= {n: tuple(self._context.get_tensor_shape(n)) for n in self._output_names}
        self._buffers = {
            n: cp.empty(max(math.prod(shape), 1), dtype=self._dtypes[n])
            for n, shape in max_shapes.items()
        }
        for n, buffer in self._buffers.items():
            self._context.set_tensor_address(n, buffer.data.ptr)
        self._shapes_set: tuple | None = None
        self._output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}
        self._graphs: dict[tuple, Any] = {}

    @classmethod
    def load(
        cls,
        name: str,
        plan_path: str | Path,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        *,
        memory: SharedDeviceMemory | None = None,
        cuda_graph: bool = False,
    ) -> TensorRTSession:
        engine = trt_runtime().deserialize_cuda_engine(Path(plan_path).read_bytes())
        if engine is None:
            raise BackendUnavailableError(
                f"{name}: TensorRT could not deserialize {plan_path} (built by another "
                "TensorRT version or for another GPU?): rebuild with `sdrt engines build`"
            )
        return cls(name, engine, inputs, outputs, memory=memory, cuda_graph=cuda_graph)

    def _check_profile(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        for n, shape in shapes.items():
            low, _, high = self._limits[n]
            if len(shape) != len(low) or any(
                not a <= d <= b for d, a, b in zip(shape, low, high, strict=True)
            ):
                raise InputError(
                    f"{self.name}: input {n!r} has shape {list(shape)}; the engine was built "
                    f"for {list(low)} .. {list(high)} (rebuild it with `sdrt engines build` "
                    "for this size)"
                )

    def _view(self, n: str, shape: tuple[int, ...]):
        return self._buffers[n][: math.prod(shape)].reshape(shape)

    def _enqueue(self, key: tuple, stream) -> None:
        if not self.cuda_graph:
            if not self._context.execute_async_v3(stream.ptr):
                raise RuntimeError(f"{self.name}: TensorRT execution failed")
            return
        graph_key = (self._memory.generation, key)
        graph = self._graphs.get(graph_key)
        if graph is None:
            # TensorRT wants one plain enqueue after a shape change before capture.
            if not self._context.execute_async_v3(stream.ptr):
                raise RuntimeError(f"{self.name}: TensorRT execution failed")
            stream.begin_capture()
            try:
                self._context.execute_async_v3(stream.ptr)
            finally:
                graph = stream.end_capture()
            self._graphs[graph_key] = graph
        graph.launch(stream)

    @property
    def refittable(self) -> bool:
        """Built with ``--refit``: its weights can be replaced in place (run-time LoRA)."""
        return bool(getattr(self._engine, "refittable", False))

    def refit(self, weights: Mapping[str, Any], companions=None) -> RefitReport:
        """Replace named weights (a LoRA switch) in place; the engine must be refittable.
        ``companions(name)``: the current value of a weight TensorRT wants refitted with them.

        Runs under the folder's lock on its stream, after what the caller queued, so no
        engine of the folder executes meanwhile. Captured CUDA graphs are dropped: they may
        hold the old weights' addresses.
        """
        cp = import_cupy()
        with self._memory.lock:
            stream = self._memory.stream
            stream.wait_event(cp.cuda.get_current_stream().record())
            report = refit_engine(
                _trt(),
                self._engine,
                weights,
                stream,
                logger=trt_runtime().logger,
                name=self.name,
                companions=companions,
            )
            self._graphs.clear()
        return report

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        check_feeds(self.name, self.inputs, feeds)
        cp = import_cupy()
        # A one-value input on an axis named like the batch (the timestep) runs at the batch.
        shapes = broadcast_named_dims(
            self.inputs, {s.name: tuple(int(d) for d in feeds[s.name].shape) for s in self.inputs}
        )
        self._check_profile(shapes)
        key = tuple(shapes[n] for n in self._input_names)
        with self._memory.lock:
            stream = self._memory.stream
            caller = cp.cuda.get_current_stream()
            stream.wait_event(caller.record())
            with stream:
                for n in self._input_names:
                    self._view(n, shapes[n])[...] = cp.asarray(feeds[n])
                if self._shapes_set != key:
                    for n in self._input_names:
                        self._context.set_input_shape(n, shapes[n])
                    self._shapes_set = key
                if key not in self._output_shapes:
                    self._output_shapes[key] = {
                        n: tuple(self._context.get_tensor_shape(n)) for n in self._output_names
                    }
                self._enqueue(key, stream)
                results = {
                    n: self._view(n, shape).copy() for n, shape in self._output_shapes[key].items()
                }
            caller.wait_event(stream.record())
        return results


# ---------------------------------------------------------------------------- a folder's engines

_memory_lock = threading.Lock()
# Weak: the block lives as long as some session of the folder does, then goes with them.
_memory_by_folder: weakref.WeakValueDictionary[Path, SharedDeviceMemory] = (
    weakref.WeakValueDictionary()
)


def shared_memory_for(folder: str | Path) -> SharedDeviceMemory:
    """One activation block per model folder and process, shared by all its engines."""
    key = Path(folder).resolve()
    with _memory_lock:
        memory = _memory_by_folder.get(key)
        if memory is None:
            memory = _memory_by_folder[key] = SharedDeviceMemory()
        return memory


# ---------------------------------------------------------------------------- records and keys


def build_environment(machine: Machine) -> BuildEnvironment:
    """What this machine's engines are keyed on besides graph and options."""
    return BuildEnvironment(
        NAME, machine.tensorrt_version or "", machine.compute_capability or "", machine.device_name
    )


def find_record(manifest: Manifest, component: str, precision: str) -> Engine | None:
    for engine in manifest.engines:
        if (
            engine.target == NAME
            and engine.component == component
            and engine.options.get("precision") == precision
        ):
            return engine
    return None


def usable_engine(
    manifest: Manifest, component: str, precision: str, environment: BuildEnvironment
) -> Engine:
    """The recorded engine for ``component``, if its key matches this machine; else a clear error."""
    record = find_record(manifest, component, precision)
    if record is None:
        raise BackendUnavailableError(
            f"no {precision} TensorRT engine for {component}: {REBUILD_HINT}"
        )
    key = engine_cache_key(manifest.components[component], record.options, environment)
    if key != record.cache_key:
        built = record.library_versions.get(environment.library, "?")
        raise BackendUnavailableError(
            f"the {component} engine was built for TensorRT {built} on compute capability "
            f"{record.device.get('compute_capability', '?')} (or from other ONNX files); this "
            f"machine has TensorRT {environment.library_version} on compute capability "
            f"{environment.compute_capability}: rebuild with `sdrt engines build FOLDER`"
        )
    if record.verification is None or not record.verification.passed:
        raise BackendUnavailableError(
            f"the {component} engine failed its verification at build time; {REBUILD_HINT}"
        )
    return record


def _fp32_fallback(folder: Path, manifest, name: str, environment, memory):
    """A maker of the fp32 session for the NaN guard, or None without a usable fp32 engine."""
    if find_record(manifest, name, "fp32") is None:
        return None
    try:
        record = usable_engine(manifest, name, "fp32", environment)
    except BackendUnavailableError as e:
        logger.warning("%s: no fp32 fallback for fp16 overflow: %s", name, e)
        return None
    component = manifest.components[name]
    check_engine_plan(folder, record)  # at load, not at the first overflow

    def make_fallback():
        return TensorRTSession.load(
            name, folder / record.path, component.inputs, component.outputs, memory=memory
        )

    return make_fallback


# ---------------------------------------------------------------------------- the backend


@dataclass(frozen=True)
class TensorRTOptions:
    cuda_graph: bool = False  # capture one CUDA graph per input shape, replay it after


class TensorRTBackend:
    name = NAME
    options_type = TensorRTOptions

    def missing(self, machine: Machine) -> list[str]:
        missing = []
        if machine.tensorrt_version is None:
            missing.append(f"the tensorrt package ({GPU_EXTRA})")
        return missing + machine.missing_cuda()

    def folder_problem(self, manifest: Manifest, machine: Machine) -> str | None:
        """None when the folder has verified engines for this TensorRT and GPU, else why not."""
        environment = build_environment(machine)
        for component in (c for c in NEEDED_COMPONENTS if c in manifest.components):
            try:
                usable_engine(manifest, component, "fp16", environment)
            except BackendUnavailableError as e:
                return str(e)
        return None

    def open_sessions(
        self,
        folder: Path,
        manifest: Manifest,
        names: tuple[str, ...],
        machine: Machine,
        options: TensorRTOptions | None = None,
    ) -> dict[str, Session]:
        """Sessions over the folder's verified fp16 engines (the VAE decoder NaN-guarded)."""
        options = options_of_type(self, options)
        folder = Path(folder)
        environment = build_environment(machine)
        memory = shared_memory_for(folder)
        sessions = {}
        for name in names:
            component = manifest.components[name]
            record = usable_engine(manifest, name, "fp16", environment)
            check_engine_plan(folder, record)
            session = TensorRTSession.load(
                name,
                folder / record.path,
                component.inputs,
                component.outputs,
                memory=memory,
                cuda_graph=options.cuda_graph,
            )
            if name == "vae_decoder":
                fallback = _fp32_fallback(folder, manifest, name, environment, memory)
                session = NanGuardedSession(session, fallback)
            sessions[name] = session
        return sessions


BACKEND = TensorRTBackend()
