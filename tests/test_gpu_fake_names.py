"""The fakes of the GPU libraries offer only names the real libraries have.

Every public name a fake in tests/gpu_fakes.py provides (module attributes, methods and
attributes of its classes, enum members, keyword arguments) is checked against the real
library: the installed onnxruntime itself (names and parameter names), and for tensorrt,
polygraphy and cupy, which do not install on our CPU machines, against
tests/data/gpu_api_names.json, extracted from their binding sources (TensorRT 10.16 and
11.1's pybind11 bindings and wheel __init__, Polygraphy's trt backend at 11.1, cupy 14.2's
Cython sources) by tests/data/extract_gpu_api_names.py. A fake that grows a convenient name
the library lacks (or code that starts relying on one) fails here.
"""

from __future__ import annotations

import inspect

import gpu_fakes as fakes
import numpy as np
import onnxruntime as ort
import pytest
from gpu_names import NAMES, tensorrt_names
from test_engines_device_loop import StandInCupy


def public(obj) -> set[str]:
    """The names ``obj`` itself defines (a module's attributes, a class's own members)."""
    names = vars(obj) if inspect.isclass(obj) else {k: None for k in dir(obj)}
    return {n for n in names if not n.startswith("_") or n in ("__enter__", "__exit__")}


CUPY = NAMES["cupy"]


@pytest.mark.parametrize(
    ("fake", "real"),
    [
        (fakes.FakeArray, set(CUPY["_ndarray_base"]) | set(CUPY["ndarray"])),
        (fakes.FakeStream, set(CUPY["_BaseStream"]) | set(CUPY["Stream"])),
        (fakes.FakeEvent, set(CUPY["Event"])),
        (fakes.FakeGraph, set(CUPY["Graph"])),
        (fakes.FakeDevice, set(CUPY["Device"])),
        (fakes._Pointer, set(CUPY["MemoryPointer"])),
        (fakes._Memory, set(CUPY["UnownedMemory"])),
        (fakes.FakeRuntime, set(CUPY["cupy.cuda.runtime"])),
    ],
    ids=lambda x: getattr(x, "__name__", "names"),
)
def test_cupy_fakes_have_cupys_names(fake, real):
    # FakeStream/FakeDevice set their attributes in __init__: look at an instance too.
    instance_names = set()
    if fake in (fakes.FakeStream, fakes.FakeDevice):
        instance_names = {n for n in vars(fake()) if not n.startswith("_")}
    assert (public(fake) | instance_names) - real == set()


def test_the_cupy_modules_have_cupys_names():
    cp = fakes.fake_cupy()
    assert public(cp) - {"cuda"} - set(CUPY["cupy"]) == set()
    assert public(cp.cuda) - set(CUPY["cupy.cuda"]) == set()


def test_tensorrt_fakes_have_tensorrts_names():
    trt = fakes.fake_tensorrt()
    assert public(trt) - tensorrt_names("module") == set()
    engine = fakes.unet_like_engine()
    assert public(fakes.FakeEngine) | {n for n in vars(engine) if not n.startswith("_")} <= (
        tensorrt_names("ICudaEngine")
    )
    assert public(fakes.FakeContext) <= tensorrt_names("IExecutionContext")
    assert public(fakes.FakeTrtRuntime) <= tensorrt_names("Runtime")
    assert public(fakes.FakeRefitter) | {"logger"} <= tensorrt_names("Refitter")
    weights = fakes.FakeWeights(np.zeros(3, np.float16))
    assert public(fakes.FakeWeights) | set(vars(weights)) - {"_array"} <= tensorrt_names("Weights")
    # Logger.WARNING: ILogger.Severity's values, which the bindings export into the class.
    assert public(fakes.FakeLogger) - {"WARNING"} <= tensorrt_names("Logger")
    for enum in ("DataType", "TensorIOMode", "ExecutionContextAllocationStrategy"):
        assert public(getattr(trt, enum)) <= tensorrt_names(enum), enum
    # nptype knows the data types the real one maps (fp8, bf16, int4... raise TypeError).
    assert {k.split(".")[1] for k in fakes._NPTYPES} <= tensorrt_names("DataType")
    with pytest.raises(TypeError, match="Could not resolve TensorRT datatype"):
        trt.nptype(trt.DataType.BF16)
    with pytest.raises(TypeError):
        trt.nptype(np.float32)  # a numpy type is not a TensorRT one


@pytest.mark.parametrize("version", ["10.16", "11.1"])
def test_the_builder_flags_follow_the_tensorrt_version(version):
    real = set(NAMES["tensorrt"][f"v{version}"]["BuilderFlag"])
    fake = public(fakes.fake_tensorrt(f"{version}.0").BuilderFlag)
    assert fake <= real
    # The builder tells TensorRT 10 from 11 by the FP16 flag, which 11 removed.
    assert ("FP16" in real) == version.startswith("10.") == ("FP16" in fake)


def test_polygraphy_fakes_have_polygraphys_names():
    fake = fakes.FakePolygraphy(tuple(NAMES["polygraphy"]["CreateConfig"]))
    module = fake.modules()["polygraphy.backend.trt"]
    assert public(module) <= set(NAMES["polygraphy"]["polygraphy.backend.trt"])
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['fp17'\\]"):
        fake.CreateConfig(fp17=True)


@pytest.mark.parametrize(
    ("fake", "real"),
    [
        (fakes.FakeIOBinding, ort.IOBinding),
        (fakes.FakeOrtValue, ort.OrtValue),
        (fakes.FakeInferenceSession, ort.InferenceSession),
    ],
    ids=lambda x: x.__name__,
)
def test_onnxruntime_fakes_have_its_names_and_parameters(fake, real):
    assert public(fake) - set(dir(real)) == set()
    for name in public(fake):
        ours, theirs = getattr(fake, name), getattr(real, name)
        try:
            expected = list(inspect.signature(theirs).parameters)
        except (TypeError, ValueError):  # a pybind11 method without a Python signature
            continue
        assert list(inspect.signature(ours).parameters) == expected, name


def test_the_onnxruntime_module_fake_has_its_names():
    module = fakes.fake_onnxruntime()
    assert public(module) - set(dir(ort)) == set()
    assert list(inspect.signature(module.preload_dlls).parameters) == list(
        inspect.signature(ort.preload_dlls).parameters
    )
    # The option objects are the real, strict ones: an unknown attribute is an error.
    with pytest.raises(AttributeError):
        module.SessionOptions().log_severity = 3


def test_the_device_loops_stand_in_offers_only_cupys_names():
    xp = StandInCupy("cupy")
    only_numpy = sorted(n for n in dir(np) if not n.startswith("_") and n not in CUPY["cupy"])
    assert only_numpy  # numpy has names cupy lacks (e.g. np.busday_count)
    for name in only_numpy[:20]:
        with pytest.raises(AttributeError, match="cupy has no"):
            getattr(xp, name)
    assert xp.concatenate is not None and xp.float32 is np.float32
