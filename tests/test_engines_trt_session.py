"""The TensorRT session's own logic on the CPU, with numpy fakes of tensorrt and cupy.

What TensorRT does on the GPU is not tested here (the gpu tests do that); what the session
does around it is: buffers allocated once at the profile's largest shapes and bound once,
inputs copied in (a one-value timestep widened to the batch), shapes set only when they
change, outputs copied out, profile limits checked, one activation block shared and grown
for every engine, and CUDA graphs captured once per shape and replayed.

The fakes follow the documented APIs: an engine's I/O tensors by name, contexts without
their own memory (``ExecutionContextAllocationStrategy.USER_MANAGED`` + ``set_device_memory``),
``execute_async_v3`` reading and writing the bound addresses; cupy's ``Stream`` (capture
records the work instead of running it; the graph replays it) and ``alloc``.
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

from sdrt.errors import InputError
from sdrt.manifest import TensorSpec

# ---------------------------------------------------------------------------- fake cupy

MEMORY: dict[int, np.ndarray] = {}  # device address -> the buffer there


class FakeArray(np.ndarray):
    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def get(self):
        return np.array(self.view(np.ndarray), copy=True)


FakeArray.__module__ = "cupy._core.core"


class FakeStream:
    current = None

    def __init__(self, non_blocking=False):
        self.ptr = id(self)
        self.captured = None  # a list while capturing

    def __enter__(self):
        self._previous, FakeStream.current = FakeStream.current, self
        return self

    def __exit__(self, *exc):
        FakeStream.current = self._previous

    def synchronize(self):
        pass

    def record(self):
        return object()

    def wait_event(self, event):
        pass

    def begin_capture(self):
        self.captured = []

    def end_capture(self):
        work, self.captured = self.captured, None
        return types.SimpleNamespace(launch=lambda stream: [w() for w in work])


def fake_cupy():
    cp = types.ModuleType("cupy")
    cp.ndarray = FakeArray
    default = FakeStream()

    def empty(n, dtype):
        array = np.zeros(n, dtype=dtype).view(FakeArray)
        MEMORY[array.data.ptr] = array
        return array

    def alloc(n):
        block = np.zeros(n, np.uint8)
        return types.SimpleNamespace(ptr=block.__array_interface__["data"][0], block=block)

    cp.empty = empty
    cp.asarray = lambda a: np.asarray(a).view(FakeArray)
    cp.cuda = types.SimpleNamespace(
        Stream=FakeStream,
        alloc=alloc,
        get_current_stream=lambda: FakeStream.current or default,
    )
    return cp


# ---------------------------------------------------------------------------- fake tensorrt


class FakeEngine:
    """out_sample = 2 * sample + timestep (per batch item); needs ``memory`` bytes."""

    def __init__(self, memory=1024, max_batch=4, max_side=16):
        self.memory = memory
        self.tensors = {
            "sample": (
                "input",
                np.float32,
                ((1, 4, 4, 4), (2, 4, 8, 8), (max_batch, 4, max_side, max_side)),
            ),
            "timestep": ("input", np.float32, ((1,), (2,), (max_batch,))),
            "out_sample": ("output", np.float32, None),
        }
        self.num_io_tensors = len(self.tensors)
        self.contexts = []

    @property
    def device_memory_size_v2(self):
        return self.memory

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_profile_shape(self, name, profile):
        assert profile == 0
        return self.tensors[name][2]

    def create_execution_context(self, strategy):
        assert strategy == "user-managed"
        context = FakeContext(self)
        self.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, engine):
        self.engine = engine
        self.memory = None
        self.shapes = {}
        self.addresses = {}
        self.executions = 0
        self.shape_calls = 0

    def set_device_memory(self, pointer, size):
        assert size >= self.engine.memory
        self.memory = pointer

    def set_input_shape(self, name, shape):
        self.shape_calls += 1
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes["sample"] if name == "out_sample" else self.shapes[name]

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer

    def _tensor(self, name):
        shape = self.get_tensor_shape(name)
        return MEMORY[self.addresses[name]][: math.prod(shape)].reshape(shape)

    def _execute(self):
        assert self.memory is not None, "ran without activation memory"
        self.executions += 1
        sample, timestep = self._tensor("sample"), self._tensor("timestep")
        out = self._tensor("out_sample")
        out[...] = 2 * sample + timestep[:, None, None, None]

    def execute_async_v3(self, stream_handle):
        stream = FakeStream.current
        assert stream is not None and stream.ptr == stream_handle
        if stream.captured is not None:
            shapes = dict(self.shapes)  # a graph replays the kernels of its shapes

            def replay():
                saved, self.shapes = self.shapes, shapes
                try:
                    self._execute()
                finally:
                    self.shapes = saved

            stream.captured.append(replay)
        else:
            self._execute()
        return True


def fake_tensorrt():
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(USER_MANAGED="user-managed")
    trt.nptype = lambda dtype: dtype
    return trt


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    MEMORY.clear()
    FakeStream.current = None


INPUTS = (
    TensorSpec("sample", "float32", ("steps", 4, "latent_height", "latent_width")),
    TensorSpec("timestep", "float32", ("steps",)),
)
OUTPUTS = (TensorSpec("out_sample", "float32", ("steps", 4, "latent_height", "latent_width")),)


def session(engine, **kwargs):
    from sdrt.backends.tensorrt import TensorRTSession

    return TensorRTSession("unet", engine, INPUTS, OUTPUTS, **kwargs)


def feeds(batch, side, seed=0, timestep=500.0):
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((batch, 4, side, side), dtype=np.float32)
    return {"sample": sample, "timestep": np.array([timestep], np.float32)}


def expected(f):
    return 2 * f["sample"] + f["timestep"][0]


def test_runs_at_several_shapes_with_buffers_bound_once(fakes):
    engine = FakeEngine()
    s = session(engine)
    context = engine.contexts[0]
    addresses = dict(context.addresses)
    for batch, side in ((2, 8), (4, 16), (1, 4), (2, 8)):
        f = feeds(batch, side, seed=batch)
        out = s.run(f)["out_sample"]
        assert type(out) is FakeArray and out.shape == (batch, 4, side, side)
        np.testing.assert_array_equal(out.get(), expected(f))
    assert context.addresses == addresses  # never rebound: fixed buffers
    assert context.executions == 4


def test_outputs_are_copies_not_the_reused_buffers(fakes):
    s = session(FakeEngine())
    first = s.run(feeds(2, 8, seed=1))["out_sample"]
    kept = first.get()
    s.run(feeds(2, 8, seed=2))
    np.testing.assert_array_equal(first.get(), kept)


def test_shapes_are_set_only_when_they_change(fakes):
    engine = FakeEngine()
    s = session(engine)
    context = engine.contexts[0]
    calls = context.shape_calls  # the max-shape query at load
    s.run(feeds(2, 8))
    s.run(feeds(2, 8, seed=3))
    assert context.shape_calls == calls + 2  # two inputs, once
    s.run(feeds(1, 8))
    assert context.shape_calls == calls + 4


def test_shape_outside_the_profile_and_bad_feeds_are_input_errors(fakes):
    s = session(FakeEngine(max_side=16))
    with pytest.raises(
        InputError,
        match=r"'sample' has shape \[1, 4, 32, 32\]; the engine was built for \[1, 4, 4, 4\] .. \[4, 4, 16, 16\]",
    ):
        s.run(feeds(1, 32))
    with pytest.raises(InputError, match="expected dtype float32, got float64"):
        s.run({"sample": np.zeros((1, 4, 8, 8)), "timestep": np.zeros(1, np.float32)})


def test_engine_inputs_must_match_the_folder(fakes):
    engine = FakeEngine()
    from sdrt.backends.tensorrt import TensorRTSession

    with pytest.raises(InputError, match="do not match the model folder's"):
        TensorRTSession("unet", engine, INPUTS[:1], OUTPUTS)


def test_engines_share_one_activation_block_that_grows(fakes):
    from sdrt.backends.tensorrt import SharedDeviceMemory

    memory = SharedDeviceMemory()
    small, large = FakeEngine(memory=1000), FakeEngine(memory=5000)
    a = session(small, memory=memory)
    assert memory.size == 1000 and memory.generation == 1
    b = session(large, memory=memory)
    assert memory.size == 5000 and memory.generation == 2
    # Both contexts point at the one (grown) block.
    assert small.contexts[0].memory == large.contexts[0].memory
    session(FakeEngine(memory=10), memory=memory)
    assert memory.size == 5000 and memory.generation == 2
    for s in (a, b):
        f = feeds(2, 8)
        np.testing.assert_array_equal(s.run(f)["out_sample"].get(), expected(f))


def test_cuda_graph_is_captured_once_per_shape_and_replayed(fakes):
    engine = FakeEngine()
    s = session(engine, cuda_graph=True)
    context = engine.contexts[0]
    for seed in range(3):
        f = feeds(2, 8, seed=seed, timestep=float(seed))
        np.testing.assert_array_equal(s.run(f)["out_sample"].get(), expected(f))
    # One plain run before the capture, then only replays (which our fake counts too).
    assert len(s._graphs) == 1
    f = feeds(4, 16, seed=9)
    np.testing.assert_array_equal(s.run(f)["out_sample"].get(), expected(f))
    assert len(s._graphs) == 2
    # Back to the first shape: its graph replays with the new inputs.
    f = feeds(2, 8, seed=10, timestep=7.0)
    np.testing.assert_array_equal(s.run(f)["out_sample"].get(), expected(f))
    assert len(s._graphs) == 2
    assert context.executions == 2 + 5  # a plain run per capture + every replay


def test_a_grown_block_invalidates_captured_graphs(fakes):
    from sdrt.backends.tensorrt import SharedDeviceMemory

    memory = SharedDeviceMemory()
    s = session(FakeEngine(memory=100), memory=memory, cuda_graph=True)
    s.run(feeds(2, 8))
    session(FakeEngine(memory=10_000), memory=memory)  # the block moves
    f = feeds(2, 8, seed=4)
    np.testing.assert_array_equal(s.run(f)["out_sample"].get(), expected(f))
    assert len(s._graphs) == 2  # recaptured under the new generation


def test_shared_memory_per_folder_lives_as_long_as_its_sessions(fakes, tmp_path):
    import gc
    import weakref

    from sdrt.backends.tensorrt import shared_memory_for

    first = shared_memory_for(tmp_path)
    assert shared_memory_for(tmp_path / ".") is first
    s = session(FakeEngine(), memory=first)
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is s._memory  # a live session keeps its folder's block
    del s
    gc.collect()
    assert gone() is None  # and the block goes with the last of them
    assert shared_memory_for(tmp_path).size == 0
