"""Bearer tokens: ``Authorization: Bearer KEY`` compared in constant time."""

from __future__ import annotations

import hmac

from sdrt.service.errors import ApiError


def check_bearer(authorization: str | None, api_key: str | None) -> None:
    """Nothing when no key is set or the header carries it; else 401."""
    if api_key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("expected an 'Authorization: Bearer KEY' header, got none")
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise _unauthorized("the API key given is not valid")
    return


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
