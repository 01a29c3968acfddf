"""On a GPU: the ort-cuda pipeline end to end, and the denoising loop on real cupy.

Marked ``gpu``: skipped without CUDA (tests/conftest.py). Without ONNX Runtime's CUDA
provider they skip too, unless the gpu tier was asked for (``-m gpu``), where a missing or
broken onnxruntime-gpu fails them: on a GPU machine it is the thing under test.
Not yet run on a GPU by us (see the README's GPU section).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import gpu_tier_asked
from sdrt.engines.compare import (
    FP16_IMAGE_MAX_ABS,
    FP16_IMAGE_MEAN_ABS,
    FP16_IMAGE_MIN_PSNR,
    FP32_IMAGE_MIN_PSNR,
    measure,
    psnr,
    sample_inputs,
)

import sdrt
from sdrt.manifest import read_manifest

pytestmark = pytest.mark.gpu

SETTINGS = dict(
    prompt=["a red fox in snow", "a lighthouse"],
    negative_prompt="blurry",
    num_inference_steps=4,
    guidance_scale=7.5,
    height=64,
    width=64,
    seed=0,
    output_type="np",
)
# A CUDA graph replays the very kernels of the plain run on the same inputs: bit for bit.
CUDA_GRAPH_REPLAY_ATOL = 0.0
# fp32 graphs on CUDA with TF32 off (OrtCudaOptions.use_tf32=False) against ORT on the CPU:
# fp32 rounding of other kernels, ~1e-6 relative per layer.
FP32_CUDA_ABS = 1e-4


@pytest.fixture(autouse=True)
def ort_cuda(request):
    import onnxruntime as ort

    from sdrt.backends.ort_cuda import preload_cuda_libraries

    preload_cuda_libraries(ort)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        message = f"onnxruntime-gpu's CUDA provider is missing: {ort.get_available_providers()}"
        if gpu_tier_asked(request.config.getoption("markexpr") or ""):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def _options(cuda_graph: bool):
    from sdrt.backends.ort_cuda import OrtCudaOptions

    return OrtCudaOptions(cuda_graph=cuda_graph)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_fp32_images_match_the_cpu(tiny_built, cuda_graph):
    expected = sdrt.Pipeline.load(tiny_built, backend="ort-cpu")(**SETTINGS).images
    pipe = sdrt.Pipeline.load(tiny_built, backend="ort-cuda", backend_options=_options(cuda_graph))
    images = pipe(**SETTINGS).images
    assert type(images) is np.ndarray and images.shape == expected.shape
    assert psnr(images, expected) >= FP32_IMAGE_MIN_PSNR


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_fp16_images_are_within_the_fp16_gates_of_cpu_fp32(
    tiny_built, tiny_built_fp16, cuda_graph
):
    expected = sdrt.Pipeline.load(tiny_built, backend="ort-cpu")(**SETTINGS).images
    pipe = sdrt.Pipeline.load(
        tiny_built_fp16, backend="ort-cuda", backend_options=_options(cuda_graph)
    )
    images = pipe(**SETTINGS).images
    diff = np.abs(images - expected)
    assert float(diff.max()) <= FP16_IMAGE_MAX_ABS
    assert float(diff.mean()) <= FP16_IMAGE_MEAN_ABS
    assert psnr(images, expected) >= FP16_IMAGE_MIN_PSNR


def test_the_loop_runs_on_real_cupy_with_one_host_copy_per_call(tiny_built_fp16, monkeypatch):
    import cupy as cp

    import sdrt.pipeline

    pipe = sdrt.Pipeline.load(tiny_built_fp16, backend="ort-cuda")
    embeddings = pipe.prompt_encoder.encode(["a red fox in snow"])
    assert isinstance(embeddings, cp.ndarray)
    copies = []
    real_to_host = sdrt.pipeline.to_host

    def counting(array):
        copies.append(type(array))
        return real_to_host(array)

    monkeypatch.setattr(sdrt.pipeline, "to_host", counting)
    unet = pipe._session("unet")
    fed = []
    run = unet.run

    def logging_run(feeds):
        fed.append({k: type(v) for k, v in feeds.items()})
        return run(feeds)

    monkeypatch.setattr(unet, "run", logging_run)
    images = pipe(**SETTINGS).images
    assert images.shape == (2, 64, 64, 3)
    assert copies == [cp.ndarray]  # one copy of the decoded images to the host
    assert len(fed) == SETTINGS["num_inference_steps"]
    assert all(kind is cp.ndarray for feeds in fed for kind in feeds.values())


def test_cuda_graph_replays_are_exact(tiny_built):
    import cupy as cp

    from sdrt.backends.ort_cuda import OrtCudaSession

    component = read_manifest(tiny_built).components["unet"]
    shapes = {"sample": (2, 4, 8, 8), "timestep": (1,), "encoder_hidden_states": (2, 77, 32)}
    plain = OrtCudaSession(tiny_built, component, _options(False))
    graphed = OrtCudaSession(tiny_built, component, _options(True))
    for seed in range(3):  # captured on an early run, replayed after
        feeds = {k: cp.asarray(v) for k, v in sample_inputs(component.inputs, shapes, seed).items()}
        expected = plain.run(feeds)["out_sample"].get()
        got = graphed.run(feeds)["out_sample"].get()
        np.testing.assert_allclose(got, expected, rtol=0, atol=CUDA_GRAPH_REPLAY_ATOL)


def test_fp32_sessions_match_onnxruntime_on_the_cpu(tiny_built):
    import cupy as cp
    import onnxruntime as ort

    from sdrt.backends.ort_cuda import OrtCudaSession

    manifest = read_manifest(tiny_built)
    shapes = {"sample": (2, 4, 8, 8), "timestep": (1,), "encoder_hidden_states": (2, 77, 32)}
    component = manifest.components["unet"]
    feeds = sample_inputs(component.inputs, shapes, seed=0)
    cpu = ort.InferenceSession(str(tiny_built / component.file), providers=["CPUExecutionProvider"])
    names = [o.name for o in component.outputs]
    expected = dict(zip(names, cpu.run(names, feeds), strict=True))
    session = OrtCudaSession(tiny_built, component)
    out = session.run({k: cp.asarray(v) for k, v in feeds.items()})
    max_abs, _ = measure(expected, {k: v.get() for k, v in out.items()})
    assert max_abs <= FP32_CUDA_ABS
