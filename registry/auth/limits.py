"""Per-client rate limits on the expensive requests: pushes, and label / predict /
compare.

A limit such as ``30/minute`` lets a client make 30 requests in any minute (a
moving window, counted by the ``limits`` library as PyPI's warehouse does).  A
request over the limit is answered 429 with ``Retry-After`` (seconds until the
oldest request in the window leaves it).  Clients are told apart by
:func:`client_key`: the caller's API token when it sent one (set by
``registry.auth.access``), else the remote address.

The counts live in ``REGISTRY_RATELIMIT_STORAGE``: in each process's memory by
default (``memory://``), or in Redis (``redis://host:6379/0``) so that every
server process (``serve --gunicorn --processes N``, several label services)
shares one count per client.

Everything is enforced in one place, :meth:`RateLimits.enforce`, a
``before_request`` hook installed last by the app factory.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass

from flask import Flask, g, request
from limits import RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from registry.errors import InvalidRequest, RateLimited, RateLimitUnavailable

PUSH, LABEL = "push", "label"
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
          "d": 86400, "day": 86400}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+?)s?\s*$")


@dataclass(frozen=True)
class Rate:
    requests: int
    seconds: int

    def __str__(self) -> str:
        unit = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}.get(self.seconds, f"{self.seconds} s")
        return f"{self.requests}/{unit}"


def parse_rate(text: str | None, setting: str = "rate limit") -> Rate | None:
    """``"30/minute"`` -> Rate(30, 60); ``"off"``, ``"0"`` or empty -> None (no limit)."""
    value = (text or "").strip().lower()
    if value in ("", "off", "0", "none", "unlimited"):
        return None
    match = _RATE_RE.match(value)
    if not match or match.group(2) not in _UNITS or int(match.group(1)) <= 0:
        raise InvalidRequest(
            f"{setting}={text!r} is not a rate: write it as N/second, N/minute, N/hour or N/day "
            "(a whole number N, e.g. 30/minute), or off",
            code="bad_setting",
        )
    return Rate(int(match.group(1)), _UNITS[match.group(2)])


class Limiter:
    """One limit, counted per client key in the configured storage (shared when it is Redis)."""

    def __init__(self, rate: Rate, strategy: MovingWindowRateLimiter, kind: str, namespace: str) -> None:
        self.rate = rate
        self.kind = kind
        self.namespace = namespace
        self._item = RateLimitItemPerSecond(rate.requests, rate.seconds)
        self._strategy = strategy

    def take(self, key: str) -> float:
        """Count a request: 0 when it may go on, else the seconds until the window has room again."""
        try:
            if self._strategy.hit(self._item, self.namespace, self.kind, key):
                return 0.0
            reset = self._strategy.get_window_stats(self._item, self.namespace, self.kind, key).reset_time
        except Exception as exc:  # redis' own errors: the shared count cannot be reached
            raise RateLimitUnavailable(
                f"the rate-limit storage does not answer ({type(exc).__name__}: {exc}): check "
                "REGISTRY_RATELIMIT_STORAGE, or turn the limits off") from exc
        return max(0.001, reset - time.time())


def client_key() -> str:
    """Who is asking: the caller's token when it sent one (``registry.auth.access``), else the remote address."""
    caller = g.get("caller")
    if caller is not None and caller.token is not None:
        return f"token:{caller.token.id}"
    return f"address:{request.remote_addr or 'unknown'}"


def request_kind() -> str | None:
    """Which limit a request counts against, if any."""
    if request.method != "POST":
        return None
    if request.endpoint == "api.push_version":
        return PUSH
    if request.blueprint == "serving":  # :label, :predict, :compare, :classify...
        return LABEL
    return None


class RateLimits:
    def __init__(self, push: Rate | None, label: Rate | None, storage_url: str = "memory://",
                 registry_id: str = "") -> None:
        self.storage_url = storage_url or "memory://"
        # Processes of one registry (one database) share counts; other registries on the same Redis do not.
        namespace = "registry-rate-" + hashlib.sha256(registry_id.encode()).hexdigest()[:12]
        self.limiters: dict[str, Limiter] = {}
        if push or label:
            try:
                storage = storage_from_string(self.storage_url)
            except Exception as exc:
                raise InvalidRequest(f"REGISTRY_RATELIMIT_STORAGE={self.storage_url!r} cannot be used ({exc}): "
                                     "write memory:// or redis://HOST:6379/0", code="bad_setting") from exc
            strategy = MovingWindowRateLimiter(storage)
            self.limiters = {kind: Limiter(rate, strategy, kind, namespace) for kind, rate in ((PUSH, push), (LABEL, label))
                             if rate}

    @classmethod
    def from_settings(cls, settings) -> "RateLimits":
        return cls(parse_rate(settings.rate_limit_push, "REGISTRY_RATE_LIMIT_PUSH"),
                   parse_rate(settings.rate_limit_label, "REGISTRY_RATE_LIMIT_LABEL"),
                   settings.ratelimit_storage, settings.database_url)

    def enforce(self) -> None:
        if not self.limiters:  # no limit set (the default): nothing to look at
            return
        kind = request_kind()
        limiter = self.limiters.get(kind) if kind else None
        if limiter is None:
            return
        wait = limiter.take(client_key())
        if wait > 0:
            what = "pushes" if kind == PUSH else "label, predict and compare requests"
            setting = "REGISTRY_RATE_LIMIT_PUSH" if kind == PUSH else "REGISTRY_RATE_LIMIT_LABEL"
            raise RateLimited(
                f"too many {what}: the limit is {limiter.rate} per client ({setting}); "
                f"retry in {max(1, math.ceil(wait))} s",
                retry_after=wait,
            )


def install(app: Flask, settings) -> RateLimits:
    """Enforce the configured limits on every request of ``app``.  Install it after any
    access check (which identifies the caller) so that limits apply per token."""
    limits = RateLimits.from_settings(settings)
    app.extensions["rate_limits"] = limits
    app.before_request(limits.enforce)
    return limits
