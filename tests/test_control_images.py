"""Control images: sdrt.control.images against diffusers' ControlNet pipelines' own
preparation (the oracle: txt2img, img2img, inpaint, SDXL), and the errors for images
diffusers would pass on to the ControlNet."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sdrt.control.images import prepare_control_image
from sdrt.errors import ParameterError

# Both sides make the same Pillow calls and the same float32 division, and nearest
# resizing only picks pixels: the result is bit for bit the same.
CONTROL_IMAGE_ATOL = 0.0


# diffusers' ControlNet pipelines -> their control image preparation (one code, copied)
ORACLES = {
    "txt2img": ("StableDiffusionControlNetPipeline", "prepare_image", {}),
    "img2img": ("StableDiffusionControlNetImg2ImgPipeline", "prepare_control_image", {}),
    "inpaint": (
        "StableDiffusionControlNetInpaintPipeline",
        "prepare_control_image",
        {"crops_coords": None, "resize_mode": "default"},  # the call's defaults
    ),
    "sdxl": ("StableDiffusionXLControlNetPipeline", "prepare_image", {}),
}


def diffusers_prepare(
    image, width, height, batch_size, num_images_per_prompt, cfg, guess, oracle="txt2img"
):
    """diffusers' own preparation, with the processor its ControlNet pipelines make."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from diffusers.image_processor import VaeImageProcessor

    class_name, method, extra = ORACLES[oracle]
    pipe = SimpleNamespace(
        control_image_processor=VaeImageProcessor(
            vae_scale_factor=8, do_convert_rgb=True, do_normalize=False
        )
    )
    prepared = getattr(getattr(diffusers, class_name), method)(
        pipe,
        image=image,
        width=width,
        height=height,
        batch_size=batch_size,
        num_images_per_prompt=num_images_per_prompt,
        device=torch.device("cpu"),
        dtype=torch.float32,
        do_classifier_free_guidance=cfg,
        guess_mode=guess,
        **extra,
    )
    return prepared.numpy()


def pil(width, height, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


def unit_array(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# (image maker, width, height, batch_size, num_images_per_prompt, cfg, guess_mode)
CASES = {
    "pil-down": (lambda: pil(50, 37), 32, 24, 1, 1, True, False),
    "pil-up-batch": (lambda: pil(20, 30), 64, 48, 4, 2, True, False),
    "pil-rgba": (lambda: pil(40, 40, "RGBA"), 48, 32, 1, 1, False, False),
    "pil-gray": (lambda: pil(40, 40, "L"), 40, 40, 2, 2, True, False),
    "pil-palette": (lambda: pil(33, 17, "P"), 24, 16, 1, 1, True, False),
    "pil-guess-mode": (lambda: pil(16, 16), 16, 16, 2, 1, True, True),
    "pil-size-rounded-down": (lambda: pil(30, 30), 45, 27, 1, 1, False, False),
    "pil-one-per-prompt": (
        lambda: [pil(16, 24, seed=1), pil(32, 8, seed=2)],
        16,
        16,
        6,
        3,
        True,
        False,
    ),
    "array-hwc-down": (lambda: unit_array((37, 50, 3)), 32, 24, 1, 1, True, False),
    "array-hwc-up": (lambda: unit_array((10, 13, 3)), 48, 40, 2, 2, False, False),
    "array-hwc-2x": (lambda: unit_array((12, 20, 3)), 40, 24, 1, 1, False, False),
    "array-same-size": (lambda: unit_array((16, 24, 3)), 24, 16, 1, 1, True, False),
    "array-nhwc-per-prompt": (lambda: unit_array((2, 9, 11, 3)), 16, 32, 4, 2, True, False),
    "array-nhwc-one": (lambda: unit_array((1, 21, 7, 3)), 8, 16, 3, 3, True, True),
    "array-list": (lambda: [unit_array((9, 9, 3), s) for s in range(3)], 16, 16, 3, 1, True, False),
    "array-float64": (
        lambda: unit_array((20, 20, 3)).astype(np.float64),
        16,
        16,
        1,
        1,
        False,
        False,
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_prepare_control_image_equals_diffusers(case):
    make, width, height, batch_size, per_prompt, cfg, guess = CASES[case]
    ours = prepare_control_image(
        make(),
        width,
        height,
        batch_size,
        per_prompt,
        do_classifier_free_guidance=cfg,
        guess_mode=guess,
    )
    theirs = diffusers_prepare(make(), width, height, batch_size, per_prompt, cfg, guess)
    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=CONTROL_IMAGE_ATOL)


@pytest.mark.parametrize("oracle", [o for o in ORACLES if o != "txt2img"])
@pytest.mark.parametrize("case", ["pil-up-batch", "pil-rgba", "array-nhwc-per-prompt"])
def test_every_controlnet_pipeline_prepares_the_same(case, oracle):
    make, width, height, batch_size, per_prompt, cfg, guess = CASES[case]
    ours = prepare_control_image(
        make(),
        width,
        height,
        batch_size,
        per_prompt,
        do_classifier_free_guidance=cfg,
        guess_mode=guess,
    )
    theirs = diffusers_prepare(make(), width, height, batch_size, per_prompt, cfg, guess, oracle)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=CONTROL_IMAGE_ATOL)


def test_uint8_array_is_scaled_as_pil_pixels_are():
    # diffusers would hand a uint8 array on as 0..255; sdrt scales it as it scales a PIL
    # image's pixels, so it must equal diffusers given the same pixels as floats in [0, 1].
    pixels = np.random.default_rng(3).integers(0, 256, (19, 23, 3), dtype=np.uint8)
    ours = prepare_control_image(pixels, 32, 16, 1, 1)
    theirs = diffusers_prepare(pixels.astype(np.float32) / 255.0, 32, 16, 1, 1, False, False)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=CONTROL_IMAGE_ATOL)
    assert ours.max() <= 1.0


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (np.zeros((16, 16), np.float32), "got (16, 16) (for a grayscale (H, W) array use np.stack"),
        (np.zeros((1, 1, 16, 16, 3), np.float32), "shape (H, W, 3) or (N, H, W, 3)"),
        (
            np.zeros((16, 16, 4), np.float32),
            "expected 3 channels (RGB) in the last axis, got shape (16, 16, 4)",
        ),
        (np.zeros((1, 3, 16, 16), np.float32), "for NCHW use a.transpose(0, 2, 3, 1)"),
        (np.zeros((3, 16, 16), np.float32), "for CHW use a.transpose(1, 2, 0)"),
        (
            np.zeros((16, 16, 3), np.int32),
            "expected uint8 pixels, or floats in [0, 1], got dtype int32",
        ),
        (np.zeros((16, 16, 3), bool), "got dtype bool"),
        (
            np.full((16, 16, 3), 255.0, np.float32),
            "expected float pixels in [0, 1], got values in [255, 255]",
        ),
        (np.full((16, 16, 3), -0.5, np.float32), "got values in [-0.5, -0.5]"),
        (np.full((16, 16, 3), np.nan, np.float32), "expected finite pixels, got NaN or Inf"),
        (np.zeros((0, 16, 3), np.float32), "expected an image of at least 1x1 pixels"),
        ([], "expected at least one image, got an empty list"),
        ("photo.png", "expected PIL images or numpy arrays, all of one kind, got str"),
        ([Image.new("RGB", (8, 8)), np.zeros((8, 8, 3))], "all of one kind, got Image, ndarray"),
        ([np.zeros((8, 8, 3)), np.zeros((1, 8, 8, 3))], "all of one rank"),
        ([np.zeros((8, 8, 3)), np.zeros((8, 9, 3))], "expected arrays of one size"),
    ],
)
def test_bad_control_image_is_a_parameter_error(image, expected):
    with pytest.raises(ParameterError) as raised:
        prepare_control_image(image, 16, 16, 1, 1)
    assert expected in str(raised.value)
    # the CLI names its option, not the Python parameter
    assert raised.value.spelled({"control_image": "--control"}).startswith("--control: ")


def test_image_count_must_be_one_or_one_per_prompt():
    images = [Image.new("RGB", (8, 8))] * 3
    with pytest.raises(ParameterError, match=r"expected 1 image, or one per prompt \(2\), got 3"):
        prepare_control_image(images, 16, 16, batch_size=4, num_images_per_prompt=2)


def test_output_smaller_than_the_vae_scale_is_an_error():
    with pytest.raises(ParameterError, match="at least 8 pixels a side, got 16x0"):
        prepare_control_image(Image.new("RGB", (8, 8)), 16, 7, 1, 1)


@pytest.mark.parametrize(("batch_size", "per_prompt"), [(0, 1), (3, 2), (2, 0)])
def test_batch_size_is_a_multiple_of_num_images_per_prompt(batch_size, per_prompt):
    with pytest.raises(ParameterError, match="batch_size: expected a multiple >= 1 of"):
        prepare_control_image(Image.new("RGB", (8, 8)), 16, 16, batch_size, per_prompt)
