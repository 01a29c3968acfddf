"""ControlNet through `sdrt serve` (sdrt/service/control.py), on the tiny model with its two
tiny ControlNets: base64 control images in the generations body and control_image uploads
on the edits endpoint give the Pipeline call's pixels for the same arguments, and every bad
control input is a 400 (413 over the limits) naming its field, never a 500."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from conftest import TINY_CONTROLNETS
from controlnet_helpers import control_picture
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import (  # noqa: E402
    ThreadServer,
    call,
    decode_png,
    generate,
    multipart,
    png_bytes,
)
from test_serve import _error  # noqa: E402  (OpenAI's error object, checked)

from sdrt.service.config import Limits, ServeConfig  # noqa: E402
from sdrt.service.state import ServiceState  # noqa: E402

EDGES, DEPTH = TINY_CONTROLNETS
WIDTH, HEIGHT = 96, 64
FAST = {"num_inference_steps": 3, "scheduler": "euler"}
# Small limits, so that a control image can pass them: the body limit grows by one
# image per ControlNet (a body far over 4096 bytes is accepted when its images are in).
LIMITS = Limits(max_body_bytes=4096, max_upload_bytes=30_000, max_upload_pixels=128 * 128)
PICTURES = [control_picture(WIDTH, HEIGHT, seed=s) for s in (0, 1, 2)]


def _b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def _noise(width: int, height: int) -> Image.Image:
    """An image that PNG cannot compress: its file is about 3 bytes a pixel."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def pipe(tiny_built_controlnet):
    import sdrt

    return sdrt.Pipeline.load(tiny_built_controlnet)


@pytest.fixture(scope="module")
def server(tiny_built_controlnet, pipe):
    config = ServeConfig(folder=tiny_built_controlnet, timeout=120, limits=LIMITS)
    with ThreadServer(ServiceState(config, loader=lambda c: pipe)) as s:
        yield s.wait_ready()


def _pixels(pipe, prompt, **arguments):
    return np.asarray(pipe(prompt, **arguments, **FAST).images[0])


def _edit(server, fields, files):
    body, content_type = multipart(fields, files)
    return call(server.port, "POST", "/v1/images/edits", body, {"Content-Type": content_type})


# ------------------------------------------------------------------------- images


def test_generations_with_two_controlnets_equal_the_pipeline_s(server, pipe):
    """Names in the other order than the build's, per-ControlNet settings, one image as a
    data URL: the same image as the Python call."""
    body = {
        "prompt": "a red fox",
        "seed": 4,
        "size": f"{WIDTH}x{HEIGHT}",
        "control_image": [_b64(PICTURES[0]), "data:image/png;base64," + _b64(PICTURES[1])],
        "controlnet": [DEPTH, EDGES],
        "controlnet_conditioning_scale": [0.7, 1.3],
        "control_guidance_start": [0.0, 0.3],
        "control_guidance_end": [1.0, 0.9],
        **FAST,
    }
    reply = generate(server.port, body)
    assert reply.status == 200, reply.body
    want = _pixels(
        pipe,
        "a red fox",
        seed=4,
        height=HEIGHT,
        width=WIDTH,
        control_image=PICTURES[:2],
        controlnet=[DEPTH, EDGES],
        controlnet_conditioning_scale=[0.7, 1.3],
        control_guidance_start=[0.0, 0.3],
        control_guidance_end=[1.0, 0.9],
    )
    assert np.array_equal(decode_png(reply.json()["data"][0]["b64_json"]), want)


def test_one_control_image_sets_the_size_and_guess_mode_reaches_the_call(server, pipe):
    body = {
        "prompt": "a fox",
        "seed": 1,
        "control_image": _b64(PICTURES[2]),
        "controlnet": EDGES,
        "guess_mode": True,
        **FAST,
    }
    reply = generate(server.port, body)
    assert reply.status == 200, reply.body
    got = decode_png(reply.json()["data"][0]["b64_json"])
    want = _pixels(
        pipe, "a fox", seed=1, control_image=PICTURES[2], controlnet=EDGES, guess_mode=True
    )
    assert got.shape == (HEIGHT, WIDTH, 3) and np.array_equal(got, want)


def test_edits_take_control_images_for_img2img_and_inpainting(server, pipe):
    image = _noise(WIDTH, HEIGHT)
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, (16, 16, 64, 48))
    fields = {"prompt": "a fox", "seed": "2", **{k: str(v) for k, v in FAST.items()}}
    # img2img with one ControlNet; inpainting with both, a setting repeated for a list, the
    # first image as base64 text, and the openai client's names for lists (``name[]``)
    img2img = (
        {"controlnet": DEPTH, "strength": "0.7", "controlnet_conditioning_scale": "0.9"},
        {"control_image": png_bytes(PICTURES[0])},
        dict(control_image=PICTURES[0], controlnet=DEPTH, strength=0.7),
    )
    img2img[2]["controlnet_conditioning_scale"] = 0.9
    inpaint = (
        {
            "control_guidance_end[]": ["0.8", "1.0"],
            "guess_mode": "true",
            "control_image[]": _b64(PICTURES[0]),
        },
        {"mask": png_bytes(mask), "control_image": png_bytes(PICTURES[1])},
        dict(
            mask_image=mask,
            strength=1.0,  # the service's default with a mask, as diffusers' inpainting
            control_image=PICTURES[:2],
            control_guidance_end=[0.8, 1.0],
            guess_mode=True,
        ),
    )
    for extra, files, arguments in (img2img, inpaint):
        reply = _edit(server, {**fields, **extra}, {"image": png_bytes(image), **files})
        assert reply.status == 200, reply.body
        want = _pixels(pipe, "a fox", image=image, seed=2, **arguments)
        assert np.array_equal(decode_png(reply.json()["data"][0]["b64_json"]), want)


def test_control_requests_are_never_batched(pipe):
    from sdrt.service.batching import batch_key

    plain = pipe.request("a fox", height=HEIGHT, width=WIDTH, **FAST)
    controlled = pipe.request(
        "a fox", height=HEIGHT, width=WIDTH, control_image=PICTURES[:2], **FAST
    )
    assert batch_key(plain) is not None and batch_key(controlled) is None


# ------------------------------------------------------------------------- errors

GOOD = _b64(PICTURES[0])


@pytest.mark.parametrize(
    "fields, param, message",
    [
        (
            {"control_image": "not base64!"},
            "control_image",
            "control_image: expected a base64 PNG, JPEG or WebP image, could not decode",
        ),
        (
            {"control_image": base64.b64encode(b"no image").decode()},
            "control_image",
            "control_image: expected a PNG, JPEG or WebP image, got data in no image format",
        ),
        (
            {"control_image": 3},
            "control_image",
            "control_image: expected a base64 PNG, JPEG or WebP image or a list of them, got int",
        ),
        (
            {"control_image": [GOOD] * 3},
            "control_image",
            "control_image: expected at most 2 image(s), one per ControlNet of this model "
            f"folder ({EDGES}, {DEPTH}), got 3",
        ),
        (
            {"control_image": GOOD},
            "control_image",
            "control_image: expected 2 image(s), one per ControlNet the call runs",
        ),
        (
            {"control_image": [GOOD], "controlnet": "pose"},
            "controlnet",
            f"controlnet: expected names of this folder's ControlNets ({EDGES}, {DEPTH}), got "
            "'pose'",
        ),
        (
            {"control_image": [GOOD] * 2, "controlnet_conditioning_scale": [1.0]},
            "controlnet_conditioning_scale",
            "controlnet_conditioning_scale: expected a number or a list of 2 (one per "
            "ControlNet the call runs), got a list of 1",
        ),
        (
            {"control_image": [GOOD] * 2, "controlnet_conditioning_scale": "0.5"},
            "controlnet_conditioning_scale",
            "controlnet_conditioning_scale: expected finite numbers, got '0.5'",
        ),
        (
            {
                "control_image": [GOOD] * 2,
                "control_guidance_start": 0.6,
                "control_guidance_end": 0.4,
            },
            "control_guidance_start",
            "control_guidance_start and control_guidance_end: expected 0 <= start < end <= 1, "
            "got start 0.6 and end 0.4",
        ),
        (
            {"control_image": [GOOD] * 2, "guess_mode": "yes"},
            "guess_mode",
            "guess_mode: expected True or False, got 'yes'",
        ),
        (
            {"controlnet": EDGES},
            "controlnet",
            "controlnet: expected control_image= with it",
        ),
    ],
)
def test_bad_control_input_is_a_400_naming_the_field(server, fields, param, message):
    body = {"prompt": "x", "seed": 0, **FAST, **fields}
    assert _error(generate(server.port, body), 400, param).startswith(message)


def test_control_images_are_held_to_the_upload_limits(server):
    big = _b64(_noise(128, 128))  # ~49 kB, over the 30 kB limit
    reply = generate(server.port, {"prompt": "x", "control_image": [big, GOOD]})
    assert _error(reply, 413, "control_image").startswith(
        "control_image: expected an image of at most 30000 bytes"
    )
    few_bytes_many_pixels = _b64(Image.new("RGB", (256, 256)))  # a few hundred bytes
    reply = generate(server.port, {"prompt": "x", "control_image": few_bytes_many_pixels})
    assert _error(reply, 413, "control_image") == (
        "control_image: expected an image of at most 16384 pixels (this server's limit), got "
        "256x256"
    )
    # ~18 kB: the body, far over max_body_bytes, is within it plus a control image each
    within = _b64(_noise(WIDTH, HEIGHT))
    body = {"prompt": "x", "seed": 0, "control_image": [within, GOOD], **FAST}
    assert len(str(body)) > LIMITS.max_body_bytes
    assert generate(server.port, body).status == 200


@pytest.mark.parametrize(
    "fields, files, message",
    [
        ({}, {"control_image": b"no image"}, "control_image: expected a PNG, JPEG or WebP image"),
        (
            {"control_image": "edges.png"},
            {},
            "control_image: expected a base64 PNG, JPEG or WebP image, could not decode",
        ),
        (
            {},
            {"control_image": [png_bytes(PICTURES[0])] * 3},
            "control_image: expected at most 2 image(s)",
        ),
        (
            {"controlnet_conditioning_scale": "strong"},
            {"control_image": png_bytes(PICTURES[0])},
            "controlnet_conditioning_scale: expected a number, got 'strong'",
        ),
        (
            {"guess_mode": "maybe"},
            {"control_image": png_bytes(PICTURES[0])},
            "guess_mode: expected true or false, got 'maybe'",
        ),
    ],
)
def test_bad_control_uploads_are_a_400_naming_the_field(server, fields, files, message):
    image = png_bytes(PICTURES[1])
    reply = _edit(server, {"prompt": "x", **fields}, {"image": image, **files})
    assert _error(reply, 400, message.partition(":")[0]).startswith(message)


def test_a_folder_without_controlnets_refuses_control_images(tiny_built):
    import sdrt

    plain = sdrt.Pipeline.load(tiny_built)
    config = ServeConfig(folder=tiny_built, timeout=60)
    expected = "control_image: this model folder was built without ControlNets"
    with ThreadServer(ServiceState(config, loader=lambda c: plain)) as s:
        s.wait_ready()
        reply = generate(s.port, {"prompt": "x", "control_image": GOOD})
        assert _error(reply, 400, "control_image").startswith(expected)
        files = {"image": png_bytes(PICTURES[1]), "control_image": png_bytes(PICTURES[0])}
        assert _error(_edit(s, {"prompt": "x"}, files), 400, "control_image").startswith(expected)
