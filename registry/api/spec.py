"""Each /api/v1 operation declared once, beside its handler, and the OpenAPI 3.1 document built from those
declarations.

``@operation(...)`` names the operation's models (``registry.api.schemas``): it validates the query
arguments and JSON body with them before the handler runs (passing ``query=`` / ``body=``), dumps the
answer model the handler returns, and records what the document says.  ``openapi_document(app)`` walks
the app's routes, so a route without a declaration cannot go unnoticed (a test checks both ways), and
adds what every operation shares: its scope from ``registry.auth.access.RULES`` (401/403), the Host and
Origin checks, the JSON size limit and the 503 of a database that is away.

pydantic writes the schemas (JSON Schema 2020-12, which OpenAPI 3.1 uses as is); the few lines of glue
are ours so that a refused request keeps the registry's error body (``{"error": {"code", "message"}}``)
and its fix-it message instead of a library's 422 list.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, request
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from registry import __version__
from registry.api.parsing import MAX_JSON_BYTES, json_body
from registry.api.schemas import Error, Request
from registry.auth.access import RULES


@dataclass(frozen=True)
class Param:
    """A path parameter; ``schema`` is a type pydantic turns into its schema (a pattern, usually)."""

    name: str
    description: str = ""
    schema: Any = str


@dataclass(frozen=True)
class Json:
    """A JSON answer: its model, description and headers."""

    model: type[BaseModel]
    description: str
    headers: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    operation_id: str
    summary: str
    description: str
    path: tuple[Param, ...]
    query: type[Request] | None
    body: type[Request] | None
    form: type[Request] | None  # a multipart body's text fields (the handler reads it as a stream)
    answers: dict[int, Json | dict | str]


def operation(operation_id: str, *, summary: str = "", description: str = "", path: tuple[Param, ...] = (),
              query: type[Request] | None = None, body: type[Request] | None = None,
              form: type[Request] | None = None,
              answers: dict[int, Json | dict | str]):
    """Declare the operation the decorated handler serves (put it under the ``@bp.<method>`` route)."""
    declared = Operation(operation_id, summary, description, path, query, body, form, answers)

    def wrap(view):
        @functools.wraps(view)
        def handler(**kwargs):
            if query is not None:
                kwargs["query"] = validated(query, request.args.to_dict())
            if body is not None:
                kwargs["body"] = validated(body, json_body())
            return _dump(view(**kwargs))

        handler.operation = declared
        return handler
    return wrap


def validated(model: type[Request], data: object) -> Any:
    """``data`` as ``model``; what pydantic refuses becomes the model's InvalidRequest (a service check
    a field runs raises its own)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = first["loc"][0] if first["loc"] else None
        invalid = model.invalid_fields.get(name, model.invalid) if isinstance(name, str) else model.invalid
        raise invalid.error(name=name, value=first.get("input")) from None


def _dump(answer):
    if isinstance(answer, tuple):
        return (_dump(answer[0]), *answer[1:])
    if isinstance(answer, BaseModel):
        return answer.model_dump(mode="json", exclude_unset=True)
    return answer


# --- the document ---------------------------------------------------------------------------------

_WRITES = ("post", "put", "patch", "delete")
_WRONG_HOST = "a Host header naming a host this server does not answer to (REGISTRY_ALLOWED_HOSTS)"
_CROSS_SITE = ("a write from a page of another site without an Authorization: Bearer header (its Origin or "
               "Sec-Fetch-Site shows it)")
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds worth waiting before a retry"}}
_REF = "#/components/schemas/{model}"


class _Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema without a title on every property (the property's name says it)."""

    def field_title_should_be_set(self, schema) -> bool:
        return False


def _query_schema(schema: dict) -> dict:
    """A query argument's or form field's schema: it is absent rather than null."""
    members = [m for m in schema.pop("anyOf", []) if m != {"type": "null"}]
    if len(members) == 1:
        schema.update(members[0])
    elif members:
        schema["anyOf"] = members
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}


def openapi_document(app: Flask) -> dict:
    """The OpenAPI 3.1 document of the app's /api/v1 routes (built once per app)."""
    if "registry.openapi" not in app.extensions:
        app.extensions["registry.openapi"] = _document(app)
    return app.extensions["registry.openapi"]


def _operations(app: Flask):
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.endpoint.startswith("api."):
            continue
        declared = getattr(app.view_functions[rule.endpoint], "operation", None)
        if declared is None:
            raise RuntimeError(f"{rule.endpoint} has no @operation declaration")
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield path, method.lower(), rule.endpoint, declared


def _document(app: Flask) -> dict:
    operations = list(_operations(app))
    models = {Error}
    for *_, declared in operations:
        models.update(m for m in (declared.body,) if m is not None)  # query models become parameters
        models.update(a.model for a in declared.answers.values() if isinstance(a, Json))
    ordered = sorted(models, key=lambda m: m.__name__)
    keys, schemas = models_json_schema(
        [(m, "validation" if issubclass(m, Request) else "serialization") for m in ordered],
        ref_template=_REF, schema_generator=_Schemas)
    paths: dict[str, dict] = {}
    for path, method, endpoint, declared in operations:
        paths.setdefault(path, {})[method] = _operation(declared, endpoint, method, keys)
    return {
        "openapi": "3.1.0",
        "info": {"title": "TensorFlow model registry", "version": __version__,
                 "description": "Push TensorFlow checkpoints, get back verified frozen graphs by version."},
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {}), "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "An API token (`registry token create`). Scopes nest: admin ⊇ write ⊇ read. Reads "
                           "may be open without a token (REGISTRY_PUBLIC_READ); writes are open without one only "
                           "on an embedded registry that never had a token (REGISTRY_AUTH=auto)."}}},
    }


def _operation(declared: Operation, endpoint: str, method: str, keys: dict) -> dict:
    out: dict[str, Any] = {"operationId": declared.operation_id}
    if declared.summary:
        out["summary"] = declared.summary
    if declared.description:
        out["description"] = declared.description
    parameters = [{"name": p.name, "in": "path", "required": True,
                   "schema": TypeAdapter(p.schema).json_schema(schema_generator=_Schemas),
                   **({"description": p.description} if p.description else {})} for p in declared.path]
    if declared.query is not None:
        query = declared.query.model_json_schema(ref_template=_REF, schema_generator=_Schemas)
        for name, prop in query["properties"].items():
            description = prop.pop("description", None)
            parameters.append({"name": name, "in": "query", "schema": _query_schema(prop),
                               **({"description": description} if description else {})})
    if parameters:
        out["parameters"] = parameters
    if declared.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": keys[(declared.body, "validation")]}}}
    elif declared.form is not None:
        fields = declared.form.model_json_schema(ref_template=_REF, schema_generator=_Schemas)["properties"]
        schema = {"type": "object", "properties": {**getattr(declared.form, "file_fields", dict)(),
                                                   **{k: _query_schema(v) for k, v in fields.items()}}}
        out["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    responses: dict[str, Any] = {}
    for status, answer in declared.answers.items():
        if isinstance(answer, Json):
            responses[str(status)] = {"description": answer.description, "content": {"application/json": {
                "schema": keys[(answer.model, "serialization")]}}, **({"headers": answer.headers}
                                                                       if answer.headers else {})}
        elif isinstance(answer, str):
            responses[str(status)] = _error(answer)
        else:
            responses[str(status)] = answer
    out["responses"] = responses
    _secure(out, endpoint, method)
    _faults(out, method)
    return out


def _secure(operation: dict, endpoint: str, method: str) -> None:
    """The operation's security requirement and 401/403 answers, from registry.auth.access.RULES, and the
    answers of the checks every request passes first (Host; Origin for writes; JSON body size)."""
    responses = operation["responses"]
    bad = responses.get("400", {}).get("description")
    responses["400"] = _error(f"{bad}; or {_WRONG_HOST}" if bad else f"Refused: {_WRONG_HOST}")
    if "application/json" in operation.get("requestBody", {}).get("content", {}):
        responses["413"] = _error(f"The JSON body is larger than {MAX_JSON_BYTES} bytes")
    scope = RULES[endpoint]
    if scope is None:
        operation["security"] = []
        if method in _WRITES:
            responses["403"] = _error(f"Refused: {_CROSS_SITE}")
        return
    operation["security"] = [{"bearer": [scope]}]
    operation["description"] = (operation.get("description", "") + f" Needs a token with `{scope}` scope"
                                + (" (or none where reads are public)." if scope == "read" else ".")).strip()
    responses["401"] = _error("No token, or a malformed, unknown or revoked one (WWW-Authenticate: Bearer)")
    responses["403"] = _error(f"The token's scope is narrower than {scope}, or a cookie-authenticated "
                              "request without its CSRF token" + (f", or {_CROSS_SITE}" if method in _WRITES else ""))


def _faults(operation: dict, method: str) -> None:
    """The 503 every operation can answer when the database (or, for a push, the blob storage) cannot do
    its part: nothing was changed and a retry later may succeed."""
    if method in _WRITES:
        what = ("The database refuses writes (read-only, its disk full or failing), is busy or cannot be "
                "reached" + ("; or the blob storage is full, read-only or unreachable"
                             if "multipart/form-data" in operation.get("requestBody", {}).get("content", {}) else ""))
    else:
        what = "The database cannot be reached or opened"
    operation["responses"].setdefault("503", {**_error(f"{what}; nothing was changed"), "headers": _RETRY_AFTER})


def blob_answers(description: str, mimetype: str) -> dict[int, dict | str]:
    """The answers of a download: the bytes (or a range of them), 304, and the errors."""
    headers = {
        "ETag": {"schema": {"type": "string"}, "description": "The blob's sha256, quoted"},
        "Content-Length": {"schema": {"type": "integer"}},
        "Content-Disposition": {"schema": {"type": "string"}},
        "Accept-Ranges": {"schema": {"type": "string"}},
    }
    content = {mimetype: {"schema": {"type": "string", "format": "binary"}}}
    return {
        200: {"description": description, "headers": headers, "content": content},
        206: {"description": "The requested byte range", "headers": headers, "content": content},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        404: "Unknown model, version, alias or file",
        416: "The range is not satisfiable",
    }


def text_answer(description: str) -> dict:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


__all__ = ["Json", "Param", "blob_answers", "openapi_document", "operation", "text_answer", "validated"]
