"""Thin handlers: parse the request, call a service, shape the answer."""

from __future__ import annotations

from flask import Response, g, redirect, request, url_for
from werkzeug.wsgi import wrap_file

from registry import catalog, tfserving
from registry.api import bp
from registry.api.openapi import openapi_document
from registry.api.parsing import MAX_INT64, int_arg, json_body, page_token_arg
from registry.auth.access import current_actor
from registry.context import get_registry
from registry.entities import PREPROCESSING_KEYS, READY, SAVED_MODEL, VERSION_STATUSES
from registry.errors import Conflict, InvalidRequest, NotFound, StorageError
from registry.uploads.archives import ArchiveLimits
from registry.uploads.multipart import read_push_form
from registry.uploads.checks import parse_node_list
from registry.uploads.files import PushRequest
from registry.uploads.pushing import push


SEND_BUFFER = 1024 * 1024  # bytes per write when streaming a blob to the client


@bp.get("/openapi.json")
def openapi():
    return openapi_document()


@bp.get("/models")
def list_models():
    page = catalog.list_models(
        get_registry().db,
        page_size=int_arg("page_size"),
        page_token=page_token_arg(),
        query=request.args.get("q"),
    )
    return {"models": [m.to_dict() for m in page.items], "next_page_token": page.next_page_token}


@bp.get("/models/<name>")
def get_model(name: str):
    return catalog.get_model(get_registry().db, name).to_dict()


@bp.delete("/models/<name>")
def delete_model(name: str):
    registry = get_registry()
    answer = catalog.delete_model(registry.db, name, actor=current_actor())
    registry.serving_changed()
    return answer.to_dict()


@bp.get("/models/<name>/versions")
def list_versions(name: str):
    status = request.args.get("status")
    if status and status not in VERSION_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(VERSION_STATUSES)}", code="invalid_status")
    page = catalog.list_versions(
        get_registry().db, name,
        page_size=int_arg("page_size"), page_token=page_token_arg(), status=status,
    )
    return {"versions": [v.to_dict() for v in page.items], "next_page_token": page.next_page_token}


@bp.post("/models/<name>/versions")
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
    push_request = PushRequest(
        files=files,
        output_nodes=parse_node_list(form.get("output_nodes"), "output node"),
        input_nodes=parse_node_list(form.get("input_nodes"), "input node"),
        description=form.get("description", ""),
        preprocessing={k: form[k] for k in PREPROCESSING_KEYS if form.get(k, "") != ""},
        signature=form.get("signature", "").strip(),
    )
    settings = registry.settings
    version = push(
        registry.db, registry.storage, name, push_request, max_attempts=settings.job_max_attempts,
        archive_limits=ArchiveLimits(settings.max_archive_bytes, settings.max_archive_files),
        actor=current_actor(),
    )
    registry.notify_workers()
    location = url_for("api.get_version", name=name, ref=str(version.version))
    return version.to_dict(), 202, {"Location": location}


@bp.get("/models/<name>/versions/<ref>")
def get_version(name: str, ref: str):
    return catalog.get_version(get_registry().db, name, ref).to_dict()


@bp.delete("/models/<name>/versions/<ref>")
def delete_version(name: str, ref: str):
    registry = get_registry()
    answer = catalog.delete_version(registry.db, name, ref, actor=current_actor())
    registry.serving_changed()
    return answer.to_dict()


@bp.patch("/models/<name>/versions/<ref>")
def update_version(name: str, ref: str):
    body = json_body()
    if not isinstance(body, dict) or not set(body) <= {"preprocessing", "description"} or not body:
        raise InvalidRequest(
            'send a JSON object with "preprocessing" (e.g. {"input_mean": 128, "input_std": 128}) '
            'and/or "description"',
            code="invalid_version_update",
        )
    preprocessing = body.get("preprocessing")
    if preprocessing is not None and not isinstance(preprocessing, dict):
        raise InvalidRequest('"preprocessing" must be an object', code="invalid_preprocessing")
    for key, value in (preprocessing or {}).items():
        if isinstance(value, int) and abs(value) > MAX_INT64:  # no float holds it: OverflowError
            raise InvalidRequest(f"{key} must be a number below 2^63, not one of 20 or more digits",
                                 code="invalid_preprocessing")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest('"description" must be a string', code="invalid_version_update")
    return catalog.update_version(get_registry().db, name, ref, preprocessing=preprocessing,
                                  description=description, actor=current_actor()).to_dict()


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
def download_labels(name: str, ref: str):
    version = catalog.get_version(get_registry().db, name, ref)
    labels = version.file("labels")
    if labels is None:
        raise NotFound(f"version {version.version} of {name!r} has no labels file", code="labels_not_found")
    return _send_blob(labels.sha256, f"{name}-v{version.version}-labels.txt", "text/plain")


@bp.put("/models/<name>/aliases/<alias>")
def set_alias(name: str, alias: str):
    body = json_body()
    number = body.get("version") if isinstance(body, dict) else None
    if isinstance(number, str) and number.isascii() and number.isdecimal():  # not '²': int() refuses it
        number = int(number) if len(number) <= len(str(MAX_INT64)) else MAX_INT64 + 1
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_INT64:
        raise InvalidRequest(f'send a JSON body like {{"version": 3}}: a version number from 1 to {MAX_INT64}',
                             code="invalid_alias_body")
    registry = get_registry()
    version = catalog.set_alias(registry.db, name, alias, number, actor=current_actor())
    registry.serving_changed()
    return {"model": name, "alias": alias, "version": version.version}


@bp.delete("/models/<name>/aliases/<alias>")
def delete_alias(name: str, alias: str):
    registry = get_registry()
    catalog.delete_alias(registry.db, name, alias, actor=current_actor())
    registry.serving_changed()
    return "", 204


@bp.get("/models/<name>/allowed-ops")
def get_allowed_ops(name: str):
    return catalog.get_allowed_ops(get_registry().db, name)


@bp.put("/models/<name>/allowed-ops")
def set_allowed_ops(name: str):
    body = json_body()
    if not isinstance(body, dict) or "ops" not in body or not set(body) <= {"ops", "reason"}:
        raise InvalidRequest('send a JSON body like {"ops": ["ReadFile"], "reason": "reads its vocabulary file"} '
                             '({"ops": []} clears the list)', code="invalid_allowed_ops")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise InvalidRequest('"reason" must be a string', code="invalid_allowed_ops")
    registry = get_registry()
    answer = catalog.set_allowed_ops(registry.db, name, body["ops"], reason, actor=current_actor())
    registry.serving_changed()  # flagged versions are exported only while their ops are allowed
    return answer


@bp.get("/models/<name>/versions/<ref>/saved_model.tar.gz")
def download_saved_model(name: str, ref: str):
    version = catalog.get_version(get_registry().db, name, ref)
    if version.status != READY:
        raise Conflict(f"version {version.version} of {name!r} is {version.status}; its SavedModel exists once "
                       "it is ready", code="version_not_ready")
    saved = version.file(SAVED_MODEL)
    if saved is None:
        raise Conflict(f"version {version.version} of {name!r} was frozen before SavedModels were built: "
                       "run 'registry export-serving' (or 'registry saved-models') once to build it",
                       code="saved_model_not_built")
    return _send_blob(saved.sha256, f"{name}-v{version.version}-saved_model.tar.gz", "application/gzip")


@bp.put("/models/<name>/serving")
def set_served_versions(name: str):
    body = json_body()
    if isinstance(body, dict) and isinstance(body.get("versions"), list) and any(
            isinstance(v, int) and v > MAX_INT64 for v in body["versions"]):
        raise InvalidRequest(f"version numbers go up to {MAX_INT64}", code="invalid_served_versions")
    if not isinstance(body, dict) or set(body) != {"versions"}:
        raise InvalidRequest('send {"versions": [1, 3]} to serve those versions, {"versions": "all"} for every '
                             'ready version, or {"versions": null} for the default (every aliased version and the '
                             "newest ready one)",
                             code="invalid_served_versions")
    registry = get_registry()
    model = catalog.set_served_versions(registry.db, name, body["versions"], actor=current_actor())
    registry.serving_changed()
    return {"model": name, "versions": model.served_versions}


@bp.get("/serving")
def serving_plan():
    settings = get_registry().settings
    text, plans = tfserving.config_for(get_registry().db, settings.serving_export_root,
                                       settings.serving_base_path or None, settings.serving_label_delay)
    return {"root": settings.serving_export_root, "models": [p.to_dict() for p in plans]}


@bp.get("/serving/models.config")
def serving_config():
    settings = get_registry().settings
    text, _ = tfserving.config_for(get_registry().db, settings.serving_export_root,
                                   settings.serving_base_path or None, settings.serving_label_delay)
    return Response(text, mimetype="text/plain")
