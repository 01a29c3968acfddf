"""Image and mask preparation match diffusers' VaeImageProcessor; the outpainting helper's checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdrt.errors import InputError
from sdrt.images import (
    mask_to_latent_size,
    outpaint_canvas,
    postprocess,
    preprocess_image,
    preprocess_mask,
    to_pil,
)

diffusers_image_processor = pytest.importorskip("diffusers.image_processor")
torch = pytest.importorskip("torch")

# Both sides resize with PIL and divide by 255 in float32: only rounding can differ.
PIXEL_TOLERANCE = 1e-6


def _photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize(("size", "target"), [((64, 64), (64, 64)), ((100, 75), (128, 64))])
def test_image_matches_vae_image_processor(size, target):
    processor = diffusers_image_processor.VaeImageProcessor(vae_scale_factor=8)
    image = _photo(*size)
    theirs = processor.preprocess(image, height=target[1], width=target[0]).numpy()
    ours = preprocess_image(image, *target)
    assert ours.shape == theirs.shape == (1, 3, target[1], target[0])
    np.testing.assert_allclose(ours, theirs, atol=PIXEL_TOLERANCE, rtol=0)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_mask_matches_the_inpainting_mask_processor(mode):
    processor = diffusers_image_processor.VaeImageProcessor(
        vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )
    mask = _photo(96, 80, mode)
    theirs = processor.preprocess(mask, height=64, width=128).numpy()
    ours = preprocess_mask(mask, 128, 64)
    np.testing.assert_array_equal(ours, theirs)
    assert set(np.unique(ours)) <= {0.0, 1.0}


def test_latent_mask_is_torch_nearest_interpolation():
    mask = (np.random.default_rng(0).random((2, 1, 64, 96)) > 0.5).astype(np.float32)
    theirs = torch.nn.functional.interpolate(torch.from_numpy(mask), size=(8, 12)).numpy()
    np.testing.assert_array_equal(mask_to_latent_size(mask, 8), theirs)


def test_array_inputs_uint8_and_float_agree():
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    from_uint8 = preprocess_image(pixels, 64, 64)
    from_float = preprocess_image(pixels.astype(np.float32)[None] / 255, 64, 64)
    from_pil = preprocess_image(Image.fromarray(pixels), 64, 64)
    np.testing.assert_allclose(from_uint8, from_float, atol=PIXEL_TOLERANCE, rtol=0)
    np.testing.assert_allclose(from_uint8, from_pil, atol=PIXEL_TOLERANCE, rtol=0)


def test_postprocess_and_pil_round_as_diffusers():
    decoded = np.random.default_rng(2).uniform(-1.2, 1.2, (2, 3, 16, 24)).astype(np.float32)
    processor = diffusers_image_processor.VaeImageProcessor(vae_scale_factor=8)
    theirs = processor.postprocess(torch.from_numpy(decoded), output_type="np")
    ours = postprocess(decoded)
    np.testing.assert_allclose(ours, theirs, atol=PIXEL_TOLERANCE, rtol=0)
    for mine, reference in zip(to_pil(ours), processor.numpy_to_pil(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(reference))


def test_outpaint_canvas_rounds_up_to_the_multiple():
    canvas, mask = outpaint_canvas(_photo(50, 40), left=10, top=3, multiple=32)
    assert canvas.size == mask.size == (64, 64)
    m = np.asarray(mask)
    assert m[:3].min() == 255 and m[:, :10].min() == 255  # new strips on the left and top
    assert m[:, 60:].min() == 255 and m[43:].min() == 255  # padding to the multiple
    # The original (rows 3..43, columns 10..60) less the 8 px overlap on every side that grew.
    assert m[11:35, 18:52].max() == 0
    assert m[10, 18:52].min() == 255 and m[11:35, 52].min() == 255


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(left=-1), r"left: expected an integer >= 0, got -1"),
        (dict(overlap=1.5), r"overlap: expected an integer >= 0, got 1.5"),
        (dict(multiple=0), r"multiple: expected an integer >= 1, got 0"),
    ],
)
def test_outpaint_canvas_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        outpaint_canvas(_photo(16, 16), **kwargs)


def test_bad_arrays():
    with pytest.raises(InputError, match=r"image: expected uint8 or float pixels, got dtype int32"):
        preprocess_image(np.zeros((8, 8, 3), np.int32), 8, 8)
    with pytest.raises(InputError, match=r"image: the array contains NaN or Inf"):
        preprocess_image(np.full((8, 8, 3), np.nan, np.float32), 8, 8)
    with pytest.raises(InputError, match=r"image: expected 1, 3 or 4 channels, got 2"):
        preprocess_image(np.zeros((8, 8, 2), np.float32), 8, 8)
    with pytest.raises(InputError, match=r"expected an array of shape \(H, W\), \(H, W, C\)"):
        preprocess_image(np.zeros((2, 8, 8, 3), np.float32), 8, 8)
