"""Evaluation sets: add a revision (a multipart upload streamed to storage), list sets and revisions,
download one, delete one revision or all of a set's (audited).  Listing and downloading need read scope,
adding and deleting write scope (registry.auth.access.RULES)."""

from __future__ import annotations

from typing import BinaryIO

from flask import Response, g, request, url_for

from registry import catalog
from registry.api import bp, schemas
from registry.api.spec import Json, Param, blob_answers, operation, validated
from registry.api.views import CONCURRENT, NAME, _send_blob
from registry.auth.access import current_actor
from registry.context import get_registry
from registry.errors import InvalidRequest, InvalidUpload, PayloadTooLarge, StorageError
from registry.evaluation import EvalSetInfo, sets
from registry.evaluation.archive import image_kind
from registry.evaluation.reader import read_input
from registry.evaluation.formats import SetLimits
from registry.storage import BlobStorage
from registry.uploads.files import ReceivedFile, UploadSink
from registry.uploads.multipart import read_parts

SET = Param("set", "Evaluation set name: 1-64 letters, digits, '_', '-' or '.'", schemas.EvalSetName)
REVISION = Param("revision", "Revision number (each upload of a set is the next one)", int)
INPUT = Param("index", "The input's number, from 0, in the set's order", int)
FIELDS = ("label_feature", "description", "csrf_token")
MIMETYPES = {".zip": "application/zip", ".tar": "application/x-tar", ".gz": "application/gzip",
             ".tgz": "application/gzip", ".jsonl": "application/jsonl", ".json": "application/jsonl",
             ".ndjson": "application/jsonl"}
BAD_UPLOAD = ("Invalid model or set name, no file, or a file that is no evaluation set: the message names the line, "
              "member, array or record that is wrong (invalid_eval_set), an unsafe archive (unsafe_archive), "
              "more inputs than REGISTRY_EVAL_SET_MAX_INPUTS, or a format that cannot be told "
              "(unknown_eval_set_format)")


def _answer(info: EvalSetInfo, **extra) -> dict:
    return {**{k: getattr(info, k) for k in schemas.EvalSet.model_fields if k != "ref"}, "ref": info.ref, **extra}


def read_eval_set_form(stream: BinaryIO, boundary: bytes, storage: BlobStorage, sinks: list[UploadSink], *,
                       max_bytes: int) -> tuple[dict[str, str], ReceivedFile]:
    """A multipart body with one file part ``file`` (streamed into a blob writer that keeps a local file
    for the check, at most ``max_bytes``) and text fields; read as pushes are (``read_parts``)."""
    received: list[ReceivedFile] = []

    def check_field(name: str) -> None:
        if name not in FIELDS:
            raise InvalidUpload(f"unknown field {name!r}: send file, label_feature and description",
                                code="unknown_field")

    def open_file(name: str, filename: str | None) -> UploadSink:
        if name != "file" or received:
            raise InvalidUpload(f"send the set as one file field named 'file', not {name!r}", code="unknown_field")
        sink = UploadSink(storage.writer(), scan=False, keep_local=True)
        sinks.append(sink)
        received.append(ReceivedFile("file", filename or "eval-set", sink))
        return sink

    def check_file(sink: UploadSink) -> None:
        if sink.size > max_bytes:
            raise PayloadTooLarge(f"the evaluation set is larger than {max_bytes:,} bytes "
                                  "(REGISTRY_EVAL_SET_MAX_BYTES): split it into several sets", code="eval_set_too_large")

    fields = read_parts(stream, boundary, open_file=open_file, check_field=check_field, check_file=check_file,
                        max_parts=None)
    if not received:
        raise InvalidUpload("no file: send the set as the multipart file field 'file'", code="missing_file")
    return fields, received[0]


@bp.get("/models/<name>/eval-sets")
@operation("listEvalSets", summary="The model's evaluation sets: each one's latest revision", path=(NAME,),
           answers={200: Json(schemas.EvalSetList, "Sets by name"), 400: "Invalid model name",
                    404: "No such model"})
def list_eval_sets(name: str):
    found = sets.list_eval_sets(get_registry().db, name)
    return schemas.EvalSetList(model=name, eval_sets=[
        schemas.EvalSetSummary.model_validate(_answer(s.latest, revisions=s.revisions)) for s in found])


@bp.post("/models/<name>/eval-sets/<set>")
@operation("addEvalSet", summary="Upload the next revision of an evaluation set (audited)", path=(NAME, SET),
           description="The file is checked before anything is kept: a refused one leaves no blob and no "
                       "revision. Each upload is a new immutable revision, stored as a content-addressed blob.",
           form=schemas.EvalSetForm, answers={
               201: Json(schemas.EvalSet, "Stored as the set's next revision",
                         headers={"Location": {"schema": {"type": "string"}}}),
               400: BAD_UPLOAD, 404: "No such model",
               409: CONCURRENT, 413: "Larger than REGISTRY_EVAL_SET_MAX_BYTES (eval_set_too_large)"})
def add_eval_set(name: str, set: str):  # noqa: A002 (the URL's word)
    registry = get_registry()
    catalog.validate_model_name(name)
    sets.validate_set_name(set)
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest("send the set as multipart/form-data: a file field 'file', and label_feature for a "
                             "TFRecord set", code="invalid_content_type")
    settings = registry.settings
    sinks = g.setdefault("upload_sinks", [])  # aborted at teardown unless published
    try:
        form, upload = read_eval_set_form(request.stream, request.mimetype_params.get("boundary", "").encode("latin-1"),
                                          registry.storage, sinks, max_bytes=settings.eval_set_max_bytes)
    except StorageError as exc:
        raise StorageError(f"{exc.message}. Nothing of this upload was kept: try again once storage answers.",
                           code=exc.code) from exc
    fields = validated(schemas.EvalSetForm, form)
    info = sets.add(registry.db, registry.storage, name, set, upload, fields.label_feature, fields.description,
                    current_actor(), limits=SetLimits(settings.eval_set_max_inputs, settings.max_archive_bytes))
    location = url_for("api.get_eval_set_revision", name=name, set=set, revision=info.revision)
    return schemas.EvalSet.model_validate(_answer(info)), 201, {"Location": location}


@bp.get("/models/<name>/eval-sets/<set>")
@operation("listEvalSetRevisions", summary="The live revisions of an evaluation set, newest first",
           path=(NAME, SET), answers={200: Json(schemas.EvalSetRevisions, "Its revisions"),
                                      400: "Invalid model or set name", 404: "No such model or set"})
def list_eval_set_revisions(name: str, set: str):  # noqa: A002
    revisions = sets.list_revisions(get_registry().db, name, set)
    return schemas.EvalSetRevisions(model=name, name=set,
                                    revisions=[schemas.EvalSet.model_validate(_answer(r)) for r in revisions])


@bp.get("/models/<name>/eval-sets/<set>/<int:revision>")
@operation("getEvalSetRevision", summary="One revision of an evaluation set", path=(NAME, SET, REVISION),
           answers={200: Json(schemas.EvalSet, "The revision"), 400: "Invalid model or set name",
                    404: "No such model, set or revision (or it was deleted)"})
def get_eval_set_revision(name: str, set: str, revision: int):  # noqa: A002
    return schemas.EvalSet.model_validate(_answer(sets.get_eval_set(get_registry().db, name, set, revision)))


@bp.get("/models/<name>/eval-sets/<set>/<int:revision>/download")
@operation("downloadEvalSet", summary="An evaluation set revision's file, as uploaded", path=(NAME, SET, REVISION),
           answers={**blob_answers("The file", "application/octet-stream"), 400: "Invalid model or set name"})
def download_eval_set(name: str, set: str, revision: int):  # noqa: A002
    info = sets.get_eval_set(get_registry().db, name, set, revision)
    suffixes = _suffixes(info.filename)
    mimetype = MIMETYPES.get(suffixes[-1] if suffixes else "", "application/octet-stream")
    return _send_blob(info.sha256, f"{name}-{set}-{revision}{''.join(suffixes)}", mimetype)


@bp.get("/models/<name>/eval-sets/<set>/<int:revision>/inputs/<int:index>")
@operation("getEvalSetInput", summary="One input of an evaluation set revision (0-based, in the set's order): an "
                                      "image as itself, anything else as JSON", path=(NAME, SET, REVISION, INPUT),
           answers={200: {"description": "The image (image/jpeg, png, gif or bmp) or the input as JSON",
                          "content": {"image/*": {"schema": {"type": "string", "format": "binary"}},
                                      "application/json": {"schema": {"type": "object"}}}},
                    400: "Invalid model or set name", 404: "No such model, set, revision or input"})
def get_eval_set_input(name: str, set: str, revision: int, index: int):  # noqa: A002
    registry = get_registry()
    kind, value = read_input(registry.storage, sets.get_eval_set(registry.db, name, set, revision), index)
    if kind != "image":
        return value
    response = Response(value, mimetype=f"image/{image_kind(value[:16]) or 'octet-stream'}")
    # an uploaded file served from this site: never sniffed as anything but the image it was checked to be
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, max-age=3600"  # a revision never changes
    return response


def _suffixes(filename: str) -> list[str]:
    """The file name's known suffixes (.tar.gz, .jsonl, ...), for the download's name."""
    parts = filename.lower().split(".")[1:]
    known = {".zip", ".tar", ".gz", ".tgz", ".jsonl", ".json", ".ndjson", ".npz", ".tfrecord", ".tfrecords"}
    return [f".{p}" for p in parts[-2:] if f".{p}" in known]


@bp.delete("/models/<name>/eval-sets/<set>")
@operation("deleteEvalSet", summary="Delete every revision of an evaluation set (audited)", path=(NAME, SET),
           description="Revisions stay as tombstones, so the reports that name them stay readable; "
                       "`registry gc` frees their blobs once nothing else refers to them.",
           answers={200: Json(schemas.DeletedEvalSet, "Deleted"), 400: "Invalid model or set name",
                    404: "No such model or set", 409: CONCURRENT})
def delete_eval_set(name: str, set: str):  # noqa: A002
    deleted = sets.delete_eval_set(get_registry().db, name, set, actor=current_actor())
    return schemas.DeletedEvalSet(model=name, name=set, revisions_deleted=deleted)


@bp.delete("/models/<name>/eval-sets/<set>/<int:revision>")
@operation("deleteEvalSetRevision", summary="Delete one revision of an evaluation set (audited)",
           path=(NAME, SET, REVISION), answers={
               200: Json(schemas.DeletedEvalSet, "Deleted"), 400: "Invalid model or set name",
               404: "No such model, set or revision", 409: CONCURRENT})
def delete_eval_set_revision(name: str, set: str, revision: int):  # noqa: A002
    deleted = sets.delete_eval_set(get_registry().db, name, set, revision, actor=current_actor())
    return schemas.DeletedEvalSet(model=name, name=set, revisions_deleted=deleted)
