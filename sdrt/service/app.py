"""The FastAPI app: routes, auth, limits and errors; the work is in respond.py.

    POST /v1/images/generations   JSON (OpenAI Images API + diffusers' names; base64
                                  control images for ControlNet)
    POST /v1/images/edits         multipart: image (+ mask, control_image...), prompt, ...:
                                  img2img, inpainting
    GET  /healthz                 200 while the process is up
    GET  /readyz                  200 when loaded, warmed up and accepting; else 503
    GET  /metrics                 Prometheus text

Every error is OpenAI's JSON error object (errors.py) with its status; nothing a client
sends gives a 500.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdrt.service.auth import check_bearer
from sdrt.service.control import (
    CONTROL_FIELDS,
    base64_length,
    controlnet_count,
    field_name,
    form_control,
    json_control_images,
)
from sdrt.service.errors import ApiError, bad_request
from sdrt.service.metrics import CONTENT_TYPE
from sdrt.service.middleware import (
    BodyLimit,
    BodyTooLarge,
    ReplicaHeader,
    RequestMetrics,
    body_error,
)
from sdrt.service.params import (
    EDIT_FIELDS,
    GENERATION_FIELDS,
    check_fields,
    form_value,
    make_generation,
)
from sdrt.service.respond import respond
from sdrt.service.state import LOADING, READY, ServiceState
from sdrt.service.uploads import as_image, as_mask, read_upload

REPLICA_HEADER = "x-sdrt-replica"
MAX_FORM_FIELDS = 20
# Far more than any request needs (its values are numbers and strings), far less than the
# recursion limit that deeper JSON would reach in the parser or in repr() (a 500).
MAX_JSON_DEPTH = 32


def create_app(state: ServiceState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        if state.phase == LOADING and state.pipe is None:
            state.start_loading()
        yield

    app = FastAPI(title="sdrt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.sdrt = state
    _add_error_handlers(app, state)
    _add_routes(app, state)
    app.add_middleware(
        BodyLimit,
        limit=lambda path: _body_limit(state, path),
        rejected=state.metrics.rejections.labels("too_large").inc,
    )
    if state.config.expose_replica:  # opt-in: it names the host and process
        app.add_middleware(ReplicaHeader, name=REPLICA_HEADER, value=lambda: state.replica)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    return app


def _body_limit(state: ServiceState, path: str) -> int:
    limits = state.limits
    controls = controlnet_count(state.pipe)  # a control image per ControlNet at most
    images = controls * base64_length(limits.max_upload_bytes)  # files, or base64 text
    if path == "/v1/images/edits":  # image, mask and control images, plus the text fields
        return 2 * limits.max_upload_bytes + images + limits.max_body_bytes
    return limits.max_body_bytes + images


def _add_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "phase": state.phase}

    @app.get("/readyz")
    async def readyz():
        if state.phase != READY:
            state.check_accepting()
        replica = {"replica": state.replica} if state.config.expose_replica else {}
        return {
            "status": "ready",
            **replica,
            "load_seconds": state.load_seconds,
            "warmup_seconds": state.warmup_seconds,
        }

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/images/generations")
    async def generations(request: Request):
        deadline = _admit(state, request)
        body = check_fields(await _read_json(request), GENERATION_FIELDS)
        control_image = json_control_images(
            body.get("control_image"), state.pipe.manifest, state.limits
        )
        body = {**body, "control_image": control_image}
        generation = make_generation(state.pipe, body, state.limits)
        return await respond(state, request, generation, deadline)

    @app.post("/v1/images/edits")
    async def edits(request: Request):
        deadline = _admit(state, request)
        body, image, mask = await _read_edit(request, state)
        generation = make_generation(state.pipe, body, state.limits, image=image, mask=mask)
        return await respond(state, request, generation, deadline)


def _admit(state: ServiceState, request: Request) -> float | None:
    """Auth, then whether this replica accepts work; the request's deadline (loop time)."""
    try:
        check_bearer(request.headers.get("authorization"), state.config.api_key)
    except ApiError:
        state.metrics.rejections.labels("unauthorized").inc()
        raise
    state.check_accepting()
    if state.config.timeout is None:
        return None
    return asyncio.get_running_loop().time() + state.config.timeout


async def _read_json(request: Request):
    content_type = request.headers.get("content-type", "")
    if content_type and not content_type.startswith("application/json"):
        raise bad_request(
            f"body: expected Content-Type application/json, got {content_type!r}", param="body"
        )
    data = await request.body()
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(
            f"body: expected a JSON object, could not parse it ({e})", "body"
        ) from None
    except RecursionError:  # the parser's own limit, about 1000 levels
        raise _too_deep() from None
    if _nested_deeper(body, MAX_JSON_DEPTH):
        raise _too_deep()
    return body


def _too_deep() -> ApiError:
    return bad_request(
        f"body: expected JSON nested at most {MAX_JSON_DEPTH} levels deep, got deeper", "body"
    )


def _nested_deeper(value, depth: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``depth`` levels (iterative: a
    deep value must not exhaust the stack here either)."""
    level = [value]
    for _ in range(depth + 1):
        level = [
            item
            for container in level
            if isinstance(container, (list, dict))
            for item in (container.values() if isinstance(container, dict) else container)
        ]
        if not level:
            return False
    return True


async def _read_edit(request: Request, state: ServiceState):
    """(fields, image, mask) of a multipart edit request."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise bad_request(
            f"body: expected Content-Type multipart/form-data, got {content_type!r}", "body"
        )
    limits = state.limits
    controls = controlnet_count(state.pipe)
    form = await request.form(
        # image, mask, a control image per ControlNet, and one more, so that one too many
        # is counted by the control checks (a clear message) rather than by the parser
        max_files=3 + controls,
        max_fields=MAX_FORM_FIELDS + len(CONTROL_FIELDS) * controls,
        # a text part: a prompt (UTF-8), or a control image in base64
        max_part_size=max(
            4 * limits.max_prompt_chars + 64,
            base64_length(limits.max_upload_bytes) if controls else 0,
        ),
    )
    # control fields may come as name[] (read by form_control); the others as name
    names = {k: field_name(k) for k in form}
    fields = {names[k]: form_value(names[k], v) for k, v in form.items() if isinstance(v, str)}
    files = {names[k]: None for k in form if names[k] not in fields}
    body = check_fields({**fields, **files}, EDIT_FIELDS)
    body = {k: v for k, v in body.items() if k not in ("image", "mask", *CONTROL_FIELDS)}
    image = await read_upload(form, "image", limits, required=True)
    mask = await read_upload(form, "mask", limits, required=False)
    body.update(await form_control(form, state.pipe.manifest, limits, form_value))
    return body, as_image(image), None if mask is None else as_mask(mask)


def _add_error_handlers(app: FastAPI, state: ServiceState) -> None:
    def answer(error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        if error.status == 413:
            state.metrics.rejections.labels("too_large").inc()
        return answer(error)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request, error: BodyTooLarge):
        state.metrics.rejections.labels("too_large").inc()
        return answer(body_error(error.limit))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error: StarletteHTTPException):
        message = error.detail if error.status_code != 400 else f"body: {error.detail}"
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "invalid")
        return answer(ApiError(error.status_code, str(message), code))

    @app.exception_handler(Exception)
    async def internal_error(request, error: Exception):
        message = f"internal error: {type(error).__name__}: {error}"
        return answer(ApiError(500, message, "internal_error"))
