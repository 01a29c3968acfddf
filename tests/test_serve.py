"""The HTTP service against a real uvicorn server on a free 127.0.0.1 port, on the tiny
model: images equal the Pipeline's, streaming, every error status, admission, timeouts
and cancellation, metrics, readiness, SIGTERM drain. Bounded in time and requests."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import (  # noqa: E402
    HOST,
    ThreadServer,
    call,
    decode_png,
    generate,
    metric,
    multipart,
    png_bytes,
    read_events,
    start_process,
    wait_for,
)

from sdrt.service.config import Limits, ServeConfig  # noqa: E402
from sdrt.service.state import ServiceState  # noqa: E402

KEY = "s3cret-key"
FAST = {"size": "64x64", "num_inference_steps": 4, "scheduler": "euler"}


@pytest.fixture(scope="module")
def pipe(tiny_built):
    import sdrt

    return sdrt.Pipeline.load(tiny_built)


@pytest.fixture(scope="module")
def server(tiny_built, pipe):
    config = ServeConfig(folder=tiny_built, max_queue=2, timeout=60)
    with ThreadServer(ServiceState(config, loader=lambda c: pipe)) as s:
        yield s.wait_ready()


@pytest.fixture(scope="module")
def strict(tiny_built, pipe):
    """An API key, a 1 s timeout, small limits, and the replica named in its answers."""
    limits = Limits(max_n=2, max_steps=200, max_body_bytes=4096, max_upload_bytes=20_000)
    config = ServeConfig(
        folder=tiny_built, api_key=KEY, timeout=1.0, limits=limits, expose_replica=True
    )
    with ThreadServer(ServiceState(config, loader=lambda c: pipe)) as s:
        yield s.wait_ready()


@pytest.fixture
def gate(pipe, monkeypatch):
    """Generations hold after their first step until the test sets the event, so what the
    test sees while they run does not depend on how fast the machine is."""
    opened, original = threading.Event(), pipe.generate

    def gated(request, **keywords):
        for progress in original(request, **keywords):
            opened.wait(120)
            yield progress

    monkeypatch.setattr(pipe, "generate", gated)
    yield opened
    opened.set()


def _pixels(pipe, prompt, **arguments):
    return [np.asarray(i) for i in pipe(prompt, **arguments).images]


# ------------------------------------------------------------------------- generations


def test_a_generation_equals_the_pipeline_s_image(server, pipe):
    body = {
        "prompt": "a red fox",
        "negative_prompt": "blur",
        "n": 2,
        "seed": 7,
        "guidance_scale": 6.0,
        **FAST,
    }
    reply = generate(server.port, body)
    assert reply.status == 200, reply.body
    data = reply.json()
    assert isinstance(data["created"], int) and [d["seed"] for d in data["data"]] == [7, 7]
    expected = _pixels(
        pipe,
        "a red fox",
        negative_prompt="blur",
        num_images_per_prompt=2,
        seed=7,
        guidance_scale=6.0,
        height=64,
        width=64,
        num_inference_steps=4,
        scheduler="euler",
    )
    for item, want in zip(data["data"], expected, strict=True):
        assert np.array_equal(decode_png(item["b64_json"]), want)


def test_eta_reaches_the_scheduler(server, pipe):
    body = {**FAST, "prompt": "a fox", "seed": 3, "scheduler": "tcd", "eta": 0.3}
    reply = generate(server.port, body)
    assert reply.status == 200, reply.body
    got = decode_png(reply.json()["data"][0]["b64_json"])
    settings = dict(seed=3, height=64, width=64, num_inference_steps=4, scheduler="tcd")
    assert np.array_equal(got, _pixels(pipe, "a fox", eta=0.3, **settings)[0])
    assert not np.array_equal(got, _pixels(pipe, "a fox", **settings)[0])  # eta mattered


def test_the_png_carries_its_parameters(server):
    import base64
    import io

    reply = generate(server.port, {"prompt": "a cat", "seed": 3, **FAST})
    png = Image.open(io.BytesIO(base64.b64decode(reply.json()["data"][0]["b64_json"])))
    assert png.info["parameters"].startswith(
        "a cat\nSteps: 4, Sampler: Euler, CFG scale: 7.5, Seed: 3"
    )


def test_streaming_yields_one_event_per_step_then_the_image(server, pipe):
    connection = http.client.HTTPConnection(HOST, server.port, timeout=60)
    connection.request(
        "POST",
        "/v1/images/generations",
        headers={"Content-Type": "application/json"},
        body=b'{"prompt": "a fox", "seed": 5, "stream": true, "size": "64x64", '
        b'"num_inference_steps": 5, "scheduler": "euler"}',
    )
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith(
        "text/event-stream"
    )
    events = read_events(response)
    connection.close()
    names = [name for name, _ in events]
    assert names == ["image_generation.progress"] * 5 + ["image_generation.completed"]
    assert [data["step"] for _, data in events[:5]] == [1, 2, 3, 4, 5]
    assert all(data["total_steps"] == 5 for _, data in events[:5])
    done = events[-1][1]
    assert done["type"] == "image_generation.completed" and done["size"] == "64x64"
    want = _pixels(
        pipe, "a fox", seed=5, height=64, width=64, num_inference_steps=5, scheduler="euler"
    )[0]
    assert np.array_equal(decode_png(done["b64_json"]), want)


def test_edits_img2img_and_inpainting_equal_the_pipeline_s(server, pipe):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    fields = {"prompt": "a fox", "seed": "2", "num_inference_steps": "5", "scheduler": "euler"}
    for files, extra, arguments in (
        ({"image": png_bytes(image)}, {"strength": "0.6"}, {"strength": 0.6}),
        (
            {"image": png_bytes(image), "mask": png_bytes(mask)},
            {},
            {"mask_image": mask, "strength": 1.0},
        ),
    ):
        body, content_type = multipart({**fields, **extra}, files)
        reply = call(server.port, "POST", "/v1/images/edits", body, {"Content-Type": content_type})
        assert reply.status == 200, reply.body
        want = _pixels(
            pipe,
            "a fox",
            image=image,
            seed=2,
            num_inference_steps=5,
            scheduler="euler",
            **arguments,
        )[0]
        assert np.array_equal(decode_png(reply.json()["data"][0]["b64_json"]), want)


# ------------------------------------------------------------------------------ errors


def _error(reply, status, param=None, code=None):
    assert reply.status == status, (reply.status, reply.body)
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error["message"]


@pytest.mark.parametrize(
    "body, param, message",
    [
        ({"prompt": "x", "size": "63x64"}, "size", "size: width: expected a multiple of 8"),
        (
            {"prompt": "x", "size": "1024x1024"},
            "size",
            "size: height: expected a size between 64 and 256",
        ),
        ({"prompt": "x", "size": "big"}, "size", "size: expected N or WxH pixels"),
        (
            {"prompt": "x", "num_inference_steps": 0},
            "num_inference_steps",
            "num_inference_steps: expected an integer >= 1, got 0",
        ),
        (
            {"prompt": "x", "num_inference_steps": 101},
            "num_inference_steps",
            "num_inference_steps: expected at most 100",
        ),
        (
            {"prompt": "x", "guidance_scale": -1},
            "guidance_scale",
            "guidance_scale: expected a number >= 0",
        ),
        ({"prompt": "x", "n": 5}, "n", "n: expected an integer from 1 to 4"),
        ({"prompt": "x", "seed": -3}, "seed", "seed: expected an integer >= 0, got -3"),
        ({"prompt": "x", "scheduler": "nope"}, "scheduler", "scheduler: unknown scheduler 'nope'"),
        ({"prompt": "x", "eta": -1}, "eta", "eta: expected a number >= 0, got -1"),
        ({"prompt": "x", "eta": "0.3"}, "eta", "eta: expected a finite number, got '0.3'"),
        (
            {"prompt": "x", "scheduler": "tcd", "eta": 1.5},
            "eta",
            "eta: TCDScheduler: eta must be in [0, 1]; got 1.5",
        ),
        (
            {"prompt": "x", "response_format": "url"},
            "response_format",
            "response_format: expected 'b64_json'",
        ),
        ({"prompt": 3}, "prompt", "prompt: expected a string, got 3"),
        ({"size": "64x64"}, "prompt", "prompt: required"),
        ({"prompt": "x", "colour": "red"}, "colour", "colour: unknown field"),
        ({"prompt": "x" * 2001}, "prompt", "prompt: expected at most 2000 characters"),
        ([1, 2], "body", "body: expected a JSON object, got list"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(server, body, param, message):
    assert _error(generate(server.port, body), 400, param, "invalid_value").startswith(message)


def test_other_client_errors_are_json_too(server):
    reply = call(
        server.port,
        "POST",
        "/v1/images/generations",
        b"{not json",
        {"Content-Type": "application/json"},
    )
    assert _error(reply, 400, "body").startswith("body: expected a JSON object, could not parse it")
    _error(call(server.port, "GET", "/v1/nothing"), 404, code="not_found")
    _error(call(server.port, "GET", "/v1/images/generations"), 405)
    body, content_type = multipart({"prompt": "x"}, {})
    reply = call(server.port, "POST", "/v1/images/edits", body, {"Content-Type": content_type})
    assert _error(reply, 400, "image") == "image: required, got none"
    body, content_type = multipart({"prompt": "x"}, {"image": b"not an image"})
    reply = call(server.port, "POST", "/v1/images/edits", body, {"Content-Type": content_type})
    message = _error(reply, 400, "image")
    assert message.startswith("image: expected a PNG, JPEG or WebP image")
    assert "0x" not in message and "BytesIO" not in message  # no object address leaks


def test_json_nested_too_deep_is_a_400_not_a_500(server):
    headers = {"Content-Type": "application/json"}
    too_deep = "body: expected JSON nested at most 32 levels deep, got deeper"
    deepest = b"[" * 100_000 + b"]" * 100_000  # past the parser's recursion limit
    reply = call(server.port, "POST", "/v1/images/generations", deepest, headers)
    assert _error(reply, 400, "body", "invalid_value") == too_deep
    nested = b'{"prompt": "x", "size": ' + b"[" * 40 + b"]" * 40 + b"}"
    reply = call(server.port, "POST", "/v1/images/generations", nested, headers)
    assert _error(reply, 400, "body", "invalid_value") == too_deep
    shallow = {"prompt": "x", "size": [[["64x64"]]]}  # within the depth: the field's own 400
    assert _error(generate(server.port, shallow), 400, "size").startswith("size: expected")


def test_bodies_and_images_over_the_limits_are_413(strict):
    auth = {"Authorization": f"Bearer {KEY}"}
    reply = generate(strict.port, {"prompt": "x" * 5000}, auth)
    assert _error(reply, 413, "body", "payload_too_large").startswith(
        "body: expected at most 4096 bytes"
    )
    noise = np.random.default_rng(0).integers(0, 256, (88, 88, 3), dtype=np.uint8)  # ~23 kB
    body, content_type = multipart({"prompt": "x"}, {"image": png_bytes(Image.fromarray(noise))})
    reply = call(
        strict.port, "POST", "/v1/images/edits", body, {**auth, "Content-Type": content_type}
    )
    assert _error(reply, 413, "image").startswith("image: expected an image of at most 20000 bytes")
    assert metric(strict.port, "sdrt_rejections_total", 'reason="too_large"') >= 2


def test_a_missing_or_wrong_key_is_401(strict):
    message = _error(generate(strict.port, {"prompt": "x", **FAST}), 401, code="invalid_api_key")
    assert message == "expected an 'Authorization: Bearer KEY' header, got none"
    reply = generate(strict.port, {"prompt": "x", **FAST}, {"Authorization": "Bearer wrong"})
    assert _error(reply, 401) == "the API key given is not valid"
    assert reply.headers["www-authenticate"] == "Bearer"
    reply = generate(strict.port, {"prompt": "x", **FAST}, {"Authorization": f"Bearer {KEY}"})
    assert reply.status == 200
    assert call(strict.port, "GET", "/readyz").status == 200  # probes need no key


PROBES = {"/healthz", "/readyz", "/metrics"}  # open to the orchestrator, no key


def test_every_route_but_the_probes_refuses_a_missing_or_wrong_key(strict):
    """Enumerated from the app, so that a route added later is held to the key too."""
    from fastapi.routing import APIRoute

    app = strict.server.config.app
    routes = sorted(
        (route.path, method)
        for route in app.routes
        if isinstance(route, APIRoute) and route.path not in PROBES
        for method in route.methods
    )
    assert {path for path, _ in routes} >= {"/v1/images/generations", "/v1/images/edits"}
    for path, method in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            reply = call(strict.port, method, path, b"", headers)
            assert reply.status == 401, (path, method, headers, reply.body)
            assert reply.json()["error"]["code"] == "invalid_api_key"
    for path in PROBES:
        assert call(strict.port, "GET", path).status == 200, path


def test_the_replica_is_named_only_when_the_deployer_asks(server, strict):
    auth = {"Authorization": f"Bearer {KEY}"}
    hidden = [call(server.port, "GET", "/readyz"), generate(server.port, {"prompt": "x", **FAST})]
    assert all(reply.status == 200 for reply in hidden)
    assert "replica" not in hidden[0].json()
    assert not any("x-sdrt-replica" in reply.headers for reply in hidden)
    shown = [
        call(strict.port, "GET", "/readyz"),
        generate(strict.port, {"prompt": "x", **FAST}, auth),
    ]
    assert shown[0].json()["replica"] == strict.state.replica
    assert all(reply.headers["x-sdrt-replica"] == strict.state.replica for reply in shown)


def test_a_timeout_is_504_and_the_work_stops_between_steps(strict, gate):
    auth = {"Authorization": f"Bearer {KEY}"}
    before = metric(strict.port, "sdrt_cancellations_total", 'reason="timeout"')
    steps_before = metric(strict.port, "sdrt_stage_seconds_count", 'stage="unet"')
    body = {"prompt": "slow", "size": "64x64", "num_inference_steps": 150}
    reply = generate(strict.port, body, auth)  # held after its first step: past the timeout
    assert "timeout of 1 s" in _error(reply, 504, code="timeout")
    assert metric(strict.port, "sdrt_cancellations_total", 'reason="timeout"') == before + 1
    gate.set()
    wait_for(lambda: metric(strict.port, "sdrt_in_flight") == 0, timeout=60)
    steps = metric(strict.port, "sdrt_stage_seconds_count", 'stage="unet"') - steps_before
    assert 1 <= steps <= 2, steps  # stopped at the step after the timeout, not at 150


def test_a_client_that_goes_away_cancels_its_generation(server):
    before = metric(server.port, "sdrt_cancellations_total", 'reason="disconnect"')
    connection = http.client.HTTPConnection(HOST, server.port, timeout=30)
    connection.request(
        "POST",
        "/v1/images/generations",
        headers={"Content-Type": "application/json"},
        body=b'{"prompt": "x", "stream": true, "size": "256x256", "num_inference_steps": 100}',
    )
    response = connection.getresponse()
    assert response.readline().startswith(b"event: image_generation.progress")
    connection.sock.close()  # gone mid-stream
    connection.close()
    wait_for(
        lambda: (
            metric(server.port, "sdrt_cancellations_total", 'reason="disconnect"') == before + 1
        ),
        60,
    )
    wait_for(lambda: metric(server.port, "sdrt_in_flight") == 0, timeout=60)


# ----------------------------------------------------------------- admission, metrics


def test_overload_gives_429s_past_the_queue_and_every_accepted_request_completes(
    server, pipe, gate
):
    """1 worker + 2 queue places (max_queue=2): with the worker held, exactly those 3 are
    accepted and every request after them is a 429."""
    body = {"prompt": "busy", "size": "64x64", "num_inference_steps": 6, "scheduler": "euler"}
    seeds = [100, 101, 102]
    with ThreadPoolExecutor(len(seeds)) as pool:
        accepted = [pool.submit(generate, server.port, {**body, "seed": seeds[0]})]
        wait_for(lambda: metric(server.port, "sdrt_in_flight") == 1, timeout=60)
        accepted += [pool.submit(generate, server.port, {**body, "seed": s}) for s in seeds[1:]]
        wait_for(lambda: metric(server.port, "sdrt_queue_depth") == 2, timeout=60)
        refused = [generate(server.port, {**body, "seed": 200 + i}) for i in range(4)]
        gate.set()
        replies = [future.result(timeout=120) for future in accepted]
    for reply in refused:
        assert _error(reply, 429, code="rate_limit_exceeded").startswith(
            "the server is busy: 2 requests are waiting"
        )
        assert int(reply.headers["retry-after"]) >= 1
    for seed, reply in zip(seeds, replies, strict=True):
        assert reply.status == 200, reply.body
        want = _pixels(
            pipe, "busy", seed=seed, height=64, width=64, num_inference_steps=6, scheduler="euler"
        )[0]
        assert np.array_equal(decode_png(reply.json()["data"][0]["b64_json"]), want)


def test_metrics_move_with_traffic(server):
    def sample():
        return {
            "ok": metric(server.port, "sdrt_requests_total", 'endpoint="generations",status="200"'),
            "bad": metric(
                server.port, "sdrt_requests_total", 'endpoint="generations",status="400"'
            ),
            "images": metric(server.port, "sdrt_images_total"),
            "unet": metric(server.port, "sdrt_stage_seconds_count", 'stage="unet"'),
            "e2e": metric(server.port, "sdrt_request_seconds_count", 'endpoint="generations"'),
        }

    before = sample()
    assert generate(server.port, {"prompt": "m", "n": 2, **FAST}).status == 200
    assert generate(server.port, {"prompt": "m", "n": 0}).status == 400
    after = sample()
    assert after["ok"] == before["ok"] + 1 and after["bad"] == before["bad"] + 1
    assert after["images"] == before["images"] + 2
    assert after["unet"] == before["unet"] + 4  # one U-Net call per step
    assert after["e2e"] == before["e2e"] + 2
    text = call(server.port, "GET", "/metrics").body.decode()
    for name in (
        "sdrt_queue_depth",
        "sdrt_in_flight",
        "sdrt_rejections_total",
        "sdrt_warmup_seconds",
    ):
        assert name in text


# ------------------------------------------------------------------- life of a replica


def test_readyz_is_503_while_loading(tiny_built, pipe):
    release = threading.Event()

    def loader(config):
        release.wait(30)
        return pipe

    state = ServiceState(ServeConfig(folder=tiny_built), loader=loader)
    with ThreadServer(state) as s:
        assert call(s.port, "GET", "/healthz").json()["status"] == "ok"
        _error(call(s.port, "GET", "/readyz"), 503, code="loading")
        reply = generate(s.port, {"prompt": "x", **FAST})
        assert _error(reply, 503, code="loading").startswith("the model is loading")
        assert reply.headers["retry-after"] == "5"
        release.set()
        s.wait_ready(timeout=30)
        assert state.warmup_seconds is not None  # ready means warmed up
        assert generate(s.port, {"prompt": "x", **FAST}).status == 200


def test_sigterm_drains_in_flight_requests_and_exits_0(tiny_built):
    process, port = start_process(tiny_built, "--grace", "30")
    try:
        wait_for(lambda: _ready(port), timeout=60, interval=0.2)
        body = {
            "prompt": "drain",
            "size": "256x256",
            "num_inference_steps": 60,
            "scheduler": "euler",
        }
        replies = []
        thread = threading.Thread(target=lambda: replies.append(generate(port, body, timeout=60)))
        thread.start()
        wait_for(lambda: metric(port, "sdrt_in_flight") == 1, timeout=10)
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: call(port, "GET", "/readyz").status == 503, timeout=30)
        assert _error(generate(port, {"prompt": "late"}), 503, code="draining")
        thread.join(timeout=60)
        assert replies and replies[0].status == 200, replies
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_stops_what_outlasts_the_grace_period_with_a_503_and_exits_0(tiny_built):
    process, port = start_process(tiny_built, "--grace", "1", "--max-steps", "500")
    try:
        wait_for(lambda: _ready(port), timeout=60, interval=0.2)
        # 500 steps at 256x256: 20 s on a quiet machine, far past the grace of 1 s
        body = {"prompt": "long", "size": "256x256", "num_inference_steps": 500}
        body["scheduler"] = "euler"
        replies = []
        thread = threading.Thread(target=lambda: replies.append(generate(port, body, timeout=120)))
        thread.start()
        wait_for(lambda: metric(port, "sdrt_in_flight") == 1, timeout=30)
        process.send_signal(signal.SIGTERM)
        thread.join(timeout=120)
        assert replies, "no answer"
        message = _error(replies[0], 503, code="draining")
        assert message.startswith("this server is shutting down and stopped the generation")
        assert "grace period of 1 s" in message
        assert process.wait(timeout=60) == 0, process.stdout.read().decode()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _ready(port) -> bool:
    try:
        return call(port, "GET", "/readyz", timeout=2).status == 200
    except OSError:
        return False


def test_import_sdrt_does_not_import_the_service():
    code = (
        "import sys, sdrt, sdrt.pipeline, sdrt.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette', "
        "'prometheus_client', 'ray') or m.startswith('sdrt.service.') and m != 'sdrt.service.config']; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_options_are_checked(tiny_built):
    from sdrt.cli import main

    assert main(["serve", str(tiny_built), "--timeout", "0"]) == 2
    assert main(["serve", str(tiny_built), "--max-n", "0"]) == 2
    assert main(["serve", str(tiny_built.parent / "nothing")]) == 2
