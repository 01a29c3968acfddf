"""The loop stays on the device: numpy standing in for cupy gives the CPU path's images.

On a GPU backend the sessions return cupy arrays and the pipeline's loop (guidance
arithmetic, scheduler steps) runs in cupy until one copy to the host at the end. Here a
stand-in "cupy" module wraps numpy: its arrays are a numpy subclass that says it comes
from cupy, refuses to mix with host arrays in arithmetic and refuses numpy functions
called on it directly (as cupy does), and counts copies to the host. The tiny model's
ORT CPU sessions are wrapped to take and return such device arrays, the way the TensorRT
and ORT CUDA sessions take and return cupy arrays.
"""

from __future__ import annotations

import contextvars
import sys
import types

import numpy as np
import pytest
from gpu_names import NAMES

import sdrt
import sdrt.pipeline

CUPY_NAMES = frozenset(NAMES["cupy"]["cupy"])
_in_device_namespace = contextvars.ContextVar("in_device_namespace", default=False)


class DeviceArray(np.ndarray):
    """A numpy array playing a cupy array."""

    host_copies = 0

    def get(self) -> np.ndarray:
        DeviceArray.host_copies += 1
        return np.array(self.view(np.ndarray), copy=True)

    @property
    def __array_namespace__(self):
        # cupy's ndarray (v14) has none: code must find cupy by the array's module.
        raise AttributeError("'cupy.ndarray' object has no attribute '__array_namespace__'")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for value in inputs:
            if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray) and value.ndim:
                raise TypeError(f"{ufunc.__name__}: a host array in a device computation")
        plain = [v.view(np.ndarray) if isinstance(v, DeviceArray) else v for v in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(
                o.view(np.ndarray) if isinstance(o, DeviceArray) else o for o in kwargs["out"]
            )
        return _to_device(getattr(ufunc, method)(*plain, **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        if not _in_device_namespace.get():
            raise TypeError(f"numpy.{func.__name__} called on a device array (cupy refuses)")
        return super().__array_function__(func, types, args, kwargs)


DeviceArray.__module__ = "cupy._core.core"  # what sdrt.arrays.namespace_of looks at


def _to_device(value):
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_to_device(v) for v in value)
    if isinstance(value, list):
        return [_to_device(v) for v in value]
    return value


class StandInCupy(types.ModuleType):
    """numpy's functions, returning device arrays; only the names cupy has (per
    tests/data/gpu_api_names.json, from cupy 14.2's sources)."""

    ndarray = DeviceArray
    __version__ = "14.2.0 (numpy stand-in)"

    def __getattr__(self, name):
        if name not in CUPY_NAMES or not hasattr(np, name):
            raise AttributeError(f"cupy has no {name!r} (or numpy, which stands in for it)")
        attr = getattr(np, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def on_device(*args, **kwargs):
            token = _in_device_namespace.set(True)
            try:
                return _to_device(attr(*args, **kwargs))
            finally:
                _in_device_namespace.reset(token)

        return on_device


class DeviceSession:
    """An ORT CPU session taking and returning device arrays, like the GPU sessions."""

    def __init__(self, inner, feeds_log):
        self.name, self.inputs, self.outputs = inner.name, inner.inputs, inner.outputs
        self._inner = inner
        self._log = feeds_log

    def run(self, feeds):
        self._log.append((self.name, {k: type(v) for k, v in feeds.items()}))
        host = {
            k: v.view(np.ndarray) if isinstance(v, DeviceArray) else v for k, v in feeds.items()
        }
        return {k: v.view(DeviceArray) for k, v in self._inner.run(host).items()}


def stand_in_device(monkeypatch) -> list:
    """From here on, sessions the pipeline makes take and return device arrays."""
    monkeypatch.setitem(sys.modules, "cupy", StandInCupy("cupy"))
    feeds_log = []
    from sdrt.backends.registry import Selection

    create = Selection.open_sessions

    def create_on_device(*args, **kwargs):
        return {n: DeviceSession(s, feeds_log) for n, s in create(*args, **kwargs).items()}

    monkeypatch.setattr(Selection, "open_sessions", create_on_device)
    DeviceArray.host_copies = 0
    return feeds_log


@pytest.mark.parametrize(
    ("scheduler", "guidance"),
    [("EulerAncestralDiscreteScheduler", 7.5), ("DPMSolverMultistepScheduler", 1.0)],
)
def test_device_loop_gives_the_cpu_images(tiny_built, monkeypatch, scheduler, guidance):
    cpu = sdrt.Pipeline.load(tiny_built, backend="ort-cpu")
    settings = dict(
        prompt=["a red fox in snow", "a lighthouse"],
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=guidance,
        height=64,
        width=64,
        seed=7,
        scheduler=scheduler,
        output_type="np",
    )
    expected = cpu(**settings).images
    assert type(expected) is np.ndarray

    feeds_log = stand_in_device(monkeypatch)
    pipe = sdrt.Pipeline.load(tiny_built, backend="ort-cpu")
    images = pipe(**settings).images

    assert type(images) is np.ndarray and images.dtype == np.float32
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-6)
    # Every U-Net and VAE call was fed device arrays: latents never left the device...
    calls = [(name, kinds) for name, kinds in feeds_log if name in ("unet", "vae_decoder")]
    assert len(calls) == 4  # three U-Net steps and one decode
    for name, kinds in calls:
        assert set(kinds.values()) == {DeviceArray}, (name, kinds)
    # ...until the one copy of the decoded images to the host.
    assert DeviceArray.host_copies == 1


def test_stand_in_refuses_what_cupy_refuses(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", StandInCupy("cupy"))
    xp = sys.modules["cupy"]
    x = xp.ones((2, 2))
    assert sdrt.arrays.namespace_of(x) is xp
    assert not hasattr(x, "__array_namespace__")
    with pytest.raises(TypeError, match="host array in a device computation"):
        x + np.ones((2, 2))
    with pytest.raises(TypeError, match="numpy.concatenate called on a device array"):
        np.concatenate([x, x])
    assert type(xp.concatenate([x, x * 2.0])) is DeviceArray


def test_schedulers_find_the_device_namespace_without_array_namespace(monkeypatch):
    # DDIM with clip_sample asks the schedulers' array_namespace() for its clip function.
    from sdrt.schedulers import create_scheduler
    from sdrt.schedulers.base import array_namespace

    monkeypatch.setitem(sys.modules, "cupy", StandInCupy("cupy"))
    xp = sys.modules["cupy"]
    config = {
        "_class_name": "DDIMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": True,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }
    sched = create_scheduler("DDIMScheduler", config)
    plan = sched.plan(4)
    rng = np.random.default_rng(0)
    x, eps = (rng.standard_normal((1, 4, 8, 8), dtype=np.float32) for _ in range(2))
    expected = sched.step(plan, sched.initial_state(plan), eps, 0, x).prev_sample
    assert array_namespace(xp.asarray(x)) is xp
    got = sched.step(plan, sched.initial_state(plan), xp.asarray(eps), 0, xp.asarray(x))
    assert type(got.prev_sample) is DeviceArray
    np.testing.assert_array_equal(got.prev_sample.get(), expected)
