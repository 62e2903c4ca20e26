"""Per-client rate limits on the expensive requests: pushes, and label / predict /
compare.

One token bucket per client and kind of request, refilled continuously: a limit
of ``30/minute`` lets a client burst 30 requests, then one every 2 seconds.  A
request over the limit is answered 429 with ``Retry-After`` (seconds until a
token is back).  Clients are told apart by :func:`client_key`: the
caller's API token when it sent one (set by ``registry.access``), else the
remote address.  Buckets live in the process: with several server processes
(``serve --gunicorn --processes N``, several label services) each enforces the
limit on its own, so a client may get up to N times the rate in all.

Everything is enforced in one place, :meth:`RateLimits.enforce`, a
``before_request`` hook installed last by the app factory.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass

from flask import Flask, g, request

from registry.errors import InvalidRequest, RateLimited

PUSH, LABEL = "push", "label"
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
          "d": 86400, "day": 86400}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+?)s?\s*$")
_MAX_IDLE_BUCKETS = 10_000


@dataclass(frozen=True)
class Rate:
    requests: float
    seconds: float

    def __str__(self) -> str:
        unit = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}.get(int(self.seconds), f"{self.seconds:g} s")
        return f"{self.requests:g}/{unit}"


def parse_rate(text: str | None, setting: str = "rate limit") -> Rate | None:
    """``"30/minute"`` -> Rate(30, 60); ``"off"``, ``"0"`` or empty -> None (no limit)."""
    value = (text or "").strip().lower()
    if value in ("", "off", "0", "none", "unlimited"):
        return None
    match = _RATE_RE.match(value)
    if not match or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise InvalidRequest(
            f"{setting}={text!r} is not a rate: write it as N/second, N/minute, N/hour or N/day "
            "(e.g. 30/minute), or off",
            code="bad_setting",
        )
    return Rate(float(match.group(1)), float(_UNITS[match.group(2)]))


class TokenBucketLimiter:
    """Token buckets keyed by client; thread-safe, memory bounded by pruning full buckets."""

    def __init__(self, rate: Rate, clock=time.monotonic) -> None:
        self.rate = rate
        self.capacity = rate.requests
        self.refill_per_second = rate.requests / rate.seconds
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take a token: 0 when the request may go on, else the seconds until a token is back."""
        with self._lock:
            now = self._clock()
            tokens, when = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - when) * self.refill_per_second)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                if len(self._buckets) > _MAX_IDLE_BUCKETS:
                    self._prune(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.refill_per_second

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, when) in self._buckets.items()
                if tokens + (now - when) * self.refill_per_second >= self.capacity]
        for key in full:
            del self._buckets[key]


def client_key() -> str:
    """Who is asking: the caller's token when it sent one (``registry.access``), else the remote address."""
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
    def __init__(self, push: Rate | None, label: Rate | None) -> None:
        self.limiters = {kind: TokenBucketLimiter(rate) for kind, rate in ((PUSH, push), (LABEL, label)) if rate}

    @classmethod
    def from_settings(cls, settings) -> "RateLimits":
        return cls(parse_rate(settings.rate_limit_push, "REGISTRY_RATE_LIMIT_PUSH"),
                   parse_rate(settings.rate_limit_label, "REGISTRY_RATE_LIMIT_LABEL"))

    def enforce(self) -> None:
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
