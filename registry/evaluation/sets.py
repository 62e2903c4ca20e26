"""Evaluation sets: a model's named, versioned inputs (with expected values) that comparisons run on.

Each upload of a name is its next revision, immutable: the checked file is stored as a content-addressed
blob (as version files are) and described by a row.  The file is checked (``formats.check``) while it is
still unpublished, so a refused upload leaves neither a blob nor a row.  Revision numbers come from the
highest one the name ever had, deleted ones included, under the model's row lock
(``catalog.rows.model_write``), so a number is never handed out twice.  Deleting keeps the row as a
tombstone (``deleted_at``) for the reports that name it; ``registry gc`` frees a blob once no live
revision (and no version) refers to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.names import validate_model_name
from registry.catalog.rows import model_row, model_write
from registry.db import Database
from registry.errors import InvalidRequest, InvalidUpload, NotFound
from registry.evaluation import EvalSetInfo
from registry.evaluation.formats import SetLimits, check
from registry.models import EvalSet, RegisteredModel, utcnow
from registry.storage import BlobStorage
from registry.uploads.files import UploadSink

SET_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_REVISION = 2**31 - 1  # the column is a 32-bit integer on PostgreSQL
MAX_DESCRIPTION = 10_000
MAX_LABEL_FEATURE = 256


class Upload(Protocol):
    """An uploaded file on its way into storage: ``registry.uploads.files.ReceivedFile``."""

    filename: str
    sink: UploadSink


@dataclass(frozen=True)
class _FileUpload:
    filename: str
    sink: UploadSink


@dataclass(frozen=True)
class EvalSetListing:
    """A set's latest live revision and how many live revisions it has."""

    latest: EvalSetInfo
    revisions: int


def validate_set_name(name: str) -> str:
    if not isinstance(name, str) or not SET_NAME_RE.match(name):
        raise InvalidRequest(f"invalid evaluation set name {name!r}: use 1-64 letters, digits, '_', '-' or '.'",
                             code="invalid_eval_set_name")
    return name


def parse_set_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@REVISION`` -> (name, revision or None for the latest)."""
    name, at, revision = (ref or "").strip().partition("@")
    validate_set_name(name)
    if not at:
        return name, None
    if not (revision.isascii() and revision.isdecimal()) or int(revision) < 1:
        raise InvalidRequest(f"invalid evaluation set reference {ref!r}: write NAME or NAME@REVISION, e.g. "
                             f"{name}@2", code="invalid_eval_set_ref")
    return name, int(revision)


def _info(row: EvalSet, model: str) -> EvalSetInfo:
    return EvalSetInfo(id=row.id, model=model, name=row.name, revision=row.revision, format=row.format,
                       filename=row.filename, sha256=row.sha256, size=row.size, count=row.count,
                       summary=dict(row.summary or {}), description=row.description, created_by=row.created_by,
                       created_at=row.created_at, deleted_at=row.deleted_at)


def add(db: Database, storage: BlobStorage, model: str, name: str, upload: Upload, label_feature: str | None = None,
        description: str = "", actor: Actor = SYSTEM, *, limits: SetLimits | None = None) -> EvalSetInfo:
    """Check ``upload`` and store it as the next revision of set ``name`` of ``model`` (audited).  Nothing
    is kept of an upload that is refused; ``upload.sink`` must keep a local file (``keep_local``)."""
    try:
        validate_model_name(model)
        validate_set_name(name)
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise InvalidRequest(f"a description is a text of at most {MAX_DESCRIPTION:,} characters",
                                 code="invalid_description")
        label_feature = (label_feature or "").strip() or None
        if label_feature is not None and len(label_feature) > MAX_LABEL_FEATURE:
            raise InvalidRequest(f"label_feature is longer than {MAX_LABEL_FEATURE} characters",
                                 code="invalid_label_feature")
        with db.transaction() as session:
            model_row(session, model)  # 404 before reading the file
        if upload.sink.size == 0:
            raise InvalidUpload(f"the evaluation set {upload.filename!r} is empty", code="invalid_eval_set")
        checked = check(upload.sink.local_path(), upload.filename, label_feature=label_feature, limits=limits)
    except BaseException:
        upload.sink.abort()  # unpublished: its bytes go at once
        raise
    ref = upload.sink.publish()  # identical bytes are one blob; if the row fails, registry gc frees it
    with model_write(db, model) as (session, row):
        last = session.scalar(sa.select(sa.func.max(EvalSet.revision))
                              .where(EvalSet.model_id == row.id, EvalSet.name == name)) or 0
        revision = last + 1
        eval_set = EvalSet(model_id=row.id, name=name, revision=revision, format=checked.format,
                           filename=Path(upload.filename).name[:255], sha256=ref.sha256, size=ref.size,
                           count=checked.count, summary=checked.summary, description=description,
                           created_by=actor.name[:128], created_at=utcnow())
        session.add(eval_set)
        audit.record(session, actor, "eval_set.add", f"{model}/{name}@{revision}",
                     {"format": checked.format, "count": checked.count, "sha256": ref.sha256, "size": ref.size,
                      "filename": eval_set.filename})
        session.flush()
        return _info(eval_set, model)


def add_file(db: Database, storage: BlobStorage, model: str, name: str, path: Path, label_feature: str | None = None,
             description: str = "", actor: Actor = SYSTEM, *, limits: SetLimits | None = None) -> EvalSetInfo:
    """:func:`add` for a local file (the CLI against the database, tests, the demo)."""
    sink = UploadSink(storage.writer(), scan=False, keep_local=True)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                sink.write(chunk)
    except BaseException:
        sink.abort()
        raise
    return add(db, storage, model, name, _FileUpload(Path(path).name, sink), label_feature, description, actor,
               limits=limits)


def _live(model_id: int):
    """The live (not deleted) revisions of a model's sets."""
    return sa.select(EvalSet).where(EvalSet.model_id == model_id, EvalSet.deleted_at.is_(None))


def _names(session: Session, model_id: int) -> list[str]:
    return list(session.scalars(sa.select(EvalSet.name).distinct()
                                .where(EvalSet.model_id == model_id, EvalSet.deleted_at.is_(None))
                                .order_by(EvalSet.name)))


def _no_such_set(session: Session, model: RegisteredModel, name: str) -> NotFound:
    names = _names(session, model.id)
    hint = f"its sets are: {', '.join(names)}" if names else \
        f"it has none: add one with POST /api/v1/models/{model.name}/eval-sets/{name}"
    return NotFound(f"model {model.name!r} has no evaluation set {name!r} ({hint})", code="eval_set_not_found")


def list_eval_sets(db: Database, model: str) -> list[EvalSetListing]:
    """Each set of ``model`` by name: its latest live revision and its number of live revisions."""
    validate_model_name(model)
    with db.transaction() as session:
        row = model_row(session, model)
        counts = dict(session.execute(
            sa.select(EvalSet.name, sa.func.count()).where(EvalSet.model_id == row.id, EvalSet.deleted_at.is_(None))
            .group_by(EvalSet.name)).all())
        latest = (sa.select(EvalSet.name, sa.func.max(EvalSet.revision).label("revision"))
                  .where(EvalSet.model_id == row.id, EvalSet.deleted_at.is_(None)).group_by(EvalSet.name).subquery())
        rows = session.scalars(_live(row.id).join(
            latest, sa.and_(EvalSet.name == latest.c.name, EvalSet.revision == latest.c.revision))
            .order_by(EvalSet.name)).all()
        return [EvalSetListing(_info(r, model), counts[r.name]) for r in rows]


def list_revisions(db: Database, model: str, name: str) -> list[EvalSetInfo]:
    """The live revisions of set ``name``, newest first; NotFound names the sets there are."""
    validate_model_name(model)
    validate_set_name(name)
    with db.transaction() as session:
        row = model_row(session, model)
        rows = session.scalars(_live(row.id).where(EvalSet.name == name)
                               .order_by(EvalSet.revision.desc())).all()
        if not rows:
            raise _no_such_set(session, row, name)
        return [_info(r, model) for r in rows]


def get_eval_set(db: Database, model: str, name: str, revision: int | None = None, *,
                 include_deleted: bool = False) -> EvalSetInfo:
    """A revision of set ``name`` (the latest live one when None).  A deleted revision is NotFound unless
    ``include_deleted`` (a report that names it still shows what it was)."""
    validate_model_name(model)
    validate_set_name(name)
    with db.transaction() as session:
        row = model_row(session, model)
        return _info(_revision_row(session, row, name, revision, include_deleted=include_deleted), model)


def _revision_row(session: Session, model: RegisteredModel, name: str, revision: int | None, *,
                  include_deleted: bool = False) -> EvalSet:
    if revision is None:
        found = session.scalar(_live(model.id).where(EvalSet.name == name)
                               .order_by(EvalSet.revision.desc()).limit(1))
        if found is None:
            raise _no_such_set(session, model, name)
        return found
    found = None if not 1 <= revision <= MAX_REVISION else session.scalar(
        sa.select(EvalSet).where(EvalSet.model_id == model.id, EvalSet.name == name, EvalSet.revision == revision))
    if found is not None and (found.deleted_at is None or include_deleted):
        return found
    live = list(session.scalars(sa.select(EvalSet.revision).where(
        EvalSet.model_id == model.id, EvalSet.name == name, EvalSet.deleted_at.is_(None)).order_by(EvalSet.revision)))
    if not live and found is None:
        raise _no_such_set(session, model, name)
    what = f"was deleted on {found.deleted_at:%Y-%m-%d %H:%M} UTC" if found is not None else "does not exist"
    hint = f"its revisions are: {', '.join(map(str, live))}" if live else "it has no revisions left"
    raise NotFound(f"revision {revision} of evaluation set {name!r} of model {model.name!r} {what} ({hint})",
                   code="eval_set_not_found")


def delete_eval_set(db: Database, model: str, name: str, revision: int | None = None,
                    actor: Actor = SYSTEM) -> list[int]:
    """Delete one revision of set ``name``, or all of them (``revision`` None); returns the revisions
    deleted.  Rows stay as tombstones; the blobs go with ``registry gc`` once nothing else refers to them."""
    validate_set_name(name)
    with model_write(db, model) as (session, row):
        if revision is None:
            rows = list(session.scalars(_live(row.id).where(EvalSet.name == name)
                                        .order_by(EvalSet.revision)))
            if not rows:
                raise _no_such_set(session, row, name)
        else:
            rows = [_revision_row(session, row, name, revision)]
        now = utcnow()
        for r in rows:
            r.deleted_at = now
        revisions = [r.revision for r in rows]
        audit.record(session, actor, "eval_set.delete", f"{model}/{name}" + (f"@{revision}" if revision else ""),
                     {"revisions": revisions, "sha256": sorted({r.sha256 for r in rows})})
        return revisions
