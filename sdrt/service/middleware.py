"""Pure ASGI middleware: request bodies held to a limit (413), and each answer counted
in the metrics (status, end-to-end time to the last byte, streaming included)."""

from __future__ import annotations

import json
import time

from sdrt.service.errors import ApiError, too_large

ENDPOINTS = {
    "/v1/images/generations": "generations",
    "/v1/images/edits": "edits",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
}


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


class BodyLimit:
    """Refuse a body over ``limit(path)`` bytes: at once by its Content-Length, or as soon
    as the bytes read pass it (chunked uploads), which the app turns into 413."""

    def __init__(self, app, limit, rejected=None):
        self.app = app
        self.limit = limit
        self.rejected = rejected  # called for each body refused by its Content-Length

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            if self.rejected is not None:
                self.rejected()
            return await send_error(send, body_error(limit, int(length)))
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def body_error(limit: int, size: int | None = None) -> ApiError:
    got = "more" if size is None else f"{size} bytes"
    return too_large(
        f"body: expected at most {limit} bytes (this server's limit), got {got}", "body"
    )


async def send_error(send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Count every answer by endpoint and status; time it until its last byte is sent."""

    def __init__(self, app, metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = ENDPOINTS.get(scope["path"], "other")
        start = time.perf_counter()
        status = 500

        async def counted_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        finally:
            if endpoint != "metrics":
                self.metrics.observe_request(endpoint, status, time.perf_counter() - start)


class ReplicaHeader:
    """Name the replica that answered in a response header (``value()`` at each answer)."""

    def __init__(self, app, name: str, value):
        self.app = app
        self.name = name.encode()
        self.value = value

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named_send(message):
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (self.name, self.value().encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, named_send)
