"""LCM-distilled U-Nets with every fast mode: DeepCache, the tiny VAE, the openvino backend,
int8 (ONNX Runtime's QDQ graph and NNCF's IR) and ToMe, each held to its oracle at the
tolerance the mode's own tests use for plain SD.

The tiny random LCM model (``init-model tiny-lcm``) is built once with DeepCache's branch 0
and a tiny VAE; its images equal diffusers' LatentConsistencyModelPipeline with DeepCache's
DeepCacheSDHelper and/or ``vae=AutoencoderTiny``, with LCMScheduler's between-step noise
patched to sdrt's draws (as tests/test_pipeline_lcm.py does). int8 folders are held to the
fp32 folder's image by the int8 build's PSNR gate, ToMe to tomesd's at its 2/255.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_MAX_SIZE, TINY_MIN_SIZE
from parity_helpers import inject_noise, step_noises
from sdrt.engines.compare import Thresholds, psnr
from test_build_int8 import INT8_IMAGE_MIN_PSNR
from test_deep_cache import MIN_CACHING_EFFECT
from test_pipeline_lcm import MAX_IMAGE_DIFF
from test_tome import MAX_IMAGE_DIFF as TOME_MAX_IMAGE_DIFF

import sdrt
from sdrt.deep_cache import full_steps
from sdrt.manifest import read_manifest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

STEPS = 4  # LCM's usual step count
INTERVAL = 2  # DeepCache at 4 steps: full, cached, full, cached
GUIDANCE = 8.5
SIZE = 64
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]
# OpenVINO f32 against ONNX Runtime on the same fp32 graphs (tests/test_backend_openvino.py).
FP32_MAX_PIXEL_DIFFERENCE = 1e-4
CALIBRATION_PROMPTS = ("a red fox in snow", "an astronaut riding a horse")
# NNCF's int8 IR of the tiny random LCM U-Net is over the build's gate (INT8_THRESHOLDS, max
# rel error 0.25) on our AMD EPYC (AVX2, no VNNI), so `sdrt build --int8-method nncf` refuses
# this folder there, naming the error: measured 0.31 with 2 or 6 calibration prompts (also with
# the time embedding, where the guidance enters, kept fp32), 0.37 without the overflow fix or
# without SmoothQuant (ONNX Runtime's int8 of the same U-Net passes). The test loosens the
# U-Net check to see that the rest composes, and holds the images to the int8 PSNR gate.
TINY_LCM_NNCF_THRESHOLDS = Thresholds(abs=1e-3, rel=0.5)


def _build(source, output, **options):
    from sdrt.export.build import BuildConfig, build

    config = BuildConfig(
        source=str(source),
        output=output,
        min_size=TINY_MIN_SIZE,
        max_size=TINY_MAX_SIZE,
        **options,
    )
    return build(config).output


@pytest.fixture(scope="module")
def lcm_source(tmp_path_factory):
    from sdrt.export.random_model import init_random_model

    return init_random_model("tiny-lcm", tmp_path_factory.mktemp("lcm-modes") / "src")


@pytest.fixture(scope="module")
def taesd(tmp_path_factory):
    from sdrt.export.random_tiny_vae import init_random_tiny_vae

    return init_random_tiny_vae("tiny-taesd", tmp_path_factory.mktemp("taesd") / "taesd", seed=0)


@pytest.fixture(scope="module")
def lcm_fast(lcm_source, taesd):
    """The LCM folder with DeepCache's branch 0 and the tiny VAE (fp32)."""
    return _build(
        lcm_source, lcm_source.parent / "fast", deep_cache_branches=(0,), tiny_vae=str(taesd)
    )


@pytest.fixture(scope="module")
def lcm_int8(lcm_source, taesd):
    """int8 (ONNX Runtime QDQ) + DeepCache branch 0 + tiny VAE: every mode of one folder."""
    return _build(
        lcm_source,
        lcm_source.parent / "int8",
        precision="int8",
        calibration_prompts=CALIBRATION_PROMPTS,
        deep_cache_branches=(0,),
        tiny_vae=str(taesd),
    )


@pytest.fixture(scope="module")
def lcm_nncf(lcm_source, taesd):
    """int8 by NNCF (the IR openvino runs) + DeepCache branch 0 + tiny VAE, its U-Net
    check loosened to TINY_LCM_NNCF_THRESHOLDS (the build's own gate refuses it here)."""
    import functools

    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    from sdrt.engines import int8_unet_nncf

    loosened = functools.partial(
        int8_unet_nncf.build_nncf_unet, thresholds=TINY_LCM_NNCF_THRESHOLDS
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8_unet_nncf, "build_nncf_unet", loosened)
        return _build(
            lcm_source,
            lcm_source.parent / "nncf",
            precision="int8",
            int8_method="nncf",
            calibration_prompts=CALIBRATION_PROMPTS,
            deep_cache_branches=(0,),
            tiny_vae=str(taesd),
        )


@pytest.fixture(scope="module")
def pipe(lcm_fast):
    return sdrt.Pipeline.load(lcm_fast)


def _latents(seed: int = 2) -> np.ndarray:
    shape = (len(PROMPTS), 4, SIZE // 8, SIZE // 8)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


SETTINGS = dict(
    num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE, output_type="np"
)


def _ours(pipe, latents, seed=5, **options):
    return pipe(PROMPTS, latents=latents, seed=seed, **SETTINGS, **options).images


def _diffusers_lcm(lcm_source, monkeypatch, latents, seed=5, *, vae=None, deep_cache=False):
    from diffusers.schedulers import scheduling_lcm

    extra = {} if vae is None else {"vae": vae}
    reference = diffusers.LatentConsistencyModelPipeline.from_pretrained(
        str(lcm_source), safety_checker=None, requires_safety_checker=False, **extra
    )
    reference.set_progress_bar_config(disable=True)
    inject_noise(monkeypatch, scheduling_lcm, step_noises(seed, latents.shape, STEPS - 1))
    helper = None
    if deep_cache:
        DeepCache = pytest.importorskip("DeepCache")
        helper = DeepCache.DeepCacheSDHelper(pipe=reference)
        helper.set_params(cache_interval=INTERVAL, cache_branch_id=0)
        helper.enable()
    try:
        return reference(PROMPTS, latents=torch.from_numpy(latents), **SETTINGS).images
    finally:
        if helper is not None:
            helper.disable()


# ---------------------------------------------------------------------------- DeepCache


def test_deep_cache_schedule_at_4_steps_is_two_full_and_two_shallow(pipe):
    request = pipe.request("a fox", num_inference_steps=STEPS)
    timesteps = pipe.plan(request)[1].timesteps
    assert len(set(float(t) for t in timesteps)) == STEPS  # LCM's grid repeats no timestep
    assert full_steps(timesteps, INTERVAL) == (True, False, True, False)


@pytest.mark.parametrize("vae", ["full", "tiny"])
def test_deep_cache_equals_deepcache_on_diffusers_lcm(pipe, lcm_source, taesd, monkeypatch, vae):
    latents = _latents()
    eager_vae = None if vae == "full" else diffusers.AutoencoderTiny.from_pretrained(str(taesd))
    theirs = _diffusers_lcm(lcm_source, monkeypatch, latents, vae=eager_vae, deep_cache=True)
    cached = {"deep_cache_interval": INTERVAL, "deep_cache_branch": 0}
    ours = _ours(pipe, latents, vae=vae, **cached)
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF
    plain = _ours(pipe, latents, vae=vae)
    assert float(np.abs(ours - plain).max()) >= MIN_CACHING_EFFECT  # the cache was used


def test_shallow_unet_takes_the_guidance_embedding(pipe):
    from sdrt.guidance_embedding import GUIDANCE_EMBEDDING_INPUT

    shallow = read_manifest(pipe.folder).components["unet_shallow_0"]
    assert GUIDANCE_EMBEDDING_INPUT in {s.name for s in shallow.inputs}


# ---------------------------------------------------------------------------- tiny VAE


def test_tiny_vae_equals_diffusers_lcm_with_autoencoder_tiny(pipe, lcm_source, taesd, monkeypatch):
    latents = _latents(3)
    eager_vae = diffusers.AutoencoderTiny.from_pretrained(str(taesd))
    theirs = _diffusers_lcm(lcm_source, monkeypatch, latents, vae=eager_vae)
    ours = _ours(pipe, latents, vae="tiny")
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF


# ---------------------------------------------------------------------------- openvino


def test_openvino_equals_ort_cpu_with_deep_cache_and_tiny_vae(lcm_fast, pipe):
    pytest.importorskip("openvino")
    openvino = sdrt.Pipeline.load(lcm_fast, backend="openvino")
    latents = _latents(4)
    cached = {"deep_cache_interval": INTERVAL, "deep_cache_branch": 0}
    for options in ({}, cached, {"vae": "tiny", **cached}):
        a = _ours(pipe, latents, **options)
        b = _ours(openvino, latents, **options)
        assert float(np.abs(a - b).max()) <= FP32_MAX_PIXEL_DIFFERENCE, options


# ---------------------------------------------------------------------------- int8


def _int8_within_gate(int8_pipe, exact_pipe):
    """Plain and DeepCache images within the int8 PSNR gate of the fp32 folder's; the tiny
    VAE runs on the int8 folder."""
    latents = _latents(6)
    cached = {"deep_cache_interval": INTERVAL, "deep_cache_branch": 0}
    for options in ({}, cached):
        reference = _ours(exact_pipe, latents, **options)
        image = _ours(int8_pipe, latents, **options)
        assert np.abs(image - reference).max() > 0  # its int8 U-Net did run
        assert psnr(image, reference) >= INT8_IMAGE_MIN_PSNR, options
    tiny = _ours(int8_pipe, latents, vae="tiny", **cached)
    assert np.abs(tiny - _ours(int8_pipe, latents, **cached)).max() > 0.05  # tiny decoder ran


def test_int8_builds_with_the_guidance_embedding_and_stays_within_the_gate(lcm_int8, pipe):
    manifest = read_manifest(lcm_int8)
    assert manifest.components["unet"].precision == "int8"
    assert manifest.deep_cache.branch_ids == (0,) and manifest.tiny_vae is not None
    _int8_within_gate(sdrt.Pipeline.load(lcm_int8), pipe)
    pytest.importorskip("openvino")
    _int8_within_gate(sdrt.Pipeline.load(lcm_int8, backend="openvino"), pipe)


def test_nncf_int8_runs_on_openvino_within_the_gate(lcm_nncf, pipe):
    manifest = read_manifest(lcm_nncf)
    ir = manifest.components["unet"].openvino
    assert ir is not None and ir.verification.max_rel_error <= TINY_LCM_NNCF_THRESHOLDS.rel
    _int8_within_gate(sdrt.Pipeline.load(lcm_nncf, backend="openvino"), pipe)


# ---------------------------------------------------------------------------- ToMe


@pytest.mark.heavy  # a ToMe build of its own (about a minute on the shared 2 cores)
def test_tome_equals_tomesd_on_diffusers_lcm(lcm_source, pipe, monkeypatch):
    from sdrt.export.tome_options import TomeOptions

    tomesd = pytest.importorskip("tomesd")
    tome = TomeOptions(ratio=0.5, max_downsample=2)
    folder = _build(lcm_source, lcm_source.parent / "tome", tome=tome)
    size = 128  # merging needs tokens: the tiny model's 64 px has too few to matter
    latents = np.random.default_rng(7).standard_normal((len(PROMPTS), 4, 16, 16), "float32")
    settings = {**SETTINGS, "height": size, "width": size}
    from diffusers.schedulers import scheduling_lcm

    reference = diffusers.LatentConsistencyModelPipeline.from_pretrained(
        str(lcm_source), safety_checker=None, requires_safety_checker=False
    )
    reference.set_progress_bar_config(disable=True)
    tomesd.apply_patch(reference, ratio=0.5, max_downsample=2, use_rand=False)
    inject_noise(monkeypatch, scheduling_lcm, step_noises(5, latents.shape, STEPS - 1))
    theirs = reference(PROMPTS, latents=torch.from_numpy(latents), **settings).images
    ours = sdrt.Pipeline.load(folder)(PROMPTS, latents=latents, seed=5, **settings).images
    plain = pipe(PROMPTS, latents=latents, seed=5, **settings).images
    assert float(np.abs(ours - theirs).max()) <= TOME_MAX_IMAGE_DIFF
    assert float(np.abs(plain - theirs).max()) > TOME_MAX_IMAGE_DIFF  # merging happened
