"""The bounded JSON body every API write reads (its shape is checked by ``registry.api.schemas``)."""

from __future__ import annotations

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from registry.errors import InvalidRequest, PayloadTooLarge

MAX_JSON_BYTES = 1024 * 1024  # a JSON request body of the registry API (an alias, an op list, ...)

__all__ = ["MAX_JSON_BYTES", "json_body"]


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
