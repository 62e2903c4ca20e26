"""The OpenAPI 3.1 description of /api/v1.  Tests check it against the routes
the app really has and validate real responses against these schemas.

Over 400 lines because it is the document itself, written out by hand: one
schema per request and answer shape.
"""

from __future__ import annotations

import re
from functools import cache

from registry import __version__
from registry.api.parsing import MAX_JSON_BYTES
from registry.auth.access import RULES

_nullable_str = {"type": ["string", "null"]}
_nullable_int = {"type": ["integer", "null"]}
_str_list_or_null = {"type": ["array", "null"], "items": {"type": "string"}}
_datetime = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


# Writes on one model take turns (a row lock); should a race still surface, it is this 409, never a 500.
_CONCURRENT = "The model changed under a concurrent request (concurrent_change): look again and retry"


_NAME = {"name": "name", "in": "path", "required": True, "description": "Model name",
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"}}
_REF = {"name": "ref", "in": "path", "required": True,
        "description": "A version number, `latest` (newest ready version) or an alias",
        "schema": {"type": "string"}}
_ALIAS = {"name": "alias", "in": "path", "required": True, "schema": {"type": "string"}}
_NEW_ALIAS = {"name": "alias", "in": "path", "required": True,
              "description": "1-64 letters, digits, '_', '-' or '.', starting with a letter; not 'latest'",
              "schema": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_.-]{0,63}$"}}
_PAGE = [
    {"name": "page_size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
    {"name": "page_token", "in": "query", "schema": {"type": "string"},
     "description": "The next_page_token of the previous page"},
]

_TOKEN_SCOPE = {"type": "string", "enum": ["read", "write", "admin"]}

_SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "Model": {
        "type": "object",
        "required": ["name", "description", "version_count", "latest_version", "last_version", "aliases",
                     "created_at", "updated_at"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "version_count": {"type": "integer"},
            "latest_version": {**_nullable_int, "description": "Newest ready version"},
            "last_version": {"type": "integer", "description": "Highest version number handed out"},
            "aliases": {"type": "object", "additionalProperties": {"type": "integer"}},
            "allowed_ops": {"type": "array", "items": {"type": "string"},
                            "description": "Ops an admin allowed for this model's graphs despite the op scan"},
            "created_at": _datetime,
            "updated_at": _datetime,
        },
    },
    "AllowedOps": {
        "type": "object", "required": ["model", "ops", "last_change"],
        "properties": {
            "model": {"type": "string"},
            "ops": {"type": "array", "items": {"type": "string"}},
            "last_change": {"type": ["object", "null"], "description": "The latest change, from the audit log",
                            "properties": {"actor": {"type": "string"}, "at": _datetime,
                                           "reason": {"type": "string"}}},
        },
    },
    "AllowedOpsRequest": {
        "type": "object", "required": ["ops"], "additionalProperties": False,
        "properties": {
            "ops": {"type": "array", "maxItems": 100,
                    "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"},
                    "description": "Op type names exactly as the safety report lists them; [] clears the list"},
            "reason": {"type": "string", "description": "Why these ops are safe here (required unless clearing)"},
        },
    },
    "InputNode": {
        "type": "object", "required": ["name", "dtype", "shape", "optional"],
        "properties": {
            "name": {"type": "string"},
            "dtype": {"type": "string"},
            "shape": {"type": ["array", "null"], "items": {"type": ["integer", "null"]}},
            "optional": {"type": "boolean", "description": "PlaceholderWithDefault: feeding it is optional"},
        },
    },
    "File": {
        "type": "object", "required": ["role", "filename", "sha256", "size"],
        "properties": {
            "role": {"type": "string", "enum": ["meta", "index", "data", "graph", "frozen", "labels",
                                                            "saved_model", "saved_model_src", "keras"]},
            "filename": {"type": "string"}, "sha256": {"type": "string"}, "size": {"type": "integer"},
        },
    },
    "Version": {
        "type": "object",
        "required": ["model", "version", "status", "status_message", "source", "output_nodes", "input_nodes",
                     "frozen", "tensorflow_version", "created_at", "files", "aliases"],
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "status": {"type": "string", "enum": ["queued", "converting", "ready", "failed"]},
            "status_message": {"type": "string"},
            "source": {"type": "string",
                       "enum": ["checkpoint+meta", "checkpoint+graph", "frozen", "saved_model", "keras"]},
            "description": {"type": "string"},
            "aliases": {"type": "array", "items": {"type": "string"}},
            "output_nodes": _str_list_or_null,
            "output_nodes_detected": {"type": ["boolean", "null"]},
            "requested_output_nodes": _str_list_or_null,
            "input_nodes": {"type": ["array", "null"], "items": _ref("InputNode")},
            "preprocessing": _ref("Preprocessing"),
            "frozen": {"type": ["object", "null"], "required": ["sha256", "size"],
                       "properties": {"sha256": {"type": "string"}, "size": {"type": "integer"}}},
            "tensorflow_version": _nullable_str,
            "verification": {"type": ["object", "null"], "properties": {
                "status": {"type": "string", "enum": ["passed", "skipped", "ran"]},
                "max_abs_diff": {"type": ["number", "null"]},
                "tolerance": {"type": "number"}}},
            "safety": {"type": ["object", "null"], "properties": {
                "op_histogram": {"type": "object", "additionalProperties": {"type": "integer"}},
                "flags": {"type": "array", "items": {"type": "object", "properties": {
                    "op": {"type": "string"},
                    "category": {"type": "string", "enum": ["reads_files", "writes_files", "network",
                                                            "calls_python", "not_allowlisted"]},
                    "count": {"type": "integer"}, "nodes": {"type": "array", "items": {"type": "string"}},
                    "allowed": {"type": "boolean", "description": "On the model's op allowlist"}}}},
                "flagged": {"type": "boolean",
                            "description": "Some flagged op is not on the model's allowlist: never run"},
                "scan_flagged": {"type": "boolean", "description": "The op scan alone flagged something"},
                "allowed_ops": {"type": "array", "items": {"type": "string"}},
                "upload_flags": {"type": "array"}}},
            "refusal": {**_nullable_str,
                        "description": "Why the label service and the export refuse this ready version (null: "
                                       "they do not)"},
            "conversion": {"type": ["object", "null"]},
            "files": {"type": "array", "items": _ref("File")},
            "agreement_with_previous": {
                "type": ["object", "null"],
                "description": "Top-1 agreement with the version before, from the last comparison of the two",
                "properties": {"version": {"type": "integer"}, "top1_agreement": {"type": "number"},
                               "images": {"type": "integer"}}},
            "created_at": _datetime,
            "updated_at": _datetime,
            "ready_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Preprocessing": {
        "type": "object",
        "description": "label_image.py settings: resize to height x width, subtract mean, divide by std",
        "properties": {
            "input_height": {"type": "integer", "minimum": 1, "maximum": 8192},
            "input_width": {"type": "integer", "minimum": 1, "maximum": 8192},
            "input_mean": {"type": "number"},
            "input_std": {"type": "number"},
        },
        "additionalProperties": False,
    },
    "VersionUpdate": {
        "type": "object", "minProperties": 1, "additionalProperties": False,
        "properties": {"preprocessing": _ref("Preprocessing"), "description": {"type": "string"}},
    },
    "ModelList": {
        "type": "object", "required": ["models", "next_page_token"],
        "properties": {"models": {"type": "array", "items": _ref("Model")}, "next_page_token": _nullable_str},
    },
    "VersionList": {
        "type": "object", "required": ["versions", "next_page_token"],
        "properties": {"versions": {"type": "array", "items": _ref("Version")}, "next_page_token": _nullable_str},
    },
    "Token": {
        "type": "object",
        "required": ["id", "name", "scope", "prefix", "created_by", "created_at", "last_used_at", "revoked_at",
                     "active"],
        "properties": {
            "id": {"type": "integer"}, "name": {"type": "string"}, "scope": _TOKEN_SCOPE,
            "prefix": {"type": "string", "description": "The token's public beginning (rgt_xxxxxxxx)"},
            "created_by": {"type": "string"}, "created_at": _datetime,
            "last_used_at": {"type": ["string", "null"], "format": "date-time"},
            "revoked_at": {"type": ["string", "null"], "format": "date-time"},
            "active": {"type": "boolean"},
            "token": {"type": "string", "description": "The token itself: only in the answer to its creation"},
        },
    },
    "TokenList": {"type": "object", "required": ["tokens"],
                  "properties": {"tokens": {"type": "array", "items": _ref("Token")}}},
    "TokenRequest": {"type": "object", "required": ["name"], "additionalProperties": False,
                     "properties": {"name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"},
                                    "scope": {**_TOKEN_SCOPE, "default": "read"}}},
    "AuditEvent": {
        "type": "object",
        "required": ["id", "created_at", "actor", "token_id", "action", "target", "details", "remote_addr"],
        "properties": {
            "id": {"type": "integer"}, "created_at": _datetime,
            "actor": {"type": "string", "description": "Token name, or anonymous, system, cli"},
            "token_id": _nullable_int,
            "action": {"type": "string", "description": "version.push, version.update, version.delete, "
                                                        "model.delete, model.allowed_ops, model.serving, alias.set, "
                                                        "alias.delete, token.create, token.revoke, ..."},
            "target": {"type": "string"}, "details": {"type": ["object", "null"]}, "remote_addr": _nullable_str,
        },
    },
    "AuditPage": {
        "type": "object", "required": ["events", "next_page_token"],
        "properties": {"events": {"type": "array", "items": _ref("AuditEvent")}, "next_page_token": _nullable_str},
    },
    "DeletedVersion": {
        "type": "object", "required": ["model", "version", "status", "aliases_removed", "job_cancelled"],
        "properties": {
            "model": {"type": "string"}, "version": {"type": "integer"},
            "status": {"type": "string", "enum": ["queued", "converting", "ready", "failed"],
                       "description": "The status it had when deleted"},
            "aliases_removed": {"type": "array", "items": {"type": "string"},
                                "description": "Aliases that pointed at it and are gone with it"},
            "job_cancelled": {"type": "boolean", "description": "Its conversion was still queued or running"},
        },
    },
    "DeletedModel": {
        "type": "object",
        "required": ["model", "versions_deleted", "aliases_removed", "jobs_cancelled", "last_version"],
        "properties": {
            "model": {"type": "string"}, "versions_deleted": {"type": "integer"},
            "aliases_removed": {"type": "array", "items": {"type": "string"}},
            "jobs_cancelled": {"type": "integer"},
            "last_version": {"type": "integer",
                             "description": "Highest number it had; pushing the name again goes on from here"},
        },
    },
    "AliasBody": {
        "type": "object", "required": ["version"],
        "properties": {"version": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
    },
    "ServedVersions": {
        "type": "object", "required": ["versions"],
        "properties": {"versions": {"oneOf": [
            {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
            {"const": "all", "description": "every ready version"},
            {"type": "null", "description": "the default: every aliased version and the newest ready one"}]}},
    },
    "ServedVersionsAnswer": {
        "type": "object", "required": ["model", "versions"],
        "properties": {"model": {"type": "string"},
                       "versions": {"type": ["array", "string", "null"], "items": {"type": "integer"}}},
    },
    "ServingPlan": {
        "type": "object", "required": ["root", "models"],
        "properties": {
            "root": {"type": "string"},
            "models": {"type": "array", "items": {
                "type": "object",
                "required": ["name", "versions", "exported_versions", "labels", "skipped_versions",
                             "skipped_aliases", "skipped"],
                "properties": {
                    "name": {"type": "string"},
                    "served_versions_setting": {"type": ["array", "string", "null"], "items": {"type": "integer"}},
                    "versions": {"type": "array", "items": {"type": "integer"},
                                 "description": "Versions to serve"},
                    "exported_versions": {"type": "array", "items": {"type": "integer"},
                                          "description": "Versions in the export root, as models.config lists"},
                    "labels": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "skipped_versions": {"type": "array", "items": {"type": "object", "properties": {
                        "version": {"type": "integer"}, "reason": {"type": "string"}}}},
                    "skipped_aliases": {"type": "array", "items": {"type": "object", "properties": {
                        "alias": {"type": "string"}, "version": {"type": "integer"},
                        "reason": {"type": "string"}}}},
                    "held_labels": {"type": "array", "items": {"type": "object", "properties": {
                        "alias": {"type": "string"}, "version": {"type": "integer"},
                        "moving_to": {"type": "integer"}}},
                        "description": "Labels kept on a loaded version until the new one had "
                                       "REGISTRY_SERVING_LABEL_DELAY seconds to load"},
                    "skipped": _nullable_str,
                }}},
        },
    },
    "Alias": {
        "type": "object", "required": ["model", "alias", "version"],
        "properties": {"model": {"type": "string"}, "alias": {"type": "string"}, "version": {"type": "integer"}},
    },
}

_BLOB_HEADERS = {
    "ETag": {"schema": {"type": "string"}, "description": "The blob's sha256, quoted"},
    "Content-Length": {"schema": {"type": "integer"}},
    "Content-Disposition": {"schema": {"type": "string"}},
    "Accept-Ranges": {"schema": {"type": "string"}},
}


def _blob(description: str, mimetype: str) -> dict:
    return {
        "200": {"description": description, "headers": _BLOB_HEADERS,
                "content": {mimetype: {"schema": {"type": "string", "format": "binary"}}}},
        "206": {"description": "The requested byte range", "headers": _BLOB_HEADERS,
                "content": {mimetype: {"schema": {"type": "string", "format": "binary"}}}},
        "304": {"description": "Not modified (If-None-Match matched the ETag)"},
        "404": _error("Unknown model, version, alias or file"),
        "416": _error("The range is not satisfiable"),
    }


def endpoint_of(operation_id: str) -> str:
    """The Flask endpoint serving an operation: ``listModels`` is ``api.list_models``."""
    return "api." + re.sub(r"(?<!^)([A-Z])", r"_\1", operation_id).lower()


_WRITES = ("post", "put", "patch", "delete")
_WRONG_HOST = "a Host header naming a host this server does not answer to (REGISTRY_ALLOWED_HOSTS)"
_CROSS_SITE = ("a write from a page of another site without an Authorization: Bearer header (its Origin or "
               "Sec-Fetch-Site shows it)")


def _secure(document: dict) -> dict:
    """Each operation's security requirement and 401/403 answers, from registry.auth.access.RULES, and the
    answers of the checks every request passes first (Host; Origin for writes; JSON body size)."""
    for item in document["paths"].values():
        for method, operation in item.items():
            responses = operation["responses"]
            bad = responses.get("400", {}).get("description")
            responses["400"] = _error(f"{bad}; or {_WRONG_HOST}" if bad else f"Refused: {_WRONG_HOST}")
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                responses["413"] = _error(f"The JSON body is larger than {MAX_JSON_BYTES} bytes")
            scope = RULES[endpoint_of(operation["operationId"])]
            if scope is None:
                operation["security"] = []
                if method in _WRITES:
                    responses["403"] = _error(f"Refused: {_CROSS_SITE}")
                continue
            operation["security"] = [{"bearer": [scope]}]
            operation["description"] = (operation.get("description", "") + f" Needs a token with `{scope}` scope"
                                        + (" (or none where reads are public)." if scope == "read" else ".")).strip()
            responses["401"] = _error("No token, or a malformed, unknown or revoked one (WWW-Authenticate: Bearer)")
            responses["403"] = _error(f"The token's scope is narrower than {scope}, or a cookie-authenticated "
                                      "request without its CSRF token"
                                      + (f", or {_CROSS_SITE}" if method in _WRITES else ""))
    return document


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds worth waiting before a retry"}}


def _faults(document: dict) -> dict:
    """The 503 every operation can answer when the database (or, for a push, the blob storage)
    cannot do its part: nothing was changed and a retry later may succeed."""
    for item in document["paths"].values():
        for method, operation in item.items():
            if method in _WRITES:
                what = ("The database refuses writes (read-only, its disk full or failing), is busy or cannot be "
                        "reached" + ("; or the blob storage is full, read-only or unreachable"
                                     if operation["operationId"] == "pushVersion" else ""))
            else:
                what = "The database cannot be reached or opened"
            operation["responses"].setdefault("503", {**_error(f"{what}; nothing was changed"),
                                                      "headers": _RETRY_AFTER})
    return document


@cache
def openapi_document() -> dict:
    return _faults(_secure(_document()))


def _document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "TensorFlow model registry", "version": __version__,
                 "description": "Push TensorFlow checkpoints, get back verified frozen graphs by version."},
        "paths": {
            "/api/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                             "responses": {"200": _json({"type": "object"}, "OpenAPI document")}}},
            "/api/v1/models": {"get": {
                "operationId": "listModels", "summary": "Models by name",
                "parameters": [*_PAGE, {"name": "q", "in": "query", "schema": {"type": "string"},
                                        "description": "Substring of the name"}],
                "responses": {"200": _json(_ref("ModelList"), "A page of models"),
                              "400": _error("Bad page size or token")}}},
            "/api/v1/models/{name}": {
                "get": {"operationId": "getModel", "parameters": [_NAME],
                        "responses": {"200": _json(_ref("Model"), "The model"),
                                      "400": _error("Invalid model name"), "404": _error("No such model")}},
                "delete": {"operationId": "deleteModel",
                           "summary": "Delete the model and all its versions (its numbers are never reused)",
                           "parameters": [_NAME],
                           "responses": {"200": _json(_ref("DeletedModel"), "Deleted"),
                                         "400": _error("Invalid model name"), "404": _error("No such model"),
                                         "409": _error(_CONCURRENT)}}},
            "/api/v1/models/{name}/versions": {
                "get": {"operationId": "listVersions", "summary": "Versions, newest first",
                        "parameters": [_NAME, *_PAGE, {"name": "status", "in": "query", "schema": {
                            "type": "string", "enum": ["queued", "converting", "ready", "failed"]}}],
                        "responses": {"200": _json(_ref("VersionList"), "A page of versions"),
                                      "400": _error("Bad parameters"), "404": _error("No such model")}},
                "post": {
                    "operationId": "pushVersion",
                    "summary": "Push the next version (creates the model on first push)",
                    "parameters": [_NAME],
                    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                        "type": "object",
                        "properties": {
                            "meta": {"type": "string", "format": "binary", "description": "model.ckpt.meta"},
                            "index": {"type": "string", "format": "binary", "description": "model.ckpt.index"},
                            "data": {"type": "array", "items": {"type": "string", "format": "binary"},
                                     "description": "every model.ckpt.data-NNNNN-of-NNNNN shard"},
                            "graph": {"type": "string", "format": "binary",
                                      "description": "inference GraphDef, binary .pb or text .pbtxt"},
                            "frozen": {"type": "string", "format": "binary",
                                       "description": "an already-frozen GraphDef, instead of a checkpoint"},
                            "saved_model": {"type": "string", "format": "binary",
                                            "description": "a TF2 SavedModel folder as .zip or .tar.gz, instead "
                                                           "of a checkpoint"},
                            "keras": {"type": "string", "format": "binary",
                                      "description": "a Keras model (.keras or .h5), instead of a checkpoint"},
                            "signature": {"type": "string",
                                          "description": "the SavedModel signature to freeze (serving_default)"},
                            "labels": {"type": "string", "format": "binary", "description": "one label per line"},
                            "output_nodes": {"type": "string", "description": "comma-separated node names"},
                            "input_nodes": {"type": "string", "description": "comma-separated node names"},
                            "description": {"type": "string"},
                            "input_height": {"type": "integer"}, "input_width": {"type": "integer"},
                            "input_mean": {"type": "number"}, "input_std": {"type": "number"},
                        }}}}},
                    "responses": {
                        "202": {**_json(_ref("Version"), "Registered and queued for conversion"),
                                "headers": {"Location": {"schema": {"type": "string"}}}},
                        "400": _error("Missing, empty or invalid files or fields, an unsafe archive, more parts "
                                      "than REGISTRY_MAX_UPLOAD_PARTS (too_many_parts), or a multipart preamble, "
                                      "part header or epilogue over 64 KiB (multipart_header_too_long)"),
                        "413": _error("Upload larger than the limit (REGISTRY_MAX_UPLOAD_BYTES)"),
                        "429": {**_error("Too many pushes from this client (REGISTRY_RATE_LIMIT_PUSH)"),
                                "headers": {"Retry-After": {"schema": {"type": "integer"},
                                                            "description": "Seconds until a push is accepted"}}}}}},
            "/api/v1/models/{name}/versions/{ref}": {
                "get": {"operationId": "getVersion", "parameters": [_NAME, _REF],
                        "responses": {"200": _json(_ref("Version"), "The version"),
                                      "400": _error("Invalid model name, or a version written with other "
                                                    "digits than 0-9"),
                                      "404": _error("No such model, version or alias")}},
                "delete": {"operationId": "deleteVersion",
                           "summary": "Delete a version by number: its aliases go, its conversion is cancelled, "
                                      "its number is never reused",
                           "parameters": [_NAME, _REF],
                           "responses": {"200": _json(_ref("DeletedVersion"), "Deleted"),
                                         "400": _error("Invalid model name, or not a version number (digits "
                                                       "0-9)"),
                                         "404": _error("No such model or version (or it was deleted by a "
                                                       "concurrent request)"),
                                         "409": _error(_CONCURRENT)}},
                "patch": {"operationId": "updateVersion", "summary": "Edit preprocessing settings or description",
                          "parameters": [_NAME, _REF],
                          "requestBody": {"required": True,
                                          "content": {"application/json": {"schema": _ref("VersionUpdate")}}},
                          "responses": {"200": _json(_ref("Version"), "The updated version"),
                                        "400": _error("Invalid settings"),
                                        "404": _error("No such model, version or alias"),
                                        "409": _error(_CONCURRENT)}}},
            "/api/v1/models/{name}/versions/{ref}/frozen.pb": {"get": {
                "operationId": "downloadFrozen", "parameters": [_NAME, _REF],
                "responses": {**_blob("The frozen GraphDef", "application/octet-stream"),
                              "400": _error("Invalid model name"),
                              "409": _error("The version is not ready")}}},
            "/api/v1/models/{name}/versions/{ref}/labels.txt": {"get": {
                "operationId": "downloadLabels", "parameters": [_NAME, _REF],
                "responses": {**_blob("The labels file", "text/plain"), "400": _error("Invalid model name")}}},
            "/api/v1/models/{name}/versions/{ref}/saved_model.tar.gz": {"get": {
                "operationId": "downloadSavedModel", "parameters": [_NAME, _REF],
                "summary": "The SavedModel TF Serving loads (saved_model.pb + variables/), as a .tar.gz",
                "responses": {**_blob("The SavedModel folder as a .tar.gz", "application/gzip"),
                              "400": _error("Invalid model name"),
                              "409": _error("The version is not ready, or was frozen before SavedModels were "
                                            "built")}}},
            "/api/v1/models/{name}/serving": {"put": {
                "operationId": "setServedVersions", "parameters": [_NAME],
                "summary": "Which versions a TF Serving export serves",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("ServedVersions")}}},
                "responses": {"200": _json(_ref("ServedVersionsAnswer"), "The new setting"),
                              "400": _error("Invalid body"), "404": _error("No such model or version"),
                              "409": _error(_CONCURRENT)}}},
            "/api/v1/serving": {"get": {
                "operationId": "servingPlan",
                "summary": "Per model: versions served and exported, labels, and what was left out and why",
                "responses": {"200": _json(_ref("ServingPlan"), "The plan"),
                              "409": _error("REGISTRY_SERVING_EXPORT_ROOT is not set")}}},
            "/api/v1/serving/models.config": {"get": {
                "operationId": "servingConfig",
                "summary": "TF Serving's ModelServerConfig text proto for what is exported now",
                "responses": {"200": {"description": "models.config",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "409": _error("REGISTRY_SERVING_EXPORT_ROOT is not set")}}},
            "/api/v1/models/{name}/aliases/{alias}": {
                "put": {"operationId": "setAlias", "parameters": [_NAME, _NEW_ALIAS],
                        "requestBody": {"required": True,
                                        "content": {"application/json": {"schema": _ref("AliasBody")}}},
                        "responses": {"200": _json(_ref("Alias"), "The alias now points at the version"),
                                      "400": _error("Invalid alias or body"),
                                      "404": _error("No such model or version (or it was deleted by a "
                                                    "concurrent request)"),
                                      "409": _error("The version failed, or the model changed under a concurrent "
                                                    "request (concurrent_change): look again and retry")}},
                "delete": {"operationId": "deleteAlias", "parameters": [_NAME, _ALIAS],
                           "responses": {"204": {"description": "Deleted"},
                                         "400": _error("Invalid model name"),
                                         "404": _error("No such model or alias"),
                                         "409": _error(_CONCURRENT)}}},
            "/api/v1/models/{name}/allowed-ops": {
                "get": {"operationId": "getAllowedOps", "summary": "The model's op allowlist",
                        "parameters": [_NAME],
                        "responses": {"200": _json(_ref("AllowedOps"), "The allowed ops and the last change"),
                                      "400": _error("Invalid model name"), "404": _error("No such model")}},
                "put": {"operationId": "setAllowedOps",
                        "summary": "Replace the model's op allowlist (audited)",
                        "description": "Versions whose flagged ops are all on the list are served; the list is "
                                       "read on every request, so existing versions follow at once.",
                        "parameters": [_NAME],
                        "requestBody": {"required": True,
                                        "content": {"application/json": {"schema": _ref("AllowedOpsRequest")}}},
                        "responses": {"200": _json(_ref("AllowedOps"), "The new list"),
                                      "400": _error("Invalid op names, body or missing reason"),
                                      "404": _error("No such model"),
                                      "409": _error(_CONCURRENT)}}},
            "/api/v1/tokens": {
                "get": {"operationId": "listTokens", "summary": "API tokens, revoked ones included",
                        "responses": {"200": _json(_ref("TokenList"), "Every token (never the token itself)")}},
                "post": {"operationId": "createToken", "summary": "Create a token; the answer is the only place "
                                                                 "the token is ever shown",
                         "requestBody": {"required": True,
                                         "content": {"application/json": {"schema": _ref("TokenRequest")}}},
                         "responses": {"201": _json(_ref("Token"), "The new token, with `token`"),
                                       "400": _error("Invalid name or scope"),
                                       "409": _error("An active token has that name")}}},
            "/api/v1/tokens/{name_or_id}": {"delete": {
                "operationId": "revokeToken", "summary": "Revoke a token (by active name, or id); it stops at once",
                "parameters": [{"name": "name_or_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_ref("Token"), "The revoked token"),
                              "404": _error("No such token")}}},
            "/api/v1/audit": {"get": {
                "operationId": "listAuditEvents", "summary": "The audit log of writes, newest first",
                "parameters": [*_PAGE, {"name": "action", "in": "query", "schema": {"type": "string"},
                                        "description": "Only events of this action (e.g. version.push)"}],
                "responses": {"200": _json(_ref("AuditPage"), "A page of events"),
                              "400": _error("Bad page size or token")}}},
        },
        "components": {"schemas": _SCHEMAS, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "An API token (`registry token create`). Scopes nest: admin ⊇ write ⊇ read. Reads "
                           "may be open without a token (REGISTRY_PUBLIC_READ); writes are open without one only "
                           "on an embedded registry that never had a token (REGISTRY_AUTH=auto)."}}},
    }
