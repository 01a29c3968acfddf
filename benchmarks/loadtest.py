"""``sdrt loadtest URL``: drive an sdrt (or any OpenAI-style) images server and record
every request: status, latency, and whether the image that came back is the one asked for.

Closed loop: ``concurrency`` client threads each send one request at a time until
``requests`` have been sent or ``duration`` seconds have passed. Every request has its
own seed and prompt; an answer's PNG must decode to the asked size and carry that prompt
and seed in its parameters, else it counts as wrong. With ``check_folder`` the images are
also generated again locally with the same settings and compared pixel for pixel. A 429
is answered at once by the server; a client that gets one waits the Retry-After it names
before its next request (as OpenAI's client libraries do), unless ``retry_after`` is off,
when it sends the next one at once.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sdrt.errors import InputError

PATH = "/v1/images/generations"


@dataclass(frozen=True)
class LoadConfig:
    url: str
    concurrency: int = 4
    requests: int = 40
    duration: float | None = None  # seconds; None: until ``requests`` are sent
    size: str = "64x64"
    steps: int = 4
    guidance: float = 7.5
    scheduler: str | None = "euler"  # deterministic, so images can be checked
    api_key: str | None = None
    timeout: float = 120.0  # seconds a client waits for one answer
    check_folder: Path | None = None
    retry_after: bool = True  # after a 429, wait the seconds its Retry-After names


@dataclass(frozen=True)
class Outcome:
    index: int
    seed: int
    status: int  # 0: no answer (connection error or client timeout)
    started: float  # seconds after the run began
    seconds: float
    problem: str | None = None  # why an accepted answer is wrong, or the connection error
    replica: str | None = None
    b64: str | None = None  # the image, kept only when it is to be checked locally
    retry_after: float = 0.0  # a 429's Retry-After, in seconds


def parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise InputError(f"URL: expected http://HOST[:PORT], got {url!r}")
    return parts.hostname, parts.port or 80


def request_body(config: LoadConfig, index: int) -> dict:
    body = {
        "prompt": f"loadtest request {index}",
        "size": config.size,
        "num_inference_steps": config.steps,
        "guidance_scale": config.guidance,
        "seed": index,
    }
    if config.scheduler:
        body["scheduler"] = config.scheduler
    return body


def run_load(config: LoadConfig) -> tuple[list[Outcome], float]:
    """(every request's outcome in order, the run's wall seconds)."""
    host, port = parse_url(config.url)
    counter, outcomes, lock = iter(range(config.requests)), [], threading.Lock()
    start = time.perf_counter()
    stop_at = None if config.duration is None else start + config.duration

    def client():
        while stop_at is None or time.perf_counter() < stop_at:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            outcome = send_one(config, host, port, index, start)
            with lock:
                outcomes.append(outcome)
            if outcome.status == 429 and config.retry_after:
                wait = outcome.retry_after
                if stop_at is not None:
                    wait = min(wait, max(0.0, stop_at - time.perf_counter()))
                time.sleep(wait)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(config.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes, key=lambda o: o.index), time.perf_counter() - start


def send_one(config: LoadConfig, host: str, port: int, index: int, start: float) -> Outcome:
    body = request_body(config, index)
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    began = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=config.timeout)
    try:
        connection.request("POST", PATH, body=json.dumps(body).encode(), headers=headers)
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as e:
        return Outcome(index, index, 0, began - start, time.perf_counter() - began, repr(e))
    finally:
        connection.close()
    seconds = time.perf_counter() - began
    replica = response.getheader("x-sdrt-replica")
    problem, b64 = None, None
    if response.status == 200:
        problem, b64 = check_answer(data, body)
        b64 = b64 if config.check_folder is not None else None
    retry_after = _seconds(response.getheader("retry-after"))
    return Outcome(
        index, index, response.status, began - start, seconds, problem, replica, b64, retry_after
    )


def _seconds(header: str | None) -> float:
    try:
        return max(0.0, float(header)) if header else 0.0
    except ValueError:
        return 0.0


def check_answer(data: bytes, body: dict) -> tuple[str | None, str | None]:
    """(what is wrong with a 200's image or None, its base64 PNG)."""
    from PIL import Image

    try:
        b64 = json.loads(data)["data"][0]["b64_json"]
        image = Image.open(io.BytesIO(base64.b64decode(b64)))
        image.load()
    except (ValueError, KeyError, IndexError, TypeError, OSError) as e:
        return f"no image in the answer ({e})", None
    width, height = (int(v) for v in body["size"].split("x"))
    if image.size != (width, height):
        return f"expected a {width}x{height} image, got {image.size[0]}x{image.size[1]}", b64
    parameters = image.info.get("parameters", "")
    if (
        not parameters.startswith(body["prompt"] + "\n")
        or f"Seed: {body['seed']}," not in parameters
    ):
        return "the image carries another request's prompt or seed", b64
    return None, b64


def check_pixels(config: LoadConfig, outcomes: list[Outcome]) -> list[Outcome]:
    """Outcomes with ``problem`` set where the image differs from the local Pipeline's."""
    import numpy as np
    from PIL import Image

    from sdrt.pipeline import Pipeline

    pipe = Pipeline.load(config.check_folder)
    checked = []
    for outcome in outcomes:
        if outcome.b64 is not None and outcome.problem is None:
            body = request_body(config, outcome.index)
            width, height = (int(v) for v in body["size"].split("x"))
            want = pipe(
                body["prompt"],
                num_inference_steps=config.steps,
                guidance_scale=config.guidance,
                height=height,
                width=width,
                seed=outcome.seed,
                scheduler=config.scheduler,
            ).images[0]
            got = Image.open(io.BytesIO(base64.b64decode(outcome.b64))).convert("RGB")
            if not np.array_equal(np.asarray(got), np.asarray(want)):
                outcome = Outcome(
                    **{**outcome.__dict__, "problem": "pixels differ from the Pipeline's"}
                )
        checked.append(Outcome(**{**outcome.__dict__, "b64": None}))
    return checked
