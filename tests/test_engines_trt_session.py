"""The TensorRT session's own logic on the CPU, with strict fakes of tensorrt and cupy.

What TensorRT does on the GPU is not tested here (the gpu tests do that); what the session
does around it is: buffers allocated once at the profile's largest shapes and bound once,
inputs copied in (a one-value timestep widened to the batch), shapes set only when they
change, outputs copied out, profile limits checked, one activation block shared and grown
for every engine, CUDA graphs captured once per shape and replayed, and the order of the
work on its stream between the caller's events (tests/gpu_fakes.py: a read on one stream
of what another wrote without an event between them is a RaceError).
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_fakes import (
    GPU,
    FakeArray,
    FakeTrtRuntime,
    events,
    unet_like_engine,
    use_fake_tensorrt,
)

from sdrt.errors import InputError
from sdrt.manifest import TensorSpec


def FakeEngine(memory=1024, max_batch=4, max_side=16):  # noqa: N802 (reads as the engine)
    return unet_like_engine(max_batch=max_batch, max_side=max_side, memory=memory)


@pytest.fixture
def fakes(monkeypatch):
    use_fake_tensorrt(monkeypatch)
    FakeTrtRuntime._deserialized.clear()


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
    context = engine._contexts[0]
    addresses = dict(context._addresses)
    for batch, side in ((2, 8), (4, 16), (1, 4), (2, 8)):
        f = feeds(batch, side, seed=batch)
        out = s.run(f)["out_sample"]
        assert type(out) is FakeArray and out.shape == (batch, 4, side, side)
        np.testing.assert_array_equal(out.get(), expected(f))
    assert context._addresses == addresses  # never rebound: fixed buffers
    assert context._executions == 4


def test_the_work_is_ordered_between_the_callers_events(fakes):
    import cupy as cp

    s = session(FakeEngine())
    ours = s._memory.stream._name
    f = feeds(2, 8, seed=5)
    device = {k: cp.asarray(v) for k, v in f.items()}  # written on the caller's stream
    GPU.log.clear()
    out = s.run(device)["out_sample"]
    assert events() == [
        ("caller", "record", "e1"),
        (ours, "wait", "e1"),
        (ours, "record", "e2"),
        ("caller", "wait", "e2"),
    ]
    work = [entry[1] for entry in GPU.log if entry[0] == ours and len(entry) == 2]
    assert work == ["copy", "copy", "execute_async_v3", "copy"]  # in, in, run, out
    between = GPU.log[GPU.log.index((ours, "wait", "e1")) : GPU.log.index((ours, "record", "e2"))]
    assert (ours, "execute_async_v3") in between
    # The caller reads the result on its own stream: ordered after the run by e2.
    np.testing.assert_array_equal(out.get(), expected(f))


def test_cuda_graph_replays_are_ordered_like_plain_runs(fakes):
    import cupy as cp

    s = session(FakeEngine(), cuda_graph=True)
    for seed in range(3):
        f = feeds(2, 8, seed=seed)
        out = s.run({k: cp.asarray(v) for k, v in f.items()})["out_sample"]
        np.testing.assert_array_equal(out.get(), expected(f))
    assert [e[1] for e in events()][-4:] == ["record", "wait", "record", "wait"]


def test_outputs_are_copies_not_the_reused_buffers(fakes):
    s = session(FakeEngine())
    first = s.run(feeds(2, 8, seed=1))["out_sample"]
    kept = first.get()
    s.run(feeds(2, 8, seed=2))
    np.testing.assert_array_equal(first.get(), kept)


def test_shapes_are_set_only_when_they_change(fakes):
    engine = FakeEngine()
    s = session(engine)
    context = engine._contexts[0]
    calls = context._shape_calls  # the max-shape query at load
    s.run(feeds(2, 8))
    s.run(feeds(2, 8, seed=3))
    assert context._shape_calls == calls + 2  # two inputs, once
    s.run(feeds(1, 8))
    assert context._shape_calls == calls + 4


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
    assert small._contexts[0]._memory == large._contexts[0]._memory
    session(FakeEngine(memory=10), memory=memory)
    assert memory.size == 5000 and memory.generation == 2
    for s in (a, b):
        f = feeds(2, 8)
        np.testing.assert_array_equal(s.run(f)["out_sample"].get(), expected(f))


def test_cuda_graph_is_captured_once_per_shape_and_replayed(fakes):
    engine = FakeEngine()
    s = session(engine, cuda_graph=True)
    context = engine._contexts[0]
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
    assert context._executions == 2 + 5  # a plain run per capture + every replay


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
