"""`sdrt serve` called through OpenAI's own Python client (the `openai` package), as users
call it: images.generate and images.edit with sdrt's fields in ``extra_body``, ControlNet
control images among them, and errors raised as the client's BadRequestError with the
field in ``param``. The images must equal the Python call's with the same arguments."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from conftest import TINY_CONTROLNETS
from controlnet_helpers import control_picture
from PIL import Image

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import HOST, ThreadServer, decode_png, png_bytes  # noqa: E402

from sdrt.service.config import ServeConfig  # noqa: E402
from sdrt.service.state import ServiceState  # noqa: E402

EDGES, DEPTH = TINY_CONTROLNETS
WIDTH, HEIGHT = 96, 64
FAST = {"num_inference_steps": 3, "scheduler": "euler"}


def _b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


@pytest.fixture(scope="module")
def pipe(tiny_built_controlnet):
    import sdrt

    return sdrt.Pipeline.load(tiny_built_controlnet)


@pytest.fixture(scope="module")
def client(tiny_built_controlnet, pipe):
    config = ServeConfig(folder=tiny_built_controlnet, timeout=120)
    with ThreadServer(ServiceState(config, loader=lambda c: pipe)) as server:
        server.wait_ready()
        # max_retries=0: a refusal must reach the test as the client raises it, at once.
        yield openai.OpenAI(
            api_key="unused", base_url=f"http://{HOST}:{server.port}/v1", max_retries=0
        )


def _pixels(pipe, prompt, **arguments) -> np.ndarray:
    return np.asarray(pipe(prompt, **arguments, **FAST).images[0])


def test_generate_equals_the_python_call(client, pipe):
    reply = client.images.generate(
        prompt="a red fox", size=f"{WIDTH}x{HEIGHT}", n=1, response_format="b64_json",
        extra_body={"seed": 5, **FAST},
    )  # fmt: skip
    want = _pixels(pipe, "a red fox", width=WIDTH, height=HEIGHT, seed=5)
    assert np.array_equal(decode_png(reply.data[0].b64_json), want)


def test_generate_with_control_images_in_extra_body(client, pipe):
    edges, depth = control_picture(WIDTH, HEIGHT, seed=0), control_picture(WIDTH, HEIGHT, seed=1)
    reply = client.images.generate(
        prompt="a house", size=f"{WIDTH}x{HEIGHT}", response_format="b64_json",
        extra_body={
            "seed": 2, **FAST,
            "controlnet": [EDGES, DEPTH],
            "control_image": [_b64(edges), _b64(depth)],
            "controlnet_conditioning_scale": [0.8, 0.5],
            "control_guidance_end": [1.0, 0.5],
        },
    )  # fmt: skip
    want = _pixels(
        pipe, "a house", width=WIDTH, height=HEIGHT, seed=2, controlnet=[EDGES, DEPTH],
        control_image=[edges, depth], controlnet_conditioning_scale=[0.8, 0.5],
        control_guidance_end=[1.0, 0.5],
    )  # fmt: skip
    assert np.array_equal(decode_png(reply.data[0].b64_json), want)


def test_edit_img2img_with_a_control_image(client, pipe):
    start = control_picture(WIDTH, HEIGHT, seed=3).convert("RGB")
    edges, depth = control_picture(WIDTH, HEIGHT, seed=0), control_picture(WIDTH, HEIGHT, seed=1)
    reply = client.images.edit(
        image=("start.png", io.BytesIO(png_bytes(start)), "image/png"),
        prompt="a boat", size=f"{WIDTH}x{HEIGHT}", response_format="b64_json",
        extra_body={
            "seed": 4, "strength": 0.6, **FAST,
            "control_image": [_b64(edges), _b64(depth)],
        },
    )  # fmt: skip
    want = _pixels(
        pipe, "a boat", image=start, strength=0.6, width=WIDTH, height=HEIGHT, seed=4,
        control_image=[edges, depth],
    )  # fmt: skip
    assert np.array_equal(decode_png(reply.data[0].b64_json), want)


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"control_image": ["not base64!"]}, "control_image"),
        (
            {
                "controlnet": ["nope"],
                "control_image": [_b64(control_picture(WIDTH, HEIGHT, seed=0))],
            },
            "controlnet",
        ),
        ({"num_inference_steps": 0}, "num_inference_steps"),
    ],
)
def test_refusals_are_the_client_s_bad_request_error(client, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(
            prompt="x", size=f"{WIDTH}x{HEIGHT}", response_format="b64_json", extra_body=extra
        )
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param, caught.value.body
