"""A checked generation -> admitted -> run -> answered, as JSON or as server-sent events.

Streaming (``stream: true``) follows OpenAI's image streaming events where they fit:

    event: image_generation.progress     one per denoising step (sdrt's own event)
    data: {"type": "image_generation.progress", "step": 1, "total_steps": 20, "timestep": 999.0, ...}

    event: image_generation.completed    one per image, the PNG inline
    data: {"type": "image_generation.completed", "b64_json": "...", "image_index": 0, ...}

    event: error                         instead of the rest, if it fails or times out
    data: {"type": "error", "error": {OpenAI's error object}}

OpenAI's ``image_generation.partial_image`` is not sent: a partial image would cost a VAE
decode per step.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi.responses import JSONResponse, Response, StreamingResponse

from sdrt.errors import InputError
from sdrt.service.admission import QueueFull
from sdrt.service.encode import encode_images
from sdrt.service.errors import ApiError, bad_request
from sdrt.service.jobs import Event, GenerationJob, next_event

CLIENT_GONE = 499  # nginx's "client closed request": recorded, never seen by a client


async def respond(state, request, generation, deadline: float | None):
    """Admit the generation (429 when the queue is full), then answer it."""
    loop = asyncio.get_running_loop()
    job = GenerationJob(state.pipe, generation.request, loop, state.metrics.observe_stage)
    try:
        state.admission.submit(job)
    except QueueFull as e:
        state.metrics.rejections.labels("queue_full").inc()
        raise ApiError(
            429,
            f"the server is busy: {e}; try again in {e.retry_after} s",
            "rate_limit_exceeded",
            headers={"Retry-After": str(e.retry_after)},
        ) from None
    if generation.stream:
        events = _stream(state, job, generation, deadline)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    return await _complete(state, request, job, generation, deadline)


async def _complete(state, request, job: GenerationJob, generation, deadline):
    final = asyncio.ensure_future(_final_event(job, deadline))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({final, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not final.done():
        final.cancel()
        _cancel(state, job, "disconnect")
        return Response(status_code=CLIENT_GONE)
    event = final.result()
    if event is None:
        _cancel(state, job, "timeout")
        raise _timeout(state)
    if event.kind != "done":
        raise _failure(state, event)
    images = event.progress.result.images
    encoded = await asyncio.to_thread(encode_images, state.pipe, generation, images)
    state.metrics.images.inc(len(encoded))
    data = [{"b64_json": b64, "seed": generation.seed} for b64 in encoded]
    return JSONResponse({"created": int(time.time()), "data": data})


async def _stream(state, job: GenerationJob, generation, deadline):
    finished = False
    try:
        while True:
            event = await next_event(job, deadline)
            if event is None:
                _cancel(state, job, "timeout")
                finished = True
                yield _sse("error", {"type": "error", **_timeout(state).body()})
                return
            if event.kind in ("progress", "done"):
                yield _sse("image_generation.progress", _progress(event))
            if event.kind == "progress":
                continue
            finished = True
            if event.kind != "done":
                yield _sse("error", {"type": "error", **_failure(state, event).body()})
                return
            for chunk in await _completed(state, generation, event):
                yield chunk
            return
    finally:
        if not finished:  # the client went away (the response task was cancelled)
            _cancel(state, job, "disconnect")


async def _completed(state, generation, event: Event) -> list[str]:
    images = event.progress.result.images
    encoded = await asyncio.to_thread(encode_images, state.pipe, generation, images)
    state.metrics.images.inc(len(encoded))
    request = generation.request
    created = int(time.time())
    return [
        _sse(
            "image_generation.completed",
            {
                "type": "image_generation.completed",
                "b64_json": b64,
                "created_at": created,
                "size": f"{request.width}x{request.height}",
                "output_format": "png",
                "image_index": index,
                "seed": generation.seed,
            },
        )
        for index, b64 in enumerate(encoded)
    ]


def _progress(event: Event) -> dict:
    progress = event.progress
    return {
        "type": "image_generation.progress",
        "step": progress.step,
        "total_steps": progress.total_steps,
        "timestep": progress.timestep,
        "created_at": int(time.time()),
    }


def _sse(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


async def _final_event(job: GenerationJob, deadline: float | None) -> Event | None:
    while True:
        event = await next_event(job, deadline)
        if event is None or event.kind != "progress":
            return event


async def _disconnected(request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _cancel(state, job: GenerationJob, reason: str) -> None:
    job.cancel(reason)
    state.metrics.cancellations.labels(reason).inc()


def _timeout(state) -> ApiError:
    return ApiError(
        504,
        f"the generation took longer than this server's timeout of {state.config.timeout:g} s "
        "and was stopped",
        "timeout",
    )


def _failure(state, event: Event) -> ApiError:
    if event.kind == "error" and isinstance(event.error, InputError):
        return bad_request(str(event.error))
    if event.kind == "cancelled" and event.reason == "shutdown":
        return ApiError(
            503,
            "this server is shutting down and stopped the generation when its grace period "
            f"of {state.config.grace:g} s ran out; try again on another replica",
            "draining",
        )
    detail = "cancelled" if event.error is None else f"{type(event.error).__name__}: {event.error}"
    return ApiError(500, f"the generation failed: {detail}", "generation_failed")
