"""Domain errors: each kind of failure carries its own code and HTTP status.

Services raise these; the API turns them into ``{"error": {"code", "message"}}``
in one place (``registry.http_errors``).  Messages say what went wrong and what
to do about it.
"""

from __future__ import annotations

import math


class RegistryError(Exception):
    """Base class of every error a user can act on."""

    code = "internal_error"
    status = 500
    headers: dict[str, str] = {}  # extra response headers (e.g. Retry-After)
    details: dict | None = None

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details  # what the answer carries besides the message (e.g. a gate's conditions)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


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


class RateLimitUnavailable(RegistryError):
    """The shared rate-limit count (``REGISTRY_RATELIMIT_STORAGE``, e.g. Redis) does not answer."""

    code = "rate_limit_unavailable"
    status = 503
    headers = {"Retry-After": "5"}


class TimedOut(RegistryError):
    """The work took longer than its configured limit and was cancelled."""

    code = "timed_out"
    status = 504


class StorageError(RegistryError):
    """The blob store failed; nothing the client sent was wrong."""

    code = "storage_error"
    status = 503


class InferenceUnavailable(RegistryError):
    """No inference worker could run the request: its worker died while running it (it was
    replaced) or none could be started.  Answered with ``Retry-After``."""

    code = "inference_unavailable"
    status = 503
    headers = {"Retry-After": "1"}


class DatabaseUnavailable(RegistryError):
    """The database cannot take the request now: it refuses writes (read-only, its disk is
    full or failing), is busy or cannot be reached.  Nothing the client sent was wrong."""

    code = "database_unavailable"
    status = 503
    headers = {"Retry-After": "30"}  # worth retrying shortly


# SQLite primary result codes (the low byte of an extended code) and PostgreSQL SQLSTATEs
# that mean the database, not the request, is at fault.
_SQLITE_FAULTS = {
    5: ("database_busy", "the database is busy ({detail}): another process holds its write lock"),
    6: ("database_busy", "the database is busy ({detail}): another process holds its write lock"),
    8: ("database_read_only", "the database refuses writes: it is read-only ({detail}); check that its file, "
                              "folder and disk are writable"),
    10: ("database_disk_error", "the database refuses writes: its disk failed a read or write ({detail}); the "
                                "disk may have gone read-only or be failing"),
    13: ("database_full", "the database refuses writes: its disk is full ({detail}); free space there"),
    14: ("database_unavailable", "the database cannot be opened ({detail}); check that its file and folder "
                                 "exist and are readable and writable"),
}
_POSTGRES_FAULTS = {
    "25006": ("database_read_only", "the database refuses writes: it is read-only ({detail}); it may be a "
                                    "standby or have default_transaction_read_only set"),
    "53100": ("database_full", "the database refuses writes: its disk is full ({detail})"),
    "53200": ("database_unavailable", "the database is out of memory ({detail})"),
    "53300": ("database_unavailable", "the database has no free connection ({detail})"),
    "57P01": ("database_unavailable", "the database is shutting down ({detail})"),
    "57P02": ("database_unavailable", "the database is shutting down ({detail})"),
    "57P03": ("database_unavailable", "the database is not accepting connections yet ({detail})"),
}


def database_fault(exc: BaseException) -> DatabaseUnavailable | None:
    """The :class:`DatabaseUnavailable` a database driver error (SQLAlchemy's ``DBAPIError``)
    stands for, or None when the error is not the database's fault (a bug: answered 500)."""
    orig = getattr(exc, "orig", None) or exc
    detail = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]
    sqlstate = getattr(orig, "sqlstate", None)  # psycopg
    sqlite_code = getattr(orig, "sqlite_errorcode", None)  # sqlite3
    found = None
    if sqlite_code is not None:
        found = _SQLITE_FAULTS.get(sqlite_code & 0xFF)
    elif sqlstate is not None:
        found = _POSTGRES_FAULTS.get(sqlstate) or (
            ("database_unavailable", "the database cannot be reached ({detail})") if sqlstate.startswith("08")
            else None)
    elif type(orig).__module__.startswith("psycopg") and type(orig).__name__ == "OperationalError":
        # no SQLSTATE: the connection could not be made or was lost
        found = ("database_unavailable", "the database cannot be reached ({detail})")
    if found is None:
        return None
    code, message = found
    return DatabaseUnavailable(message.format(detail=detail) + ". Nothing was changed: try again shortly.",
                               code=code)


class ConversionError(RegistryError):
    """Freezing a version failed for a reason the uploader can fix.

    Raised inside the converter; recorded as the version's ``status_message``
    rather than answered over HTTP.
    """

    code = "conversion_failed"
    status = 422


class ConverterSandboxError(RegistryError):
    """The converter child could not be confined as configured (``REGISTRY_CONVERT_USER``, a
    path its user cannot read): the operator's to fix, not the uploader's.  Raised inside the
    converter; recorded as the version's ``status_message``."""

    code = "converter_sandbox"
    status = 500
