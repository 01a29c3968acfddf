"""The ORT CUDA session's own logic on the CPU, with strict fakes of onnxruntime and cupy.

ONNX Runtime's CUDA provider is not run here (the gpu tests do that). What is tested is
what the session does around it: cupy inputs bound by address, numpy inputs uploaded by
ONNX Runtime, outputs handed back as cupy arrays over ONNX Runtime's memory (kept alive by
the array), CUDA-graph mode's fixed OrtValues per input shape (one graph id each), and the
ordering between the caller's stream and the session's: tests/gpu_fakes.py models streams
and events, so a missing ``wait_event``, a copy queued after the event that should cover it
or a copy freed before the run are errors here, not silent races.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from gpu_fakes import (
    GPU,
    FakeArray,
    FakeInferenceSession,
    FakeOrtValue,
    events,
    fake_cupy,
    fake_onnxruntime,
    install,
)

from sdrt.manifest import Component, TensorSpec


@pytest.fixture
def preloads():
    return []


@pytest.fixture
def component(monkeypatch, tmp_path, preloads):
    install(monkeypatch, cupy=fake_cupy(), onnxruntime=fake_onnxruntime(preloads))
    import sdrt.backends.ort_cuda as ort_cuda

    monkeypatch.setattr(ort_cuda, "_preloaded", False)
    GPU.reset()
    FakeInferenceSession._made.clear()
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


def on_device(f):
    import cupy as cp

    return {k: cp.asarray(v) for k, v in f.items()}


def session_stream():
    (made,) = FakeInferenceSession._made
    return next(
        s
        for s in GPU.streams.values()
        if str(s.ptr) == made._providers_given[0][1]["user_compute_stream"]
    )


def test_device_inputs_are_bound_and_outputs_stay_on_the_device(component, tmp_path, preloads):
    from sdrt.backends.ort_cuda import OrtCudaSession

    session = OrtCudaSession(tmp_path, component)
    (made,) = FakeInferenceSession._made
    name, options = made._providers_given[0]
    assert name == "CUDAExecutionProvider"
    assert options["enable_cuda_graph"] == "0"
    assert options["use_tf32"] == "0"  # fp32 graphs compute in fp32 unless asked
    assert preloads == [(True, True, None)]  # pip-installed CUDA libraries found first
    OrtCudaSession(tmp_path, component)
    assert len(preloads) == 1  # once per process
    f = feeds(2, 8, seed=0, timestep=3.0)
    out = session.run(on_device(f))["out_sample"]
    assert type(out) is FakeArray and out.shape == (2, 4, 8, 8)
    assert isinstance(out._owner._owner, FakeOrtValue)  # the array keeps ONNX Runtime's value alive
    np.testing.assert_array_equal(out.get(), 2 * f["sample"] + 3.0)
    # numpy inputs are uploaded by ONNX Runtime (bind_cpu_input).
    out = session.run(feeds(1, 4, seed=1, timestep=1.0))["out_sample"]
    assert out.shape == (1, 4, 4, 4)


def test_the_run_is_ordered_between_the_callers_stream_events(component, tmp_path):
    from sdrt.backends.ort_cuda import OrtCudaSession

    session = OrtCudaSession(tmp_path, component)
    ours = session_stream()._name
    device = on_device(feeds(2, 8, seed=0, timestep=3.0))
    GPU.log.clear()
    out = session.run(device)["out_sample"]
    assert events() == [
        ("caller", "record", "e1"),
        (ours, "wait", "e1"),
        (ours, "record", "e2"),
        ("caller", "wait", "e2"),
    ]
    kernel = GPU.log.index((ours, "run_with_iobinding"))
    assert GPU.log.index((ours, "wait", "e1")) < kernel < GPU.log.index((ours, "record", "e2"))
    out.get()  # on the caller's stream: ordered after the run by e2 (else a RaceError)


def test_non_contiguous_inputs_are_copied_before_the_event_and_kept_for_the_run(
    component, tmp_path
):
    from sdrt.backends.ort_cuda import OrtCudaSession

    session = OrtCudaSession(tmp_path, component)
    f = feeds(2, 8, seed=2, timestep=1.0)
    wide = on_device({"sample": np.concatenate([f["sample"]] * 2, axis=3)})["sample"]
    strided = wide[..., ::2]  # a non-contiguous device view: the session must copy it
    assert not strided.flags.c_contiguous
    GPU.log.clear()
    out = session.run({"sample": strided, "timestep": on_device(f)["timestep"]})["out_sample"]
    gc.collect()
    np.testing.assert_array_equal(out.get(), 2 * wide.get()[..., ::2] + 1.0)
    log = GPU.log
    copy = log.index(("caller", "ascontiguousarray"))
    freed = log.index(("host", "free", "contiguous copy of upload"))
    # The copy is queued on the caller's stream before the event our stream waits for...
    assert copy < log.index(("caller", "record", "e1"))
    # ...and lives until the caller's stream is ordered after the run.
    assert log.index(("caller", "wait", "e2")) < freed


def test_cuda_graph_mode_uses_fixed_values_and_one_graph_id_per_shape(component, tmp_path):
    from sdrt.backends.ort_cuda import OrtCudaOptions, OrtCudaSession

    session = OrtCudaSession(tmp_path, component, OrtCudaOptions(cuda_graph=True))
    (made,) = FakeInferenceSession._made
    assert made._providers_given[0][1]["enable_cuda_graph"] == "1"
    ours = session_stream()._name
    results = []
    for batch, seed in ((2, 0), (2, 1), (1, 2), (2, 3)):
        f = feeds(batch, 8, seed=seed, timestep=float(seed))
        device = on_device(f)
        GPU.log.clear()
        out = session.run(device)["out_sample"]
        first, second = (f"e{2 * len(results) + i}" for i in (1, 2))
        assert events() == [
            ("caller", "record", first),
            (ours, "wait", first),
            (ours, "record", second),
            ("caller", "wait", second),
        ]
        np.testing.assert_array_equal(out.get(), 2 * f["sample"] + seed)
        results.append(out)
    # Outputs are copies: the fixed output value was overwritten by later runs.
    np.testing.assert_array_equal(results[0].get(), 2 * feeds(2, 8, seed=0, timestep=0.0)["sample"])
    assert made._runs == ["1", "1", "2", "1"]
    assert len(session._graphs) == 2


def test_lora_branch_factors_are_bound_as_host_inputs(component, tmp_path, monkeypatch):
    """Run-time LoRA on ort-cuda: fed factors are checked and uploaded with the run; with a
    CUDA graph (fixed bindings) the session takes none, so the Pipeline refuses LoRA."""
    import dataclasses

    from gpu_fakes import FakeIOBinding

    from sdrt.backends.ort_cuda import OrtCudaOptions, OrtCudaSession
    from sdrt.errors import InputError
    from sdrt.manifest import LoraBranch

    branch = LoraBranch("m", "m.down", "m.up", 4, 4, "float32")
    component = dataclasses.replace(component, lora_branches=(branch,))
    bindings = []
    monkeypatch.setattr(
        FakeInferenceSession,
        "io_binding",
        lambda self: bindings.append(FakeIOBinding()) or bindings[-1],
    )
    session = OrtCudaSession(tmp_path, component)
    assert {s.name for s in session.weight_inputs} == {"m.down", "m.up"}
    factors = {"m.down": np.ones((4, 3), np.float32), "m.up": np.ones((3, 4), np.float32)}
    session.run({**on_device(feeds(1, 4, seed=0, timestep=1.0)), **factors})
    bound = bindings[-1]._inputs
    assert bound["m.down"][0] == "host" and bound["m.down"][1].shape == (4, 3)
    assert bound["m.up"][0] == "host" and bound["m.up"][1].shape == (3, 4)
    session.run(on_device(feeds(1, 4, seed=0, timestep=1.0)))  # nothing fed: defaults
    assert "m.down" not in bindings[-1]._inputs
    with pytest.raises(InputError, match=r"'m\.down' expected shape \[4, 'rank of m'\]"):
        session.run({**feeds(1, 4, seed=0, timestep=1.0), "m.down": np.ones((5, 3), np.float32)})
    graphed = OrtCudaSession(tmp_path, component, OrtCudaOptions(cuda_graph=True))
    assert graphed.weight_inputs is None
