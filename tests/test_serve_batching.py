"""`sdrt serve --max-batch N` (sdrt/service/batching.py) against a real uvicorn server on
loopback, on the tiny model: concurrent compatible requests run as one call, and each still
gets the pixels the Pipeline makes for it alone (an ancestral scheduler too); incompatible
ones run apart. Which requests share a call is made certain, not left to their timing: a
"blocker" request holds the only worker until every request of the test is queued."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import ThreadServer, decode_png, generate, wait_for  # noqa: E402

from sdrt.noise import SeedNoise  # noqa: E402
from sdrt.service.batching import BatchNoise  # noqa: E402
from sdrt.service.config import ServeConfig  # noqa: E402
from sdrt.service.state import ServiceState  # noqa: E402

BLOCKER = {"prompt": "blocker", "seed": 0, "size": "64x64", "num_inference_steps": 2}
BLOCKER["scheduler"] = "euler"  # its step count batches it with none of the tests' requests
WAIT = 120.0  # s: a bound on every wait, never reached when the code is right


@pytest.fixture(scope="module")
def pipe(tiny_built):
    import sdrt

    return sdrt.Pipeline.load(tiny_built)


@pytest.fixture
def release(pipe, monkeypatch):
    """Set it to let the blocker request run (it waits for this before its generation)."""
    event, original = threading.Event(), pipe.generate

    def held(request, **keywords):
        if request.prompts[0] == BLOCKER["prompt"]:
            event.wait(WAIT)
        return original(request, **keywords)

    monkeypatch.setattr(pipe, "generate", held)
    yield event
    event.set()


@pytest.fixture
def calls(pipe, monkeypatch, release):
    """The number of images of every Pipeline.generate call, in order."""
    sizes, original, lock = [], pipe.generate, threading.Lock()

    def counting(request, **keywords):
        with lock:
            sizes.append(request.batch_size)
        return original(request, **keywords)

    monkeypatch.setattr(pipe, "generate", counting)
    return sizes


@pytest.fixture
def server(tiny_built, pipe):
    # no batch wait: the requests are all queued already when the worker gathers them
    config = ServeConfig(folder=tiny_built, max_batch=4, batch_wait_ms=0, max_queue=8)
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
        eta=body.get("eta", 0.0),
    ).images
    return [np.asarray(i) for i in images]


def _send_queued(server, release, bodies):
    """The blocker, then ``bodies`` at once once it holds the worker; the blocker is
    released when all of them wait in the queue. Their replies (not the blocker's)."""
    admission = server.state.admission
    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        blocker = pool.submit(generate, server.port, BLOCKER, timeout=WAIT)
        wait_for(lambda: admission.in_flight == 1, timeout=WAIT)
        replies = [pool.submit(generate, server.port, b, timeout=WAIT) for b in bodies]
        wait_for(lambda: admission.depth == len(bodies), timeout=WAIT)
        release.set()
        assert blocker.result(timeout=WAIT).status == 200
        return [reply.result(timeout=WAIT) for reply in replies]


@pytest.mark.parametrize("scheduler", ["euler", "euler_a"])
def test_concurrent_requests_share_a_call_and_keep_their_own_pixels(
    server, pipe, calls, release, scheduler
):
    common = {"size": "64x64", "num_inference_steps": 4, "scheduler": scheduler}
    bodies = [
        # each its own negative prompt (a request without one batches only with its like)
        {"prompt": "a red fox", "seed": 1, "negative_prompt": "", **common},
        {"prompt": "a blue cat", "seed": 2, "negative_prompt": "blur", **common},
        {"prompt": "a green owl", "seed": 3, "n": 2, "negative_prompt": "dark", **common},
    ]
    calls.clear()  # the warm-up is not counted
    replies = _send_queued(server, release, bodies)
    assert [r.status for r in replies] == [200, 200, 200], [r.body[:200] for r in replies]
    assert calls == [1, 4], calls  # the blocker, then 1 + 1 + 2 images in one call
    for body, reply in zip(bodies, replies, strict=True):
        got = [decode_png(d["b64_json"]) for d in reply.json()["data"]]
        want = _alone(pipe, body)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g, w)


@pytest.mark.parametrize(
    "differences",
    [
        ({"num_inference_steps": 4, "scheduler": "euler"}, {"num_inference_steps": 3}),
        ({"eta": 0.5}, {"eta": 0.0}),  # DDIM's eta is the scheduler's, not the rows'
    ],
)
def test_incompatible_requests_run_apart(server, pipe, calls, release, differences):
    bodies = [
        {"prompt": "first", "seed": 5, "size": "64x64", "num_inference_steps": 3},
        {"prompt": "second", "seed": 6, "size": "64x64", "num_inference_steps": 3},
    ]
    for body, difference in zip(bodies, differences, strict=True):
        body["scheduler"] = "ddim"
        body.update(difference)
    calls.clear()
    replies = _send_queued(server, release, bodies)
    assert [r.status for r in replies] == [200, 200]
    assert calls == [1, 1, 1], calls  # the blocker, then each alone
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
