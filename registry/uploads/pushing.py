"""Pushing a version: receive untrusted files as streams, check them, register them.

Each uploaded file streams straight into a blob writer while a running sha256
and a protobuf wire scan look at it; nothing is held whole in memory, and a
part's file is closed as soon as the part ends.  Every check (the archive check
of a SavedModel or Keras upload included) runs on the unpublished bytes, so a
refused push aborts its writers and leaves nothing behind.

Once published, blobs are never deleted by the push: identical bytes are one
blob, and another push in flight may have just published the same bytes and
not committed its version yet.  Should a push fail after publishing (the
database refuses its version), what it published is left to the garbage
collector (``registry.jobs.gc``), which deletes only blobs that are unreferenced
and older than its grace period, checking both again just before.

Every push is counted by outcome in ``registry.metrics``: accepted, refused (a
4xx, with its error code) or failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from registry import catalog, metrics
from registry.auth.audit import SYSTEM, Actor
from registry.db import Database
from registry.entities import NewFile, VersionInfo
from registry.errors import InvalidUpload, RegistryError
from registry.storage import BlobStorage
from registry.uploads.archives import ArchiveLimits
from registry.uploads.checks import SIGNATURE_RE, check_archives, check_checkpoint_used, check_fields, plan_push
from registry.uploads.files import ROLE_OF_FIELD, PushRequest, ReceivedFile

log = logging.getLogger(__name__)


def push(
    db: Database, storage: BlobStorage, name: str, request: PushRequest, *, max_attempts: int = 3,
    archive_limits: ArchiveLimits | None = None,
    actor: Actor = SYSTEM,
) -> VersionInfo:
    """Validate, publish blobs and register the next version (or the one ``request.version`` asks for) with
    a queued conversion."""
    try:
        version = _push(db, storage, name, request, max_attempts=max_attempts, archive_limits=archive_limits,
                        actor=actor)
    except RegistryError as exc:
        metrics.PUSHES.labels(*_outcome(exc)).inc()
        raise
    except BaseException:
        metrics.PUSHES.labels("failed", "").inc()
        raise
    metrics.PUSHES.labels("accepted", "").inc()
    return version


def _outcome(exc: RegistryError) -> tuple[str, str]:
    """(outcome, code) labels of a push that raised ``exc``: a 4xx is the pusher's to fix."""
    return ("refused", exc.code) if 400 <= exc.status < 500 else ("failed", exc.code)


def _push(db: Database, storage: BlobStorage, name: str, request: PushRequest, *, max_attempts: int,
          archive_limits: ArchiveLimits | None, actor: Actor) -> VersionInfo:
    catalog.validate_model_name(name)
    if request.signature and not SIGNATURE_RE.match(request.signature):
        raise InvalidUpload(f"signature {request.signature!r} is not a signature name (e.g. serving_default)",
                            code="invalid_signature")
    catalog.validate_preprocessing(request.preprocessing)
    if len(request.description) > 10_000:
        raise InvalidUpload("description is longer than 10,000 characters", code="invalid_description")
    try:
        if request.version is not None:  # a number refused now costs no storage (checked again on commit)
            catalog.check_version_available(db, name, catalog.check_version_number(request.version))
        source, ordered = plan_push(request)
        check_fields(source, request)
        check_archives(source, ordered, archive_limits or ArchiveLimits())
        check_checkpoint_used(source, ordered)
    except BaseException:
        abort(request.files)  # nothing is published yet: the staged bytes go at once
        raise
    try:
        for f in ordered:
            f.sink.publish()
        return catalog.create_version(
            db,
            name,
            source=source,
            files=[NewFile(ROLE_OF_FIELD.get(f.field, f.field), f.filename, f.sink.ref.sha256, f.sink.ref.size)
                   for f in ordered],
            signature=request.signature or None,
            signatures=request.signatures or None,
            description=request.description,
            output_nodes=request.output_nodes,
            input_nodes=request.input_nodes,
            preprocessing=request.preprocessing,
            tags=request.tags,
            lineage=request.lineage,
            max_attempts=max_attempts,
            actor=actor,
            version=request.version,
        )
    except BaseException:
        # What was published stays for the garbage collector: another push may be using the same bytes.
        abort(request.files)
        log.warning("push to %r failed after publishing its blobs; registry gc frees them once unreferenced "
                    "and older than its grace period", name)
        raise


def abort(files: Iterable[ReceivedFile]) -> None:
    """Drop every part of a push that was not published (its staged bytes go at once)."""
    for f in files:
        f.sink.abort()
