"""T2I-Adapter: ``sdrt build --t2i-adapter`` exports the adapter and the U-Net that takes
its features (verified against eager PyTorch), and calls with ``adapter_image`` give
diffusers' StableDiffusionAdapterPipeline images on the same weights and noise (a tiny
random T2IAdapter sized to the tiny U-Net, tests/adapter_helpers.py).

diffusers' SD 1.x adapter pipeline has no ``adapter_conditioning_factor`` (its SDXL one
has, and the SDXL test uses it); the SD 1.x reference for it is the SD 1.x pipeline whose U-Net stops taking the features
after the first ``int(steps * factor)`` calls, which is what the SDXL pipeline does.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_ADAPTER
from controlnet_helpers import control_picture
from parity_helpers import max_diff
from test_controlnet_build import MAX_GRAPH_DIFF
from test_pipeline_parity import MAX_IMAGE_DIFF

import sdrt
from sdrt.errors import ParameterError
from sdrt.manifest import ADAPTER_UNET, T2I_ADAPTER, adapter_feature, read_manifest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

STEPS = 4
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]
HEIGHT, WIDTH = 64, 96
# StableDiffusionXLPipeline's components the adapter pipeline does not take
XL_UNUSED_COMPONENTS = ("image_encoder", "feature_extractor")
SETTINGS = dict(
    num_inference_steps=STEPS,
    guidance_scale=7.5,
    height=HEIGHT,
    width=WIDTH,
    output_type="np",
)


@pytest.fixture(scope="module")
def sd(tiny_built_adapter):
    return sdrt.Pipeline.load(tiny_built_adapter)


@pytest.fixture(scope="module")
def reference(tiny_source, tiny_adapter_source):
    """diffusers' StableDiffusionAdapterPipeline on the same weights, Euler as sdrt runs."""
    base = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_source), safety_checker=None, requires_safety_checker=False
    )
    pipe = diffusers.StableDiffusionAdapterPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=base.unet,
        adapter=diffusers.T2IAdapter.from_pretrained(str(tiny_adapter_source)).eval(),
        scheduler=diffusers.EulerDiscreteScheduler.from_config(base.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _FeaturesForFirstCalls(torch.nn.Module):
    """The U-Net, given the adapter's features only for its first ``calls`` calls: the
    SDXL adapter pipeline's ``adapter_conditioning_factor``, on the SD 1.x pipeline."""

    def __init__(self, unet, calls: int):
        super().__init__()
        self.unet, self.calls, self.count = unet, calls, 0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.unet, name)

    def forward(self, *args, down_intrablock_additional_residuals=None, **kwargs):
        features = down_intrablock_additional_residuals if self.count < self.calls else None
        self.count += 1
        return self.unet(*args, down_intrablock_additional_residuals=features, **kwargs)


def _latents(batch: int, seed: int) -> np.ndarray:
    shape = (batch, 4, HEIGHT // 8, WIDTH // 8)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_build_records_the_adapter_and_its_verified_graphs(tiny_built_adapter):
    manifest = read_manifest(tiny_built_adapter)
    adapter = manifest.t2i_adapter
    assert adapter.name == TINY_ADAPTER
    assert (adapter.in_channels, adapter.adapter_type, adapter.features) == (3, "full_adapter", 4)
    features = [adapter_feature(k) for k in range(4)]
    assert [o.name for o in manifest.components[T2I_ADAPTER].outputs] == features
    unet_inputs = [i.name for i in manifest.components[ADAPTER_UNET].inputs]
    assert unet_inputs[3:] == features
    for name in (T2I_ADAPTER, ADAPTER_UNET):
        assert manifest.components[name].verification.passed


def test_txt2img_equals_diffusers_with_a_scale(sd, reference):
    latents = _latents(2, seed=1)
    image = control_picture(WIDTH, HEIGHT, seed=0)
    settings = dict(SETTINGS, adapter_conditioning_scale=0.7)
    # diffusers takes one adapter image per prompt; sdrt one for all
    theirs = reference(PROMPTS, image=[image, image], latents=torch.from_numpy(latents), **settings)
    ours = sd(PROMPTS, adapter_image=image, latents=latents, scheduler="euler", **settings)
    assert max_diff(ours.images, theirs.images) <= MAX_IMAGE_DIFF
    assert [t.stage for t in ours.timings].count("t2i_adapter") == 1  # once, not per step
    plain = sd(PROMPTS, latents=latents, scheduler="euler", **SETTINGS).images
    assert max_diff(plain, theirs.images) > 100 * MAX_IMAGE_DIFF


def test_conditioning_factor_feeds_the_first_steps_only(sd, reference, monkeypatch):
    latents = _latents(2, seed=2)
    image = control_picture(WIDTH, HEIGHT, seed=1).convert("RGBA")  # converted to RGB
    factor = 0.3  # int(4 * 0.3): the first U-Net call takes the features, the others not
    monkeypatch.setattr(reference, "unet", _FeaturesForFirstCalls(reference.unet, 1))
    settings = dict(SETTINGS, num_images_per_prompt=2)
    theirs = reference(
        PROMPTS[0], image=image.convert("RGB"), latents=torch.from_numpy(latents), **settings
    )
    ours = sd(
        PROMPTS[0],
        adapter_image=image,
        adapter_conditioning_factor=factor,
        latents=latents,
        scheduler="euler",
        **settings,
    )
    assert max_diff(ours.images, theirs.images) <= MAX_IMAGE_DIFF
    # the late steps move the tiny model's image less than the first
    whole = sd(PROMPTS[0], adapter_image=image, latents=latents, scheduler="euler", **settings)
    assert max_diff(whole.images, theirs.images) > 10 * MAX_IMAGE_DIFF
    none = sd(
        PROMPTS[0],
        adapter_image=image,
        adapter_conditioning_factor=0.0,
        latents=latents,
        scheduler="euler",
        **settings,
    )
    plain = sd(PROMPTS[0], latents=latents, scheduler="euler", **settings)
    assert max_diff(none.images, plain.images) == 0.0  # factor 0: the plain U-Net throughout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"adapter_image": np.zeros((HEIGHT, WIDTH), np.float32)},
            r"adapter_image: expected 3 channel\(s\) for the T2I-Adapter 'sketch' .* got an "
            "array of 1",
        ),
        (
            {"adapter_image": np.zeros((HEIGHT, WIDTH, 4), np.float32)},
            r"expected 3 channel\(s\) .* got an array of 4",
        ),
        (
            {"adapter_image": control_picture(WIDTH, HEIGHT, 0), "adapter_conditioning_factor": 2},
            r"adapter_conditioning_factor: expected a fraction of the steps in \[0, 1\], got 2",
        ),
        (
            {"adapter_image": control_picture(WIDTH, HEIGHT, 0), "adapter_conditioning_scale": "x"},
            "adapter_conditioning_scale: expected a finite number, got 'x'",
        ),
        (
            {
                "adapter_image": control_picture(WIDTH, HEIGHT, 0),
                "image": control_picture(WIDTH, HEIGHT, 1),
            },
            "adapter_image: expected a txt2img call without image=",
        ),
        (
            {"adapter_image": [control_picture(WIDTH, HEIGHT, 0)] * 2},
            "adapter_image: expected one image .* got a list of 2",
        ),
    ],
)
def test_bad_adapter_arguments_are_clear_errors(sd, arguments, message):
    with pytest.raises(ParameterError, match=message):
        sd.request("a fox", **arguments)


def test_adapter_image_on_a_folder_without_an_adapter_is_a_clear_error(tiny_built):
    sd = sdrt.Pipeline.load(tiny_built)
    with pytest.raises(ParameterError, match="built without a T2I-Adapter .* got an adapter image"):
        sd.request("a fox", adapter_image=control_picture(WIDTH, HEIGHT, 0))


def test_sdxl_equals_diffusers_with_a_conditioning_factor(
    tiny_xl_built_adapter, tiny_xl_source, tiny_xl_adapter_source
):
    """diffusers' StableDiffusionXLAdapterPipeline, whose adapter_conditioning_factor is the
    oracle itself (its full_adapter_xl's features start at half the latents' size)."""
    base = diffusers.StableDiffusionXLPipeline.from_pretrained(str(tiny_xl_source))
    parts = {k: v for k, v in base.components.items() if k not in XL_UNUSED_COMPONENTS}
    reference = diffusers.StableDiffusionXLAdapterPipeline(
        **parts, adapter=diffusers.T2IAdapter.from_pretrained(str(tiny_xl_adapter_source)).eval()
    )
    reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(base.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    sd = sdrt.Pipeline.load(tiny_xl_built_adapter)
    latents = _latents(1, seed=3)
    image = control_picture(WIDTH, HEIGHT, seed=2)
    settings = dict(
        SETTINGS,
        guidance_scale=5.0,
        adapter_conditioning_scale=1.3,
        adapter_conditioning_factor=0.5,
    )
    theirs = reference("a fox", image=image, latents=torch.from_numpy(latents), **settings)
    ours = sd("a fox", adapter_image=image, latents=latents, scheduler="euler", **settings)
    assert max_diff(ours.images, theirs.images) <= MAX_IMAGE_DIFF
    # its pixel unshuffle takes multiples of 16
    with pytest.raises(ParameterError, match="height and width: expected multiples of 16 .* 72x96"):
        sd.request("a fox", adapter_image=image, height=72, width=WIDTH)
    # without height and width, the image's size rounded down to 16, as diffusers does
    request = sd.request("a fox", adapter_image=control_picture(104, 72, seed=2))
    assert (request.height, request.width) == (64, 96)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_adapter_image_is_prepared_as_diffusers_prepares_it(mode):
    """diffusers' _preprocess_adapter_image (Lanczos to the output size, [0, 1], the PIL
    image's own channels) against the preparation AdapterFeatures feeds the adapter."""
    from diffusers.pipelines.t2i_adapter.pipeline_stable_diffusion_adapter import (
        _preprocess_adapter_image,
    )

    from sdrt.control.conditioning import controlnet_cond

    picture = control_picture(80, 48, seed=5).convert(mode)
    theirs = _preprocess_adapter_image(picture, HEIGHT, WIDTH).numpy()
    ours = controlnet_cond(picture, WIDTH, HEIGHT, len(mode), 1, doubled=False)
    assert ours.shape == theirs.shape == (1, len(mode), HEIGHT, WIDTH)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_a_one_channel_adapter_takes_grayscale_arrays_only(tiny_built_adapter):
    import dataclasses

    from sdrt.control.adapter import check_adapter

    manifest = read_manifest(tiny_built_adapter)
    gray = dataclasses.replace(manifest.t2i_adapter, in_channels=1)
    manifest = dataclasses.replace(manifest, t2i_adapter=gray)
    assert check_adapter(manifest, np.zeros((HEIGHT, WIDTH), np.float32), 1.0, 1.0) is not None
    with pytest.raises(ParameterError, match=r"expected 1 channel\(s\) .* got an array of 3"):
        check_adapter(manifest, np.zeros((HEIGHT, WIDTH, 3), np.float32), 1.0, 1.0)


def test_adapter_unet_with_zero_features_equals_the_plain_unet(sd):
    plain, taking = sd.session("unet"), sd.session(ADAPTER_UNET)
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 10, 8), dtype=np.float32),
        "timestep": np.array([501.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }
    image = rng.random((2, 3, 80, 64), dtype=np.float32)
    features = sd.session(T2I_ADAPTER).run({"adapter_image": image})
    zeros = {name: np.zeros_like(value) for name, value in features.items()}
    expected = plain.run(feeds)["out_sample"]
    assert np.abs(taking.run(feeds | zeros)["out_sample"] - expected).max() <= MAX_GRAPH_DIFF
    # and the features do change it: the inputs are wired in
    moved = taking.run(feeds | features)["out_sample"]
    assert np.abs(moved - expected).max() > 100 * MAX_GRAPH_DIFF
