"""Domain errors: each kind of failure carries its own code and HTTP status.

Services raise these; the API turns them into ``{"error": {"code", "message"}}``
in one place (``registry.api.errors``).  Messages say what went wrong and what
to do about it.
"""

from __future__ import annotations

import math


class RegistryError(Exception):
    """Base class of every error a user can act on."""

    code = "internal_error"
    status = 500
    headers: dict[str, str] = {}  # extra response headers (e.g. Retry-After)

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidRequest(RegistryError):
    """The request itself is malformed or names something invalid."""

    code = "invalid_request"
    status = 400


class InvalidUpload(InvalidRequest):
    """An uploaded file is missing, empty or not what its field says it is."""

    code = "invalid_upload"


class Unauthorized(RegistryError):
    """No credentials where they are needed, or credentials that are not valid (answered with
    ``WWW-Authenticate: Bearer``)."""

    code = "unauthorized"
    status = 401


class Forbidden(RegistryError):
    """Valid credentials that do not allow this request (a token's scope is too narrow, a
    missing CSRF token)."""

    code = "forbidden"
    status = 403


class NotFound(RegistryError):
    code = "not_found"
    status = 404


class Conflict(RegistryError):
    code = "conflict"
    status = 409


class PayloadTooLarge(RegistryError):
    code = "payload_too_large"
    status = 413


class RateLimited(RegistryError):
    """A client sent more requests of a kind than its rate limit allows."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))
        self.headers = {"Retry-After": str(self.retry_after)}


class TimedOut(RegistryError):
    """The work took longer than its configured limit and was cancelled."""

    code = "timed_out"
    status = 504


class StorageError(RegistryError):
    """The blob store failed; nothing the client sent was wrong."""

    code = "storage_error"
    status = 503


class ConversionError(RegistryError):
    """Freezing a version failed for a reason the uploader can fix.

    Raised inside the converter; recorded as the version's ``status_message``
    rather than answered over HTTP.
    """

    code = "conversion_failed"
    status = 422
