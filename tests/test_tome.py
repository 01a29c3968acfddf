"""Token merging (sdrt build --tome-ratio): the built folder's images equal diffusers with
tomesd's deterministic patch applied, on the tiny random model and the same latents."""

from __future__ import annotations

import numpy as np
import pytest

import sdrt
from sdrt.manifest import read_manifest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
tomesd = pytest.importorskip("tomesd")

# The bound: max abs difference of [0, 1] images within 2/255 of tomesd's.
MAX_IMAGE_DIFF = 2 / 255
# Exportable merge against tomesd's, eager, on one U-Net call: float32 rounding only.
MAX_UNET_DIFF = 1e-5
RATIO = 0.5
# The tiny U-Net's attention levels are down-sampled 1x, 2x and 4x; 2 merges in two of them.
MAX_DOWNSAMPLE = 2
SIZE = 128
STEPS = 3


@pytest.fixture(scope="module")
def tome_built(tiny_source, tmp_path_factory):
    from sdrt.export.build import BuildConfig, build
    from sdrt.export.tome_options import TomeOptions

    config = BuildConfig(
        source=str(tiny_source),
        output=tmp_path_factory.mktemp("tiny-tome") / "tiny",
        min_size=64,
        max_size=256,
        tome=TomeOptions(ratio=RATIO, max_downsample=MAX_DOWNSAMPLE),
    )
    return build(config).output


def _reference(tiny_source, tome: bool):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_source), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    if tome:
        tomesd.apply_patch(pipe, ratio=RATIO, max_downsample=MAX_DOWNSAMPLE, use_rand=False)
    return pipe


def _image(pipe, latents, *, is_sdrt: bool) -> np.ndarray:
    args = dict(
        prompt="a red fox in the snow",
        negative_prompt="blurry",
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        height=SIZE,
        width=SIZE,
        output_type="np",
    )
    if is_sdrt:
        return np.asarray(pipe(latents=latents, **args).images)
    return pipe(latents=torch.from_numpy(latents), **args).images


def test_tome_build_equals_tomesd_and_differs_from_plain(tome_built, tiny_built, tiny_source):
    latents = np.random.default_rng(3).standard_normal((1, 4, SIZE // 8, SIZE // 8), "float32")
    ours = _image(sdrt.Pipeline.load(tome_built), latents, is_sdrt=True)
    plain = _image(sdrt.Pipeline.load(tiny_built), latents, is_sdrt=True)
    reference = _image(_reference(tiny_source, tome=True), latents, is_sdrt=False)
    assert np.abs(ours - reference).max() <= MAX_IMAGE_DIFF
    # merging happened: the plain build's image is further from tomesd's than the bound
    assert np.abs(plain - reference).max() > MAX_IMAGE_DIFF


def test_exportable_merge_equals_tomesd_at_odd_sizes(tiny_source):
    import copy

    from sdrt.export.tome import apply_tome
    from sdrt.export.tome_options import TomeOptions

    unet = _reference(tiny_source, tome=False).unet
    reference = copy.deepcopy(unet)
    tomesd.apply_patch(reference, ratio=RATIO, max_downsample=MAX_DOWNSAMPLE, use_rand=False)
    assert apply_tome(unet, TomeOptions(ratio=RATIO, max_downsample=MAX_DOWNSAMPLE)) > 0
    generator = torch.Generator().manual_seed(0)
    for h, w in ((9, 8), (16, 24)):  # sizes the 2x2 cells do not divide, and not square
        sample = torch.randn(2, 4, h, w, generator=generator)
        context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
        with torch.no_grad():
            ours = unet(sample, 500.0, context).sample
            theirs = reference(sample, 500.0, context).sample
        assert (ours - theirs).abs().max().item() <= MAX_UNET_DIFF


def test_manifest_records_tome(tome_built, tiny_built):
    from sdrt.commands.info import format_info

    assert read_manifest(tiny_built).tome is None
    assert "token merging" not in format_info(tiny_built, read_manifest(tiny_built))
    manifest = read_manifest(tome_built)
    assert manifest.tome["ratio"] == RATIO and manifest.tome["max_downsample"] == MAX_DOWNSAMPLE
    assert manifest.tome["use_rand"] is False
    assert f"ratio {RATIO:g}, max downsample {MAX_DOWNSAMPLE}" in format_info(tome_built, manifest)


@pytest.mark.parametrize("ratio, downsample", [(0.0, 1), (0.8, 1), (0.5, 3)])
def test_bad_tome_options_are_input_errors(ratio, downsample):
    from sdrt.export.tome_options import TomeOptions

    from sdrt.errors import InputError

    with pytest.raises(InputError, match="--tome"):
        TomeOptions(ratio=ratio, max_downsample=downsample)
