"""Keyset pagination: page sizes and the opaque page tokens every listing hands out.

A listing asks for ``page_size + 1`` rows ordered by a unique key; the extra
row only tells whether there is a next page, whose token is the last key
shown, base64-encoded JSON.  The catalog, the audit log, the API and the
pages all read and write tokens through this module.
"""

from __future__ import annotations

import base64
import json

from registry.errors import InvalidRequest

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_INT64 = 2**63 - 1  # the largest integer either database compares (SQLite raises OverflowError past it)


def encode_token(value: object) -> str:
    """The token of the page that starts after ``value`` (the last key shown)."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_token(token: str) -> object:
    """The key ``token`` holds; InvalidRequest when it is not a token at all."""
    try:
        padded = token + "=" * (-len(token) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            "invalid page_token: pass the next_page_token of the previous page unchanged",
            code="invalid_page_token",
        ) from exc


def page_size(size: int | None, default: int = DEFAULT_PAGE_SIZE) -> int:
    """``size`` (``default`` when None), refused outside 1..MAX_PAGE_SIZE."""
    size = default if size is None else size
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page_size must be between 1 and {MAX_PAGE_SIZE}", code="invalid_page_size")
    return size


def checked_token(token: str | None) -> str | None:
    """A ``page_token`` query argument, refused (400) when it is no token or holds a number past what
    the database compares (a made-up token: the registry never hands one out)."""
    if token:
        try:
            value = decode_token(token)  # 400 for what is not a token at all
        except RecursionError:
            value = None
        if value is None or isinstance(value, int) and not -MAX_INT64 <= value <= MAX_INT64:
            raise InvalidRequest("invalid page_token: pass the next_page_token of the previous page unchanged",
                                 code="invalid_page_token")
    return token
