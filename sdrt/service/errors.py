"""Errors as OpenAI's JSON error object: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from dataclasses import dataclass, field

# status -> OpenAI error type
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "server_error",
}


@dataclass(eq=False)  # not frozen: raising an exception sets its __traceback__
class ApiError(Exception):
    status: int
    message: str
    code: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None) -> ApiError:
    """400 naming the field: ``param`` defaults to the message's ``field:`` prefix."""
    if param is None:
        head, sep, _ = message.partition(":")
        param = head if sep and head.isidentifier() else None
    return ApiError(400, message, "invalid_value", param)


def too_large(message: str, param: str | None = None) -> ApiError:
    return ApiError(413, message, "payload_too_large", param)
