"""Thin handlers: parse the request, call a service, shape the answer.

Somewhat over 400 lines: the catalog's core routes (models, versions, files, aliases, serving) in one
place; newer groups live in their own modules (auth_views, eval_views, comparison_views, search_views,
alias_views, shadow_views, webhook_views)."""

from __future__ import annotations

import zlib
from typing import Annotated

from flask import Response, current_app, g, redirect, request, url_for
from pydantic import Field
from werkzeug.wsgi import wrap_file

from registry import catalog, tfserving
from registry.api import bp, schemas
from registry.api.spec import Json, Param, blob_answers, openapi_document, operation, text_answer, validated
from registry.auth.access import current_actor
from registry.context import get_registry
from registry.entities import READY, SAVED_MODEL, SAVED_MODEL_FAILED, SAVED_MODEL_PENDING
from registry.errors import Conflict, InvalidRequest, NotFound, StorageError
from registry.search import search_models
from registry.uploads.archives import ArchiveLimits
from registry.uploads.files import PushRequest
from registry.uploads.multipart import read_push_form
from registry.uploads.pushing import push


SEND_BUFFER = 1024 * 1024  # bytes per write when streaming a blob to the client

NAME = Param("name", "Model name", schemas.ModelName)
REF = Param("ref", "A version number, `latest` (newest ready version) or an alias")
ALIAS = Param("alias")
NEW_ALIAS = Param("alias", "1-64 letters, digits, '_', '-' or '.', starting with a letter; not 'latest'",
                  Annotated[str, Field(pattern=catalog.ALIAS_RE.pattern)])
# Writes on one model take turns (a row lock); should a race still surface, it is this 409, never a 500.
CONCURRENT = "The model changed under a concurrent request (concurrent_change): look again and retry"


@bp.get("/openapi.json")
@operation("openapi", summary="This document", answers={200: {
    "description": "OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}})
def openapi():
    return openapi_document(current_app)


@bp.get("/models")
@operation("listModels", summary="Models by name", query=schemas.ModelQuery,
           answers={200: Json(schemas.ModelList, "A page of models"), 400: "Bad page size or token"})
def list_models(query: schemas.ModelQuery):
    if query.filter or query.order_by:
        if query.q:
            raise InvalidRequest("give either q (a substring of the name) or filter, not both: e.g. "
                                 "filter=name LIKE '%incep%'", code="invalid_request")
        page = search_models(get_registry().db, query.filter, order_by=query.order_by, page_size=query.page_size,
                             page_token=query.page_token)
        return schemas.ModelList(models=page.items, next_page_token=page.next_page_token)
    page = catalog.list_models(get_registry().db, page_size=query.page_size, page_token=query.page_token,
                               query=query.q)
    return schemas.ModelList(models=page.items, next_page_token=page.next_page_token)


@bp.get("/models/<name>")
@operation("getModel", path=(NAME,), answers={200: Json(schemas.Model, "The model"), 400: "Invalid model name",
                                              404: "No such model"})
def get_model(name: str):
    return schemas.Model.model_validate(catalog.get_model(get_registry().db, name))


@bp.patch("/models/<name>")
@operation("updateModel", summary="Edit the model's description (audited)", path=(NAME,), body=schemas.ModelUpdate,
           answers={200: Json(schemas.Model, "The updated model"),
                    400: 'Invalid model name, or a body other than {"description": "..."}',
                    404: "No such model", 409: CONCURRENT})
def update_model(name: str, body: schemas.ModelUpdate):
    return schemas.Model.model_validate(catalog.update_model(get_registry().db, name, description=body.description,
                                                             actor=current_actor()))


@bp.delete("/models/<name>")
@operation("deleteModel", summary="Delete the model and all its versions (its numbers are never reused)",
           path=(NAME,), answers={200: Json(schemas.DeletedModel, "Deleted"), 400: "Invalid model name",
                                  404: "No such model", 409: CONCURRENT})
def delete_model(name: str):
    registry = get_registry()
    answer = catalog.delete_model(registry.db, name, actor=current_actor())
    registry.serving_changed()
    return schemas.DeletedModel.model_validate(answer)


@bp.get("/models/<name>/versions")
@operation("listVersions", summary="Versions, newest first", path=(NAME,), query=schemas.VersionQuery,
           answers={200: Json(schemas.VersionList, "A page of versions"), 400: "Bad parameters",
                    404: "No such model"})
def list_versions(name: str, query: schemas.VersionQuery):
    page = catalog.list_versions(get_registry().db, name, page_size=query.page_size, page_token=query.page_token,
                                 status=query.status)
    return schemas.VersionList.of(page)


@bp.post("/models/<name>/versions")
@operation("pushVersion", summary="Push the next version (creates the model on first push)", path=(NAME,),
           description="The field `version` registers that number instead of the next one (to keep TF Serving's "
                       "folder numbers of an imported export): it must be above every number the model had.",
           form=schemas.PushForm, answers={
               202: Json(schemas.Version, "Registered and queued for conversion",
                         headers={"Location": {"schema": {"type": "string"}}}),
               400: "Missing, empty or invalid files or fields, an unsafe archive, more parts than "
                    "REGISTRY_MAX_UPLOAD_PARTS (too_many_parts), or a multipart preamble, part header or epilogue "
                    "over 64 KiB (multipart_header_too_long)",
               409: "The version number asked for is not above every number the model had "
                    "(version_number_taken), or the model had the largest number there is "
                    "(version_numbers_exhausted)",
               413: "Upload larger than the limit (REGISTRY_MAX_UPLOAD_BYTES)",
               429: {"description": "Too many pushes from this client (REGISTRY_RATE_LIMIT_PUSH)",
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                     "headers": {"Retry-After": {"schema": {"type": "integer"},
                                                 "description": "Seconds until a push is accepted"}}}})
def push_version(name: str):
    registry = get_registry()
    catalog.validate_model_name(name)
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest(
            "send the files as multipart/form-data (fields meta, index, data, graph, frozen, saved_model, keras, "
            "labels)",
            code="invalid_content_type",
        )
    sinks = g.setdefault("upload_sinks", [])  # aborted at teardown unless published
    try:
        form, files = read_push_form(
            request.stream, request.mimetype_params.get("boundary", "").encode("latin-1"), registry.storage, sinks,
            max_parts=registry.settings.max_upload_parts,
        )
    except StorageError as exc:
        raise StorageError(f"{exc.message}. Nothing of this push was kept: try again once storage answers.",
                           code=exc.code) from exc
    fields = validated(schemas.PushForm, form)
    push_request = PushRequest(
        files=files, output_nodes=fields.output_nodes, input_nodes=fields.input_nodes,
        description=fields.description, preprocessing=fields.preprocessing, signature=fields.signature,
        signatures=fields.signatures, tags=fields.tags, lineage=fields.lineage, version=fields.version,
    )
    settings = registry.settings
    version = push(
        registry.db, registry.storage, name, push_request, max_attempts=settings.job_max_attempts,
        archive_limits=ArchiveLimits(settings.max_archive_bytes, settings.max_archive_files),
        actor=current_actor(),
    )
    registry.notify_workers()
    location = url_for("api.get_version", name=name, ref=str(version.version))
    return schemas.Version.of(version), 202, {"Location": location}


@bp.get("/models/<name>/versions/<ref>")
@operation("getVersion", path=(NAME, REF), answers={
    200: Json(schemas.Version, "The version"),
    400: "Invalid model name, or a version written with other digits than 0-9",
    404: "No such model, version or alias"})
def get_version(name: str, ref: str):
    return schemas.Version.of(catalog.get_version(get_registry().db, name, ref))


@bp.delete("/models/<name>/versions/<ref>")
@operation("deleteVersion", summary="Delete a version by number: its aliases go, its conversion is cancelled, "
                                    "its number is never reused", path=(NAME, REF), answers={
    200: Json(schemas.DeletedVersion, "Deleted"),
    400: "Invalid model name, or not a version number (digits 0-9)",
    404: "No such model or version (or it was deleted by a concurrent request)",
    409: CONCURRENT})
def delete_version(name: str, ref: str):
    registry = get_registry()
    answer = catalog.delete_version(registry.db, name, ref, actor=current_actor())
    registry.serving_changed()
    return schemas.DeletedVersion.model_validate(answer)


@bp.patch("/models/<name>/versions/<ref>")
@operation("updateVersion", summary="Edit preprocessing settings or description (audited)", path=(NAME, REF),
           description='The preprocessing settings (input_height, input_width, input_mean, input_std) may be sent '
                       'flat, {"input_mean": 127.5, "input_std": 127.5}, or nested as the version shows them, '
                       '{"preprocessing": {"input_mean": 127.5}}; settings left out keep their value. The label '
                       "service reads them with the version it resolves, so :label follows at once.",
           body=schemas.VersionUpdate, answers={
               200: Json(schemas.Version, "The updated version"),
               400: "Invalid settings, an unknown field, or a setting sent both flat and nested with different "
                    "values (conflicting_preprocessing)",
               404: "No such model, version or alias", 409: CONCURRENT})
def update_version(name: str, ref: str, body: schemas.VersionUpdate):
    preprocessing = body.preprocessing.model_dump(exclude_unset=True) if body.preprocessing else None
    return schemas.Version.of(catalog.update_version(
        get_registry().db, name, ref, preprocessing=preprocessing, description=body.description,
        actor=current_actor()))


@bp.put("/models/<name>/versions/<ref>/prediction-output")
@operation("setPredictionOutput", summary="Choose the output :label and :compare rank classes by (audited)",
           description="One of the outputs of the version's default signature. The label service reads the "
                       "choice with the version it resolves, so it applies within a second, without loading the "
                       "graph again.",
           path=(NAME, REF), body=schemas.PredictionOutputUpdate, answers={
               200: Json(schemas.Version, "The version, ranking by that output"),
               400: "Not an output of the default signature (the message lists them), or an invalid body",
               404: "No such model, version or alias",
               409: "The version is not ready (its outputs are not known yet), or the model changed under a "
                    "concurrent request (concurrent_change): look again and retry"})
def set_prediction_output(name: str, ref: str, body: schemas.PredictionOutputUpdate):
    return schemas.Version.of(catalog.set_prediction_output(
        get_registry().db, name, ref, body.prediction_output, reason=body.reason, actor=current_actor()))


def _send_blob(digest: str, download_name: str, mimetype: str):
    """Stream a blob with its sha256 as ETag; answers Range and If-None-Match.

    With ``REGISTRY_S3_PRESIGN`` on S3, answer with a redirect to a short-lived
    presigned URL instead, keeping the ETag.
    """
    registry = get_registry()
    storage = registry.storage
    try:
        size = storage.size(digest)
    except FileNotFoundError as exc:
        raise NotFound(f"the blob {digest} is missing from storage; ask an operator", code="blob_missing") from exc
    if registry.settings.s3_presign and hasattr(storage, "presigned_url"):
        if digest in request.if_none_match:
            response = Response(status=304)
        else:
            response = redirect(storage.presigned_url(digest, download_name, expires=300, content_type=mimetype))
        response.set_etag(digest)
        response.headers["X-Content-SHA256"] = digest
        response.cache_control.no_store = True
        return response
    response = Response(wrap_file(request.environ, storage.open(digest), buffer_size=SEND_BUFFER), mimetype=mimetype,
                        direct_passthrough=True)
    response.content_length = size
    response.set_etag(digest)
    response.headers["Content-Disposition"] = f"attachment; filename={download_name}"
    response.headers["X-Content-SHA256"] = digest
    response.cache_control.no_cache = True
    return response.make_conditional(request, accept_ranges=True, complete_length=size)


@bp.get("/models/<name>/versions/<ref>/frozen.pb")
@operation("downloadFrozen", path=(NAME, REF), answers={
    **blob_answers("The frozen GraphDef", "application/octet-stream"), 400: "Invalid model name",
    409: "The version is not ready"})
def download_frozen(name: str, ref: str):
    version = catalog.get_version(get_registry().db, name, ref)
    if version.status != READY or not version.frozen_sha256:
        detail = f": {version.status_message}" if version.status_message else ""
        raise Conflict(
            f"version {version.version} of {name!r} is {version.status}{detail}; "
            "its frozen graph exists once it is ready",
            code="version_not_ready",
        )
    return _send_blob(version.frozen_sha256, f"{name}-v{version.version}.pb", "application/octet-stream")


@bp.get("/models/<name>/versions/<ref>/labels.txt")
@operation("downloadLabels", path=(NAME, REF), answers={
    **blob_answers("The labels file", "text/plain"), 400: "Invalid model name"})
def download_labels(name: str, ref: str):
    version = catalog.get_version(get_registry().db, name, ref)
    labels = version.file("labels")
    if labels is None:
        raise NotFound(f"version {version.version} of {name!r} has no labels file", code="labels_not_found")
    return _send_blob(labels.sha256, f"{name}-v{version.version}-labels.txt", "text/plain")


@bp.put("/models/<name>/aliases/<alias>")
@operation("setAlias", summary="Create or move an alias (kept in its history; a protected alias needs the promote "
                                 "scope, a reason, and its gate to pass)", path=(NAME, NEW_ALIAS),
           body=schemas.AliasBody, answers={
    200: Json(schemas.Alias, "The alias now points at the version"), 400: "Invalid alias or body, or no reason for "
                                                                          "a protected alias",
    403: "A protected alias without the promote scope, or force without admin",
    404: "No such model or version (or it was deleted by a concurrent request)",
    409: "The version failed, the alias's gate refused it (error.details.conditions lists each condition with "
         "its measured value and threshold), or the model changed under a concurrent request: look again "
         "and retry"})
def set_alias(name: str, alias: str, body: schemas.AliasBody):
    registry = get_registry()
    version = catalog.set_alias(registry.db, name, alias, body.version, actor=current_actor(), reason=body.reason,
                                force=body.force)
    registry.serving_changed()
    return schemas.Alias(model=name, alias=alias, version=version.version)


@bp.delete("/models/<name>/aliases/<alias>")
@operation("deleteAlias", summary="Remove an alias (?reason=: kept in its history; needed for a protected alias)",
           path=(NAME, ALIAS), answers={
    204: {"description": "Deleted"}, 400: "Invalid model name, or no reason for a protected alias",
    403: "A protected alias without the promote scope", 404: "No such model or alias", 409: CONCURRENT})
def delete_alias(name: str, alias: str):
    registry = get_registry()
    catalog.delete_alias(registry.db, name, alias, actor=current_actor(), reason=request.args.get("reason", ""))
    registry.serving_changed()
    return "", 204


@bp.get("/models/<name>/allowed-ops")
@operation("getAllowedOps", summary="The model's op allowlist", path=(NAME,), answers={
    200: Json(schemas.AllowedOps, "The allowed ops and the last change"), 400: "Invalid model name",
    404: "No such model"})
def get_allowed_ops(name: str):
    return schemas.AllowedOps.model_validate(catalog.get_allowed_ops(get_registry().db, name))


@bp.put("/models/<name>/allowed-ops")
@operation("setAllowedOps", summary="Replace the model's op allowlist (audited)",
           description="Versions whose flagged ops are all on the list are served; the list is read on every "
                       "request, so existing versions follow at once.",
           path=(NAME,), body=schemas.AllowedOpsRequest, answers={
               200: Json(schemas.AllowedOps, "The new list"), 400: "Invalid op names, body or missing reason",
               404: "No such model", 409: CONCURRENT})
def set_allowed_ops(name: str, body: schemas.AllowedOpsRequest):
    registry = get_registry()
    answer = catalog.set_allowed_ops(registry.db, name, body.ops, body.reason, actor=current_actor())
    registry.serving_changed()  # flagged versions are exported only while their ops are allowed
    return schemas.AllowedOps.model_validate(answer)


def _saved_model_file(name: str, ref: str):
    """A ready version and its SavedModel file, or a 409 saying when it will be there."""
    version = catalog.get_version(get_registry().db, name, ref)
    if version.status != READY:
        raise Conflict(f"version {version.version} of {name!r} is {version.status}; its SavedModel exists once "
                       "it is ready", code="version_not_ready")
    saved = version.file(SAVED_MODEL)
    if saved is not None:
        return version, saved
    if version.saved_model_state == SAVED_MODEL_PENDING:
        pending = Conflict(f"the SavedModel of version {version.version} of {name!r} is being built (it follows the "
                           "conversion, usually within seconds): try again shortly", code="saved_model_pending")
        pending.headers = {"Retry-After": "2"}
        raise pending
    if version.saved_model_state == SAVED_MODEL_FAILED:
        raise Conflict(f"the SavedModel of version {version.version} of {name!r} could not be built: "
                       f"{version.saved_model_message}", code="saved_model_failed")
    raise Conflict(f"version {version.version} of {name!r} was frozen before SavedModels were built: "
                   "run 'registry export-serving' (or 'registry saved-models') once to build it",
                   code="saved_model_not_built")


SAVED_MODEL_CONFLICTS = ("The version is not ready, its SavedModel is still being built (saved_model_pending, with "
                         "Retry-After), could not be built (saved_model_failed), or was never built")


@bp.get("/models/<name>/versions/<ref>/saved_model.tar")
@operation("downloadSavedModelTar", path=(NAME, REF),
           summary="The SavedModel TF Serving loads (saved_model.pb + variables/), as the plain tar it is stored as",
           answers={**blob_answers("The SavedModel folder as a tar", "application/x-tar"), 400: "Invalid model name",
                    409: SAVED_MODEL_CONFLICTS})
def download_saved_model_tar(name: str, ref: str):
    version, saved = _saved_model_file(name, ref)
    download = f"{name}-v{version.version}-saved_model.tar"
    if saved.filename.endswith(".gz"):  # built before SavedModels were stored as plain tars
        return _send_transformed(saved.sha256, download, "application/x-tar", zlib.decompressobj(31))
    return _send_blob(saved.sha256, download, "application/x-tar")


@bp.get("/models/<name>/versions/<ref>/saved_model.tar.gz")
@operation("downloadSavedModel", path=(NAME, REF),
           summary="The SavedModel TF Serving loads, as a .tar.gz (gzipped as it is sent: saved_model.tar is the "
                   "stored tar, with its sha256 as ETag)", answers={
               **blob_answers("The SavedModel folder as a .tar.gz", "application/gzip"), 400: "Invalid model name",
               409: SAVED_MODEL_CONFLICTS})
def download_saved_model(name: str, ref: str):
    version, saved = _saved_model_file(name, ref)
    download = f"{name}-v{version.version}-saved_model.tar.gz"
    if saved.filename.endswith(".gz"):
        return _send_blob(saved.sha256, download, "application/gzip")
    return _send_transformed(saved.sha256, download, "application/gzip",
                             zlib.compressobj(1, zlib.DEFLATED, 31))


def _send_transformed(digest: str, download_name: str, mimetype: str, transform) -> Response:
    """A blob (de)compressed as it streams (no length or ranges); ``X-Content-SHA256`` names the blob it
    came from, whose own bytes ``saved_model.tar`` serves."""
    stream = get_registry().storage.open(digest)

    def chunks():
        with stream:
            while block := stream.read(SEND_BUFFER):
                if out := (transform.compress(block) if hasattr(transform, "compress")
                           else transform.decompress(block)):
                    yield out
            yield transform.flush()

    response = Response(chunks(), mimetype=mimetype, direct_passthrough=True)
    response.headers["Content-Disposition"] = f"attachment; filename={download_name}"
    response.headers["X-Source-SHA256"] = digest
    response.cache_control.no_cache = True
    return response


@bp.put("/models/<name>/serving")
@operation("setServedVersions", summary="Which versions a TF Serving export serves", path=(NAME,),
           body=schemas.ServedVersions, answers={
               200: Json(schemas.ServedVersionsAnswer, "The new setting"), 400: "Invalid body",
               404: "No such model or version", 409: CONCURRENT})
def set_served_versions(name: str, body: schemas.ServedVersions):
    registry = get_registry()
    model = catalog.set_served_versions(registry.db, name, body.versions, actor=current_actor())
    registry.serving_changed()
    return schemas.ServedVersionsAnswer(model=name, versions=model.served_versions)


@bp.get("/serving")
@operation("servingPlan", summary="Per model: versions served and exported, labels, and what was left out and why",
           answers={200: Json(schemas.ServingPlan, "The plan"), 409: "REGISTRY_SERVING_EXPORT_ROOT is not set"})
def serving_plan():
    settings = get_registry().settings
    text, plans = tfserving.config_for(get_registry().db, settings.serving_export_root,
                                       settings.serving_base_path or None, settings.serving_label_delay)
    return schemas.ServingPlan(root=settings.serving_export_root, models=plans)


@bp.get("/serving/models.config")
@operation("servingConfig", summary="TF Serving's ModelServerConfig text proto for what is exported now",
           answers={200: text_answer("models.config"), 409: "REGISTRY_SERVING_EXPORT_ROOT is not set"})
def serving_config():
    settings = get_registry().settings
    text, _ = tfserving.config_for(get_registry().db, settings.serving_export_root,
                                   settings.serving_base_path or None, settings.serving_label_delay)
    return Response(text, mimetype="text/plain")
