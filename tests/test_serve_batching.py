"""`sdrt serve --max-batch N` (sdrt/service/batching.py) against a real uvicorn server on
loopback, on the tiny model: concurrent compatible requests run as one call, and each still
gets the pixels the Pipeline makes for it alone (an ancestral scheduler too); incompatible
ones run apart. Bounded in time and requests."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import ThreadServer, decode_png, generate  # noqa: E402

from sdrt.noise import SeedNoise  # noqa: E402
from sdrt.service.batching import BatchNoise  # noqa: E402
from sdrt.service.config import ServeConfig  # noqa: E402
from sdrt.service.state import ServiceState  # noqa: E402

WAIT_MS = 3000  # for the concurrent requests of a test to arrive, on a busy machine too


@pytest.fixture(scope="module")
def pipe(tiny_built):
    import sdrt

    return sdrt.Pipeline.load(tiny_built)


@pytest.fixture
def calls(pipe, monkeypatch):
    """The number of images of every Pipeline.generate call."""
    sizes, original, lock = [], pipe.generate, threading.Lock()

    def counting(request, **keywords):
        with lock:
            sizes.append(request.batch_size)
        return original(request, **keywords)

    monkeypatch.setattr(pipe, "generate", counting)
    return sizes


@pytest.fixture
def server(tiny_built, pipe):
    config = ServeConfig(folder=tiny_built, max_batch=4, batch_wait_ms=WAIT_MS, max_queue=8)
    with ThreadServer(ServiceState(config, loader=lambda c: pipe)) as s:
        yield s.wait_ready()


def _alone(pipe, body):
    size = int(body["size"].split("x")[0])
    images = pipe(
        body["prompt"],
        negative_prompt=body.get("negative_prompt"),
        num_images_per_prompt=body.get("n", 1),
        seed=body["seed"],
        height=size,
        width=size,
        num_inference_steps=body["num_inference_steps"],
        scheduler=body["scheduler"],
    ).images
    return [np.asarray(i) for i in images]


def _send_together(port, bodies):
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: generate(port, b, timeout=120), bodies))


@pytest.mark.parametrize("scheduler", ["euler", "euler_a"])
def test_concurrent_requests_share_a_call_and_keep_their_own_pixels(server, pipe, calls, scheduler):
    common = {"size": "64x64", "num_inference_steps": 4, "scheduler": scheduler}
    bodies = [
        {"prompt": "a red fox", "seed": 1, **common},
        {"prompt": "a blue cat", "seed": 2, "negative_prompt": "blur", **common},
        {"prompt": "a green owl", "seed": 3, "n": 2, **common},
    ]
    calls.clear()  # the warm-up is not counted
    replies = _send_together(server.port, bodies)
    assert [r.status for r in replies] == [200, 200, 200], [r.body[:200] for r in replies]
    # 1 + 1 + 2 images: one call when all arrive within the wait; at least two share one
    assert sum(calls) == 4 and len(calls) < 3, calls
    for body, reply in zip(bodies, replies, strict=True):
        got = [decode_png(d["b64_json"]) for d in reply.json()["data"]]
        want = _alone(pipe, body)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g, w)


def test_incompatible_requests_run_apart(server, pipe, calls):
    bodies = [
        {"prompt": "four steps", "seed": 5, "size": "64x64", "num_inference_steps": 4},
        {"prompt": "three steps", "seed": 6, "size": "64x64", "num_inference_steps": 3},
    ]
    for body in bodies:
        body["scheduler"] = "euler"
    calls.clear()
    replies = _send_together(server.port, bodies)
    assert [r.status for r in replies] == [200, 200]
    assert sorted(calls) == [1, 1], calls
    for body, reply in zip(bodies, replies, strict=True):
        assert np.array_equal(
            decode_png(reply.json()["data"][0]["b64_json"]), _alone(pipe, body)[0]
        )


def test_batch_noise_gives_each_request_its_own_stream():
    noise = BatchNoise([(1, SeedNoise(7)), (2, SeedNoise(8))])
    shape = (3, 4, 8, 8)
    first, second = noise.initial(shape), noise.step(shape)
    seven, eight = SeedNoise(7), SeedNoise(8)
    want_first = np.concatenate([seven.initial((1, 4, 8, 8)), eight.initial((2, 4, 8, 8))])
    want_second = np.concatenate([seven.step((1, 4, 8, 8)), eight.step((2, 4, 8, 8))])
    assert np.array_equal(first, want_first) and np.array_equal(second, want_second)
    with pytest.raises(ValueError, match="noise for 2 rows asked of a batch of 3"):
        noise.initial((2, 4, 8, 8))


def test_batching_options_are_checked(tiny_built):
    from sdrt.cli import main

    assert main(["serve", str(tiny_built), "--max-batch", "0"]) == 2
    assert main(["serve", str(tiny_built), "--batch-wait-ms", "-1"]) == 2
