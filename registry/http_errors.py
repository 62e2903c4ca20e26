"""HTTP error rendering for the whole app: ``{"error": {"code", "message"}}`` for API clients, an
error page for browsers on the pages, answered in one place from the domain errors of
``registry.errors`` (the label service keeps TF Serving's own shape, see ``registry.serving.rest``)."""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, render_template, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from registry.errors import RegistryError, database_fault

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 30
# the label service's paths (registry.serving.rest), named by its 404s
SERVING_PATHS = "/v1/models/NAME[/versions/N|/labels/L][/metadata|:predict|:classify|:regress|:label|:compare]"


def wants_json() -> bool:
    """API clients get JSON; browsers on the pages get an HTML page (where there are pages: a label
    service alone has none)."""
    return (request.path.startswith(("/api/", "/v1/")) or request.accept_mimetypes.best == "application/json"
            or "web" not in current_app.blueprints)


def error_response(status: int, code: str, message: str, details: dict | None = None):
    if not wants_json():
        titles = {404: "Not found", 400: "That did not work", 409: "Not possible right now", 413: "Too large",
                  401: "Sign in needed", 403: "Not allowed", 429: "Too many requests",
                  503: "Unavailable right now"}
        page = render_template("error.html", title=titles.get(status, "Something went wrong"), message=message)
        return page, status
    response = jsonify({"error": {"code": code, "message": message, **({"details": details} if details else {})}})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(RegistryError)
    def _registry_error(exc: RegistryError):
        response = app.make_response(error_response(exc.status, exc.code, exc.message, exc.details))
        response.headers.update(exc.headers)
        if exc.status == 503 and "Retry-After" not in response.headers:
            # the database or blob store is away: worth retrying shortly
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError):
        """The database's own faults (read-only, disk full, unreachable) are 503s worth retrying; the
        rest are bugs."""
        fault = database_fault(exc)
        if fault is None:
            return _unexpected(exc)
        log.warning("database fault on %s %s: %s", request.method, request.path, fault.message)
        if request.blueprint == "serving":  # TF Serving's error shape under /v1
            response = jsonify({"error": fault.message})
            response.status_code = fault.status
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        return _registry_error(fault)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return error_response(
            413, "payload_too_large",
            f"the upload is larger than the limit of {limit} bytes (REGISTRY_MAX_UPLOAD_BYTES)",
        )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if isinstance(exc, (NotFound, MethodNotAllowed)) and request.url_rule is None:
            unrouted = _unrouted(app, exc)
            if unrouted is not None:
                return unrouted
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "the registry failed unexpectedly; see the server log")


def _unrouted(app: Flask, exc: NotFound | MethodNotAllowed):
    """A path (or method) no route answers, under /api/ or /v1/: in that API's own error shape, saying
    what does exist; elsewhere the pages' 404 (HTML for browsers), or None (Werkzeug's own answer)."""
    path, method = request.path, request.method
    allowed = sorted(m for m in getattr(exc, "valid_methods", None) or [] if m not in ("HEAD", "OPTIONS"))
    if path.startswith("/v1/") or path == "/v1":  # TF Serving's shape: {"error": "..."}
        if isinstance(exc, MethodNotAllowed):
            message = f"{method} is not allowed on {path}: use {' or '.join(allowed)}"
        else:
            message = f"no such path {path}: use GET /v1/models, or {SERVING_PATHS}"
        response = jsonify({"error": message})
    elif path.startswith("/api/") or path == "/api":
        if "api" not in app.blueprints:  # a label service alone
            message = f"no such path {path}: this server is a label service alone; use {SERVING_PATHS}"
            code = "not_found"
        elif isinstance(exc, MethodNotAllowed):
            message = f"{method} is not allowed on {path}: use {' or '.join(allowed)} (see /api/v1/openapi.json)"
            code = "method_not_allowed"
        else:
            message = f"no such API path {path}: see /api/v1/openapi.json for the paths there are"
            code = "not_found"
        response = jsonify({"error": {"code": code, "message": message}})
    elif isinstance(exc, NotFound):  # a page (HTML for browsers)
        return error_response(404, "not_found", f"there is no page at {path}")
    else:
        return None
    response.status_code = exc.code
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    return response

