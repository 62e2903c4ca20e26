"""Reading the parts of an API request every endpoint shares: whole-number and page-token
query arguments, and a bounded JSON body."""

from __future__ import annotations

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from registry.errors import InvalidRequest, PayloadTooLarge
from registry.pagination import MAX_INT64, checked_token

MAX_JSON_BYTES = 1024 * 1024  # a JSON request body of the registry API (an alias, an op list, ...)

__all__ = ["MAX_INT64", "MAX_JSON_BYTES", "int_arg", "json_body", "page_token_arg"]


def int_arg(name: str) -> int | None:
    """The query argument ``name`` as a whole number (None when absent; 400 when not a number)."""
    value = request.args.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be a whole number, not {value!r}", code=f"invalid_{name}") from exc


def page_token_arg() -> str | None:
    """The ``page_token`` query argument, refused when it is not one the registry handed out."""
    return checked_token(request.args.get("page_token"))


def json_body():
    """The request's JSON body (None when it is not JSON), within MAX_JSON_BYTES (413 beyond) and
    refused with a 400 when nested deeper than the JSON parser recurses."""
    request.max_content_length = MAX_JSON_BYTES  # a body sent without a length stops there too
    try:
        return request.get_json(silent=True)
    except RequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"the JSON body is larger than {MAX_JSON_BYTES} bytes: send only the fields "
                              "the API documentation shows", code="payload_too_large") from exc
    except RecursionError as exc:
        raise InvalidRequest("the JSON body is nested too deeply: send a flat object as the API "
                             "documentation shows", code="invalid_json") from exc
