"""On a GPU: TensorRT engine builds, parity with ONNX Runtime, shared memory, CUDA graphs, ORT CUDA.

Every test here carries the ``gpu`` marker and skips without a CUDA device (tests/conftest.py);
the TensorRT ones also skip without the tensorrt package, the ORT CUDA ones without
onnxruntime-gpu. They use the tiny random-weight model folder (``tiny_built``), copied so
that engine records do not leak into other tests.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sdrt.engines.compare import (
    FP16,
    FP16_IMAGE_MAX_ABS,
    FP16_IMAGE_MEAN_ABS,
    measure,
    sample_inputs,
)
from sdrt.engines.profiles import ShapeRange

from sdrt.manifest import read_manifest

pytestmark = pytest.mark.gpu

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
# A CUDA graph replays the very kernels of the plain run (same plan, shapes and inputs).
CUDA_GRAPH_REPLAY_ATOL = 0.0


def _copy(tiny_built, tmp_path_factory, name):
    folder = tmp_path_factory.mktemp(name) / "tiny"
    shutil.copytree(tiny_built, folder)
    return folder


@pytest.fixture(scope="module")
def trt_folder(tiny_built, tmp_path_factory):
    """The tiny folder with dynamic fp16 engines: 64..128 px, up to 2 images per call."""
    pytest.importorskip("tensorrt")
    pytest.importorskip("polygraphy")
    from sdrt.engines.tensorrt import TensorRTBuildOptions, build_engines

    folder = _copy(tiny_built, tmp_path_factory, "trt-dynamic")
    shapes = ShapeRange(64, 64, 64, 64, 128, 128, min_batch=1, opt_batch=1, max_batch=2)
    build_engines(folder, TensorRTBuildOptions(shapes=shapes, components=COMPONENTS))
    return folder


@pytest.fixture(scope="module")
def static_folder(tiny_built, tmp_path_factory):
    pytest.importorskip("tensorrt")
    pytest.importorskip("polygraphy")
    from sdrt.engines.tensorrt import TensorRTBuildOptions, build_engines

    folder = _copy(tiny_built, tmp_path_factory, "trt-static")
    options = TensorRTBuildOptions(shapes=ShapeRange.static(64, 64), components=COMPONENTS)
    build_engines(folder, options)
    return folder


def _reference(folder, component):
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / component.file), providers=["CPUExecutionProvider"])
    names = [o.name for o in component.outputs]
    return lambda feeds: dict(zip(names, session.run(names, dict(feeds)), strict=True))


def test_build_records_verified_engines_and_reuses_them(trt_folder):
    from sdrt.engines.tensorrt import TensorRTBuildOptions, build_engines, detect_environment

    manifest = read_manifest(trt_folder)
    built = {(e.component, e.options["precision"]) for e in manifest.engines}
    assert built == {
        ("text_encoder", "fp16"),
        ("unet", "fp16"),
        ("vae_decoder", "fp16"),
        ("vae_decoder", "fp32"),
    }
    environment = detect_environment()
    for engine in manifest.engines:
        assert (trt_folder / engine.path).stat().st_size > 0
        assert engine.verification.passed, engine.verification
        assert len(engine.verification.cases) == 2  # opt and min shapes
        assert engine.library_versions["tensorrt"] == environment.library_version
    assert list((trt_folder / "engines" / "tensorrt").glob("timing-*.cache"))
    shapes = ShapeRange(64, 64, 64, 64, 128, 128, min_batch=1, opt_batch=1, max_batch=2)
    report = build_engines(trt_folder, TensorRTBuildOptions(shapes=shapes, components=COMPONENTS))
    assert {p.action for p in report.plans} == {"reuse"}


def test_sessions_match_onnxruntime_and_share_one_activation_block(trt_folder):
    import cupy as cp

    from sdrt.backends import create_sessions
    from sdrt.backends.tensorrt import _activation_size

    manifest = read_manifest(trt_folder)
    sessions = create_sessions(trt_folder, manifest, "tensorrt", COMPONENTS)
    unet = sessions["unet"]
    memories = {id(s._memory) for s in (sessions["text_encoder"], unet)}
    assert len(memories) == 1
    memory = unet._memory
    assert memory.size == max(_activation_size(s._engine) for s in (sessions["text_encoder"], unet))
    component = manifest.components["unet"]
    reference = _reference(trt_folder, component)
    for shapes in (
        {"sample": (2, 4, 8, 8), "timestep": (1,), "encoder_hidden_states": (2, 77, 32)},
        {"sample": (4, 4, 16, 12), "timestep": (1,), "encoder_hidden_states": (4, 77, 32)},
    ):
        feeds = sample_inputs(component.inputs, shapes, seed=1)
        out = unet.run({k: cp.asarray(v) for k, v in feeds.items()})
        assert isinstance(out["out_sample"], cp.ndarray)
        max_abs, max_rel = measure(reference(feeds), {k: v.get() for k, v in out.items()})
        assert max_abs <= FP16.abs or max_rel <= FP16.rel
    # numpy feeds are uploaded by the session.
    out = sessions["vae_decoder"].run({"latent_sample": np.zeros((1, 4, 8, 8), np.float32)})
    assert out["sample"].shape == (1, 3, 64, 64)


def test_shape_outside_the_profile_is_an_input_error(trt_folder):
    import cupy as cp

    from sdrt.backends import create_sessions
    from sdrt.errors import InputError

    manifest = read_manifest(trt_folder)
    vae = create_sessions(trt_folder, manifest, "tensorrt", ("vae_decoder",))["vae_decoder"]
    with pytest.raises(InputError, match="the engine was built for"):
        vae.run({"latent_sample": cp.zeros((1, 4, 32, 32), cp.float32)})


def test_cuda_graph_replays_match_plain_runs(static_folder):
    import cupy as cp
    from sdrt.engines.tensorrt import detect_environment

    from sdrt.backends.tensorrt import TensorRTSession, usable_engine

    manifest = read_manifest(static_folder)
    component = manifest.components["unet"]
    record = usable_engine(manifest, "unet", "fp16", detect_environment())
    args = (static_folder / record.path, component.inputs, component.outputs)
    plain = TensorRTSession.load("unet", *args)
    graphed = TensorRTSession.load("unet", *args, cuda_graph=True)
    shapes = {n: tuple(levels["opt"]) for n, levels in record.profile.items()}
    for seed in (0, 1, 2):  # capture on the first call, replay on the next ones
        feeds = sample_inputs(component.inputs, shapes, seed=seed)
        device = {k: cp.asarray(v) for k, v in feeds.items()}
        expected = plain.run(device)["out_sample"].get()
        got = graphed.run(device)["out_sample"].get()
        np.testing.assert_allclose(got, expected, rtol=0, atol=CUDA_GRAPH_REPLAY_ATOL)
    assert len(graphed._graphs) == 1


def test_pipeline_on_tensorrt_is_close_to_the_cpu_images(trt_folder):
    import cupy as cp

    import sdrt

    settings = dict(
        prompt="a red fox in snow",
        num_inference_steps=4,
        height=64,
        width=64,
        seed=0,
        output_type="np",
    )
    expected = sdrt.Pipeline.load(trt_folder, backend="ort-cpu")(**settings).images
    pipe = sdrt.Pipeline.load(trt_folder, backend="tensorrt")
    embeddings = pipe.prompt_encoder.encode(["a red fox in snow"])
    assert isinstance(embeddings, cp.ndarray)  # the loop's arrays live on the device
    images = pipe(**settings).images
    assert isinstance(images, np.ndarray)
    diff = np.abs(images - expected)
    # fp16 engines against the fp32 CPU path, over a few denoising steps (engines/compare.py
    # says what the gates rest on).
    assert float(diff.mean()) <= FP16_IMAGE_MEAN_ABS and float(diff.max()) <= FP16_IMAGE_MAX_ABS
    auto = sdrt.Pipeline.load(trt_folder, backend="auto")
    assert isinstance(auto._session("unet"), type(pipe._session("unet")))


def test_ort_cuda_session_binds_device_arrays(tiny_built):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    import cupy as cp

    from sdrt.backends.ort_cuda import OrtCudaOptions, OrtCudaSession

    manifest = read_manifest(tiny_built)
    for name, shapes in (
        ("unet", {"sample": (2, 4, 8, 8), "timestep": (1,), "encoder_hidden_states": (2, 77, 32)}),
        ("vae_decoder", {"latent_sample": (1, 4, 8, 8)}),
    ):
        component = manifest.components[name]
        reference = _reference(tiny_built, component)
        feeds = sample_inputs(component.inputs, shapes, seed=0)
        expected = reference(feeds)
        for options in (OrtCudaOptions(), OrtCudaOptions(cuda_graph=True)):
            session = OrtCudaSession(tiny_built, component, options)
            for _ in range(3):  # the graph is captured on an early run and replayed after
                out = session.run({k: cp.asarray(v) for k, v in feeds.items()})
                assert all(isinstance(v, cp.ndarray) for v in out.values())
                max_abs, _ = measure(expected, {k: v.get() for k, v in out.items()})
                assert max_abs < 1e-4  # fp32 graph on CUDA, TF32 off (OrtCudaOptions.use_tf32)
