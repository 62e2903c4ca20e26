"""Models, versions and aliases: the registry's business rules.

Every function here owns its transaction.  Version numbers come from a per-model
counter bumped by ``UPDATE ... SET last_version = last_version + 1`` inside the
push transaction: the row lock (PostgreSQL) or the write lock (SQLite)
serialises concurrent pushes, a rolled-back push gives its number back, and the
unique constraint on ``(model_id, version)`` backs it up.

Every other write on a model (deleting, moving aliases, editing) runs in a write
transaction that first locks the model's row (``SELECT ... FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so writes on one model happen one
after another: of two deletes of a version one wins and the other finds nothing
(404), an alias is never moved onto a version deleted meanwhile, and
``version_count`` stays the number of rows.

Deleting removes rows for real (a version's files, aliases and job go with it)
but never the counter: a deleted model stays as a tombstone row, so numbers are
never handed out twice.  Blobs are left to the garbage collector (``registry.gc``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, defer
from sqlalchemy.orm.exc import StaleDataError

from registry import audit, jobs
from registry.audit import SYSTEM, Actor
from registry.db import Database
from registry.entities import (
    FAILED,
    DeletedModel,
    DeletedVersion,
    QUEUED,
    READY,
    FileInfo,
    ModelInfo,
    NewFile,
    Page,
    VersionInfo,
    _iso,
)
from registry.errors import Conflict, InvalidRequest, NotFound
from registry.models import Agreement, Alias, AuditEvent, Job, ModelVersion, RegisteredModel, VersionFile, utcnow

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
RESERVED_ALIASES = {"latest"}
MAX_PAGE_SIZE = 1000


def validate_model_name(name: str) -> str:
    if not MODEL_NAME_RE.match(name or ""):
        raise InvalidRequest(
            f"invalid model name {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            code="invalid_model_name",
        )
    return name


def validate_alias_name(alias: str) -> str:
    if not ALIAS_RE.match(alias or "") or alias in RESERVED_ALIASES:
        raise InvalidRequest(
            f"invalid alias {alias!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter ('latest' is reserved: it always means the newest ready version)",
            code="invalid_alias",
        )
    return alias


def validate_preprocessing(values: dict) -> dict:
    """label_image.py settings: whole sizes of 1-8192 pixels, a mean, and a non-zero std."""
    from registry.entities import PREPROCESSING_KEYS

    unknown = sorted(set(values) - set(PREPROCESSING_KEYS))
    if unknown:
        raise InvalidRequest(
            f"unknown preprocessing setting(s) {', '.join(unknown)}: use {', '.join(PREPROCESSING_KEYS)}",
            code="invalid_preprocessing",
        )
    out: dict = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if number != number or number in (float("inf"), float("-inf")) or isinstance(value, bool):
            raise InvalidRequest(f"{key} must be a number, not {value!r}", code="invalid_preprocessing")
        if key in ("input_height", "input_width"):
            if number != int(number) or not 1 <= number <= 8192:
                raise InvalidRequest(f"{key} must be a whole number of pixels from 1 to 8192", code="invalid_preprocessing")
            out[key] = int(number)
        elif key == "input_std" and number == 0:
            raise InvalidRequest("input_std must not be 0 (pixels are divided by it)", code="invalid_preprocessing")
        else:
            out[key] = number
    return out


def update_version(db: Database, name: str, ref: str, *, preprocessing: dict | None = None,
                   description: str | None = None, actor: Actor = SYSTEM) -> VersionInfo:
    """Edit what may change after a push: preprocessing settings and the description."""
    with _model_write(db, name) as (session, model):
        row = _resolve_version_row(session, model, ref)
        if preprocessing is not None:
            row.preprocessing = {**(row.preprocessing or {}), **validate_preprocessing(preprocessing)} or None
        if description is not None:
            row.description = description
        row.updated_at = utcnow()
        changes = {k: v for k, v in {"preprocessing": preprocessing, "description": description}.items()
                   if v is not None}
        audit.record(session, actor, "version.update", f"{name}/{row.version}", changes)
        session.flush()
        return _version_entities(session, name, [row])[0]


# -- page tokens ---------------------------------------------------------------

def _encode_token(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _decode_token(token: str) -> object:
    try:
        padded = token + "=" * (-len(token) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            "invalid page_token: pass the next_page_token of the previous page unchanged",
            code="invalid_page_token",
        ) from exc


def _page_size(page_size: int | None, default: int = 100) -> int:
    size = default if page_size is None else page_size
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page_size must be between 1 and {MAX_PAGE_SIZE}", code="invalid_page_size")
    return size


# -- loading helpers -------------------------------------------------------------

def _model_row(session: Session, name: str, *, lock: bool = False) -> RegisteredModel:
    query = sa.select(RegisteredModel).where(RegisteredModel.name == name, RegisteredModel.deleted_at.is_(None))
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFound(f"model {name!r} does not exist: push a version to create it", code="model_not_found")
    return row


@contextmanager
def _model_write(db: Database, name: str) -> Iterator[tuple[Session, RegisteredModel]]:
    """A write transaction holding the model's row lock, for a change decided on what it reads.

    The lock makes writes on one model take turns, so the constraint errors a
    race would cause cannot happen; should one still come, it is answered as a
    409 to retry rather than a 500.
    """
    validate_model_name(name)
    try:
        with db.transaction(write=True) as session:
            yield session, _model_row(session, name, lock=True)
    except (IntegrityError, StaleDataError) as exc:
        raise Conflict(f"model {name!r} changed while this request ran (another request deleted or moved "
                       "something at the same time): look at it again and retry", code="concurrent_change") from exc


def _aliases_by_version(session: Session, version_ids: Sequence[int]) -> dict[int, list[str]]:
    if not version_ids:
        return {}
    rows = session.execute(
        sa.select(Alias.version_id, Alias.name).where(Alias.version_id.in_(version_ids)).order_by(Alias.name)
    )
    out: dict[int, list[str]] = {}
    for version_id, name in rows:
        out.setdefault(version_id, []).append(name)
    return out


def _version_entities(
    session: Session, model_name: str, rows: Sequence[ModelVersion], *, summary: bool = False
) -> list[VersionInfo]:
    ids = [row.id for row in rows]
    files: dict[int, list[FileInfo]] = {}
    if ids and not summary:
        for f in session.scalars(
            sa.select(VersionFile).where(VersionFile.version_id.in_(ids)).order_by(VersionFile.id)
        ):
            files.setdefault(f.version_id, []).append(FileInfo(f.role, f.filename, f.sha256, f.size))
    aliases = _aliases_by_version(session, ids)
    agreement = _agreement_with_previous(session, rows)
    allowed_ops = list(session.scalar(
        sa.select(RegisteredModel.allowed_ops).where(RegisteredModel.name == model_name)) or []) if rows else []
    return [
        VersionInfo(
            id=row.id,
            model=model_name,
            version=row.version,
            status=row.status,
            status_message=row.status_message,
            source=row.source,
            description=row.description,
            requested_output_nodes=row.requested_output_nodes,
            requested_input_nodes=row.requested_input_nodes,
            output_nodes=row.output_nodes,
            output_nodes_detected=row.output_nodes_detected,
            input_nodes=row.input_nodes,
            frozen_sha256=row.frozen_sha256,
            frozen_size=row.frozen_size,
            tf_version=row.tf_version,
            conversion=None if summary else row.conversion,
            created_at=row.created_at,
            updated_at=row.updated_at,
            ready_at=row.ready_at,
            preprocessing_settings=row.preprocessing,
            signature=row.signature,
            files=files.get(row.id, []),
            aliases=aliases.get(row.id, []),
            agreement_with_previous=agreement.get(row.version),
            allowed_ops=allowed_ops,
        )
        for row in rows
    ]


def _agreement_with_previous(session: Session, rows: Sequence[ModelVersion]) -> dict[int, dict]:
    """Top-1 agreement of each version with the existing version before it (deleted
    ones are skipped), where a comparison measured it."""
    if not rows:
        return {}
    model_id = rows[0].model_id
    numbers = [row.version for row in rows]
    before = aliased(ModelVersion)
    previous = (
        sa.select(sa.func.max(before.version))
        .where(before.model_id == model_id, before.version < Agreement.newer)
        .correlate(Agreement)
        .scalar_subquery()
    )
    found = session.execute(
        sa.select(Agreement.newer, Agreement.older, Agreement.top1_agreement, Agreement.images)
        .where(Agreement.model_id == model_id, Agreement.newer.in_(numbers), Agreement.older == previous)
    )
    return {newer: {"version": older, "top1_agreement": rate, "images": images}
            for newer, older, rate, images in found}


def record_agreements(db: Database, name: str, pairs: Sequence[tuple[int, int, float, float | None, int]]) -> None:
    """Remember what a comparison found: (version, version, top-1 agreement, mean |diff|, images)."""
    if not pairs:
        return
    with _model_write(db, name) as (session, model):
        for a, b, rate, diff, images in pairs:
            newer, older = max(a, b), min(a, b)
            row = session.scalar(sa.select(Agreement).where(
                Agreement.model_id == model.id, Agreement.newer == newer, Agreement.older == older))
            if row is None:
                session.add(Agreement(model_id=model.id, newer=newer, older=older, top1_agreement=rate,
                                      mean_abs_score_diff=diff, images=images))
            else:
                row.top1_agreement, row.mean_abs_score_diff, row.images = rate, diff, images
                row.updated_at = utcnow()


MAX_VERSION = 2**63 - 1  # the largest number either database compares (SQLite raises OverflowError past it)


def version_number(ref: str) -> int | None:
    """The version number ``ref`` writes in ASCII digits, or None when ``ref`` is a name ('latest', an
    alias).  Other digits ('²', '٣': ``str.isdigit`` accepts them, ``int`` does not always) are refused;
    a number past MAX_VERSION comes back as MAX_VERSION + 1 (no version has it)."""
    if ref.isascii() and ref.isdecimal():
        digits = ref.lstrip("0") or "0"
        return int(digits) if len(digits) <= len(str(MAX_VERSION)) else MAX_VERSION + 1
    if ref.isnumeric():
        raise InvalidRequest(f"version {ref!r} is not a number written with the digits 0-9: use a version "
                             "number such as 3, 'latest' or an alias", code="invalid_version")
    return None


def _resolve_version_row(session: Session, model: RegisteredModel, ref: str) -> ModelVersion:
    ref = (ref or "").strip()
    number = version_number(ref)
    if number is not None:
        row = None if number > MAX_VERSION else session.scalar(
            sa.select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == number)
        )
        if row is None:
            raise NotFound(
                f"model {model.name!r} has no version {ref.lstrip('0') or '0'} "
                f"(versions go up to {model.last_version})",
                code="version_not_found",
            )
        return row
    if ref == "latest":
        row = session.scalar(
            sa.select(ModelVersion)
            .where(ModelVersion.model_id == model.id, ModelVersion.status == READY)
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
        if row is None:
            raise NotFound(
                f"model {model.name!r} has no ready version yet: wait for a conversion to finish "
                "or ask for a version number",
                code="version_not_found",
            )
        return row
    row = session.scalar(
        sa.select(ModelVersion)
        .join(Alias, Alias.version_id == ModelVersion.id)
        .where(Alias.model_id == model.id, Alias.name == ref)
    )
    if row is None:
        known = session.scalars(sa.select(Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)).all()
        hint = f"its aliases are: {', '.join(known)}" if known else "it has no aliases"
        raise NotFound(
            f"model {model.name!r} has no version or alias {ref!r}: use a version number, "
            f"'latest' or an alias ({hint})",
            code="version_not_found",
        )
    return row


# -- pushing -------------------------------------------------------------------------

def create_version(
    db: Database,
    name: str,
    *,
    source: str,
    files: Sequence[NewFile],
    description: str = "",
    output_nodes: list[str] | None = None,
    input_nodes: list[str] | None = None,
    preprocessing: dict | None = None,
    signature: str | None = None,
    max_attempts: int = 3,
    actor: Actor = SYSTEM,
) -> VersionInfo:
    """Register the next version of ``name`` (creating the model on first push)
    and queue its conversion, all in one transaction."""
    validate_model_name(name)
    for attempt in range(5):
        try:
            with db.transaction(write=True) as session:
                model_id = _get_or_create_model_id(session, name)
                # Bump the counter (the model's row is locked already).
                session.execute(
                    sa.update(RegisteredModel)
                    .where(RegisteredModel.id == model_id)
                    .values(last_version=RegisteredModel.last_version + 1,
                            version_count=RegisteredModel.version_count + 1, updated_at=utcnow())
                )
                number = session.scalar(sa.select(RegisteredModel.last_version).where(RegisteredModel.id == model_id))
                row = ModelVersion(
                    model_id=model_id,
                    version=number,
                    status=QUEUED,
                    status_message="waiting for a converter worker",
                    source=source,
                    description=description,
                    requested_output_nodes=output_nodes or None,
                    requested_input_nodes=input_nodes or None,
                    preprocessing=validate_preprocessing(preprocessing) if preprocessing else None,
                    signature=signature or None,
                )
                session.add(row)
                session.flush()
                session.add_all(
                    VersionFile(version_id=row.id, role=f.role, filename=f.filename, sha256=f.sha256, size=f.size)
                    for f in files
                )
                jobs.enqueue(session, version_id=row.id, max_attempts=max_attempts)
                audit.record(session, actor, "version.push", f"{name}/{number}",
                             {"source": source, "files": [{"role": f.role, "filename": f.filename,
                                                           "sha256": f.sha256, "size": f.size} for f in files]})
                session.flush()
                return _version_entities(session, name, [row])[0]
        except IntegrityError:
            # Another push created the model (or took the number) first: go again.
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _get_or_create_model_id(session: Session, name: str) -> int:
    """The model's id, its row locked; a deleted model comes back with its counter, so numbers go on.

    The lock comes before looking at ``deleted_at``: a push waits for a delete of
    the model to commit, then sees the tombstone and brings the model back, rather
    than adding its version to a model deleted meanwhile.
    """
    model_id, deleted_at = session.execute(
        sa.select(RegisteredModel.id, RegisteredModel.deleted_at).where(RegisteredModel.name == name)
        .with_for_update()
    ).one_or_none() or (None, None)
    if model_id is None:
        model = RegisteredModel(name=name)
        session.add(model)
        session.flush()
        model_id = model.id
    elif deleted_at is not None:
        now = utcnow()
        session.execute(
            sa.update(RegisteredModel).where(RegisteredModel.id == model_id)
            .values(deleted_at=None, description="", created_at=now, updated_at=now)
        )
    return model_id


# -- reading ---------------------------------------------------------------------------

def get_version(db: Database, name: str, ref: str) -> VersionInfo:
    validate_model_name(name)
    with db.transaction() as session:
        model = _model_row(session, name)
        row = _resolve_version_row(session, model, ref)
        return _version_entities(session, name, [row])[0]


def get_version_by_id(db: Database, version_id: int) -> VersionInfo:
    with db.transaction() as session:
        row = session.get(ModelVersion, version_id)
        if row is None:
            raise NotFound(f"version id {version_id} does not exist", code="version_not_found")
        model_name = session.scalar(sa.select(RegisteredModel.name).where(RegisteredModel.id == row.model_id))
        return _version_entities(session, model_name, [row])[0]


def list_versions(
    db: Database, name: str, *, page_size: int | None = None, page_token: str | None = None,
    status: str | None = None, summary: bool = False,
) -> Page:
    """Versions newest first, by keyset on the version number.

    ``summary`` leaves out what a listing page does not show (the conversion
    report and the file list), so a page costs the same for 10 or 10,000 versions.
    """
    validate_model_name(name)
    size = _page_size(page_size)
    with db.transaction() as session:
        model = _model_row(session, name)
        query = sa.select(ModelVersion).where(ModelVersion.model_id == model.id)
        if summary:
            query = query.options(defer(ModelVersion.conversion, raiseload=True))
        if status:
            query = query.where(ModelVersion.status == status)
        if page_token:
            before = _decode_token(page_token)
            if not isinstance(before, int):
                raise InvalidRequest("invalid page_token for this listing", code="invalid_page_token")
            query = query.where(ModelVersion.version < before)
        rows = session.scalars(query.order_by(ModelVersion.version.desc()).limit(size + 1)).all()
        token = _encode_token(rows[size - 1].version) if len(rows) > size else None
        return Page(_version_entities(session, name, rows[:size], summary=summary), token)


def _model_entities(session: Session, rows: Sequence[RegisteredModel]) -> list[ModelInfo]:
    ids = [row.id for row in rows]
    if not ids:
        return []
    # Newest ready version per model: one index lookup each, however many versions there are.
    newest_ready = (
        sa.select(ModelVersion.version)
        .where(ModelVersion.model_id == RegisteredModel.id, ModelVersion.status == READY)
        .order_by(ModelVersion.version.desc())
        .limit(1)
        .correlate(RegisteredModel)
        .scalar_subquery()
    )
    latest = dict(session.execute(sa.select(RegisteredModel.id, newest_ready).where(RegisteredModel.id.in_(ids))).all())
    aliases: dict[int, dict[str, int]] = {}
    for model_id, alias, number in session.execute(
        sa.select(Alias.model_id, Alias.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == Alias.version_id)
        .where(Alias.model_id.in_(ids))
        .order_by(Alias.name)
    ):
        aliases.setdefault(model_id, {})[alias] = number
    return [
        ModelInfo(
            name=row.name,
            description=row.description,
            version_count=row.version_count,
            latest_version=latest.get(row.id),
            last_version=row.last_version,
            aliases=aliases.get(row.id, {}),
            created_at=row.created_at,
            updated_at=row.updated_at,
            allowed_ops=list(row.allowed_ops or []),
            served_versions=row.served_versions,
        )
        for row in rows
    ]


def get_model(db: Database, name: str) -> ModelInfo:
    validate_model_name(name)
    with db.transaction() as session:
        return _model_entities(session, [_model_row(session, name)])[0]


def list_models(
    db: Database, *, page_size: int | None = None, page_token: str | None = None, query: str | None = None
) -> Page:
    """Models by name, by keyset on the name; ``query`` filters by substring."""
    size = _page_size(page_size)
    with db.transaction() as session:
        stmt = sa.select(RegisteredModel).where(RegisteredModel.deleted_at.is_(None))
        if query:
            escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(RegisteredModel.name.ilike(f"%{escaped}%", escape="\\"))
        if page_token:
            after = _decode_token(page_token)
            if not isinstance(after, str):
                raise InvalidRequest("invalid page_token for this listing", code="invalid_page_token")
            stmt = stmt.where(RegisteredModel.name > after)
        rows = session.scalars(stmt.order_by(RegisteredModel.name).limit(size + 1)).all()
        token = _encode_token(rows[size - 1].name) if len(rows) > size else None
        return Page(_model_entities(session, rows[:size]), token)


# -- aliases ----------------------------------------------------------------------------

def set_alias(db: Database, name: str, alias: str, version: int, actor: Actor = SYSTEM) -> VersionInfo:
    """Point ``alias`` at ``version`` (creating or moving it)."""
    validate_model_name(name)
    validate_alias_name(alias)
    with _model_write(db, name) as (session, model):
        row = _resolve_version_row(session, model, str(version))
        if row.status == FAILED:
            raise Conflict(
                f"version {row.version} of {name!r} failed to convert ({row.status_message}); "
                "point the alias at a version that is ready or still converting",
                code="version_failed",
            )
        existing = session.scalar(sa.select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
        previous = None
        if existing is None:
            session.add(Alias(model_id=model.id, name=alias, version_id=row.id))
        else:
            previous = session.scalar(sa.select(ModelVersion.version).where(ModelVersion.id == existing.version_id))
            existing.version_id = row.id
            existing.updated_at = utcnow()
        audit.record(session, actor, "alias.set", f"{name}:{alias}", {"version": row.version, "previous": previous})
        session.flush()
        return _version_entities(session, name, [row])[0]


def delete_alias(db: Database, name: str, alias: str, actor: Actor = SYSTEM) -> None:
    with _model_write(db, name) as (session, model):
        existing = session.scalar(sa.select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
        if existing is None:
            raise NotFound(f"model {name!r} has no alias {alias!r}", code="alias_not_found")
        number = session.scalar(sa.select(ModelVersion.version).where(ModelVersion.id == existing.version_id))
        session.delete(existing)
        audit.record(session, actor, "alias.delete", f"{name}:{alias}", {"version": number})


# -- op allowlist ----------------------------------------------------------------------------

ALLOWED_OPS_ACTION = "model.allowed_ops"


def _allowed_ops_answer(session: Session, model: RegisteredModel) -> dict:
    last = session.scalar(
        sa.select(AuditEvent).where(AuditEvent.action == ALLOWED_OPS_ACTION, AuditEvent.target == model.name)
        .order_by(AuditEvent.id.desc()).limit(1))
    change = None
    if last is not None:
        change = {"actor": last.actor, "at": _iso(last.created_at),
                  "reason": (last.details or {}).get("reason", "")}
    return {"model": model.name, "ops": list(model.allowed_ops or []), "last_change": change}


def get_allowed_ops(db: Database, name: str) -> dict:
    """The model's op allowlist and who changed it last (from the audit log)."""
    validate_model_name(name)
    with db.transaction() as session:
        return _allowed_ops_answer(session, _model_row(session, name))


def set_allowed_ops(db: Database, name: str, ops: object, reason: str = "", actor: Actor = SYSTEM) -> dict:
    """Replace the model's op allowlist (an empty list clears it), recorded in the audit log.

    Existing versions are not converted again: whether the label service runs
    them is decided from their stored safety report and this list on every
    request (``registry.safety``).
    """
    from registry import safety

    validate_model_name(name)
    new = safety.validate_ops(ops)
    reason = (reason or "").strip()
    if new and not reason:
        raise InvalidRequest('say why these ops are safe for this model: send "reason" (kept in the audit log)',
                             code="missing_reason")
    with _model_write(db, name) as (session, model):
        old = list(model.allowed_ops or [])
        model.allowed_ops = new or None
        model.updated_at = utcnow()
        audit.record(session, actor, ALLOWED_OPS_ACTION, name,
                     {"old": old, "new": new, "added": sorted(set(new) - set(old)),
                      "removed": sorted(set(old) - set(new)), "reason": reason})
        session.flush()
        return _allowed_ops_answer(session, model)


def is_blob_referenced(db: Database, digest: str) -> bool:
    with db.transaction() as session:
        in_files = session.scalar(sa.select(sa.exists().where(VersionFile.sha256 == digest)))
        as_frozen = session.scalar(sa.select(sa.exists().where(ModelVersion.frozen_sha256 == digest)))
        return bool(in_files or as_frozen)


# -- deleting ---------------------------------------------------------------------------

def _delete_versions(session: Session, version_ids) -> tuple[int, int]:
    """Remove versions with their files, aliases and jobs; return how many versions
    went and how many jobs were still pending (queued or running), which deleting
    them cancels."""
    pending = session.scalar(
        sa.select(sa.func.count()).select_from(Job)
        .where(Job.version_id.in_(version_ids), Job.status.in_((QUEUED, jobs.RUNNING)))
    ) or 0
    for table in (Job, Alias, VersionFile):
        session.execute(sa.delete(table).where(table.version_id.in_(version_ids))
                        .execution_options(synchronize_session=False))
    deleted = session.execute(sa.delete(ModelVersion).where(ModelVersion.id.in_(version_ids))
                              .execution_options(synchronize_session=False)).rowcount
    return deleted, int(pending)


def delete_version(db: Database, name: str, ref: str, actor: Actor = SYSTEM) -> DeletedVersion:
    """Delete one version by number.

    Aliases pointing at it go with it (the answer names them) and a queued or
    running conversion is cancelled: the job row disappears, so the worker's next
    lease renewal fails and it stops without recording anything.  The number
    stays used; the blobs stay until ``registry gc`` finds nothing refers to them.
    """
    ref = (ref or "").strip()
    with _model_write(db, name) as (session, model):
        if version_number(ref) is None:
            row = _resolve_version_row(session, model, ref)  # 404 for an unknown alias first
            raise InvalidRequest(
                f"delete a version by its number, not {ref!r} (it means version {row.version} now): "
                f"DELETE /api/v1/models/{name}/versions/{row.version}",
                code="delete_by_number",
            )
        row = _resolve_version_row(session, model, ref)
        aliases = list(session.scalars(
            sa.select(Alias.name).where(Alias.version_id == row.id).order_by(Alias.name)))
        session.execute(sa.delete(Agreement).where(
            Agreement.model_id == model.id, sa.or_(Agreement.newer == row.version, Agreement.older == row.version)))
        deleted, cancelled = _delete_versions(session, [row.id])
        if deleted != 1:  # cannot happen under the model's lock; never count a delete twice
            raise NotFound(f"model {name!r} has no version {row.version} (deleted just now)",
                           code="version_not_found")
        session.execute(
            sa.update(RegisteredModel).where(RegisteredModel.id == model.id)
            .values(version_count=RegisteredModel.version_count - 1, updated_at=utcnow())
        )
        audit.record(session, actor, "version.delete", f"{name}/{row.version}",
                     {"status": row.status, "aliases_removed": aliases, "job_cancelled": cancelled > 0})
        return DeletedVersion(name, row.version, row.status, aliases, cancelled > 0)


def delete_model(db: Database, name: str, actor: Actor = SYSTEM) -> DeletedModel:
    """Delete a model and every version of it.

    The model's row stays as a tombstone holding its version counter: pushing the
    same name again starts after the highest number it ever had.
    """
    with _model_write(db, name) as (session, model):
        ids = list(session.scalars(sa.select(ModelVersion.id).where(ModelVersion.model_id == model.id)))
        aliases = list(session.scalars(
            sa.select(Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)))
        session.execute(sa.delete(Agreement).where(Agreement.model_id == model.id))
        cancelled = 0
        for start in range(0, len(ids), 500):  # keep each IN list short
            cancelled += _delete_versions(session, ids[start:start + 500])[1]
        session.execute(sa.delete(Alias).where(Alias.model_id == model.id))
        now = utcnow()
        session.execute(
            sa.update(RegisteredModel).where(RegisteredModel.id == model.id)
            .values(version_count=0, deleted_at=now, updated_at=now,
                    allowed_ops=None)  # an admin's allowance is not inherited by a new model of that name
        )
        audit.record(session, actor, "model.delete", name,
                     {"versions_deleted": len(ids), "aliases_removed": aliases, "jobs_cancelled": cancelled})
        return DeletedModel(name, len(ids), aliases, cancelled, model.last_version)


def referenced_digests(db: Database) -> set[str]:
    """Every blob digest a version refers to (uploaded files and frozen graphs)."""
    with db.transaction() as session:
        found = set(session.scalars(sa.select(VersionFile.sha256).distinct()))
        found.update(session.scalars(
            sa.select(ModelVersion.frozen_sha256).where(ModelVersion.frozen_sha256.is_not(None)).distinct()))
        return found


def attach_file(db: Database, version_id: int, new: NewFile) -> FileInfo:
    """Add an artifact made after the conversion (a SavedModel built later) to a
    version, unless one with that role is already there; returns the recorded one."""
    with db.transaction(write=True) as session:
        row = session.get(ModelVersion, version_id, with_for_update=True)
        if row is None:
            raise NotFound(f"version id {version_id} does not exist", code="version_not_found")
        existing = session.scalar(sa.select(VersionFile).where(VersionFile.version_id == version_id,
                                                               VersionFile.role == new.role))
        if existing is None:
            existing = VersionFile(version_id=version_id, role=new.role, filename=new.filename,
                                   sha256=new.sha256, size=new.size)
            session.add(existing)
            session.flush()
        return FileInfo(existing.role, existing.filename, existing.sha256, existing.size)


def set_served_versions(db: Database, name: str, versions: list[int] | str | None,
                        actor: Actor = SYSTEM) -> ModelInfo:
    """Which versions a TensorFlow Serving export serves: a list, "all" (every ready
    version), or None for the default (every aliased version and the newest ready one)."""
    validate_model_name(name)
    if versions is not None and versions != "all":
        if not isinstance(versions, list) or not versions or any(
                not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in versions):
            raise InvalidRequest('"versions" must be a non-empty list of version numbers, "all" for every ready '
                                 "version, or null for the default (every aliased version and the newest ready "
                                 "one)", code="invalid_served_versions")
        versions = sorted(set(versions))
    with _model_write(db, name) as (session, model):
        if isinstance(versions, list):
            known = set(session.scalars(sa.select(ModelVersion.version).where(
                ModelVersion.model_id == model.id, ModelVersion.version.in_(versions))))
            missing = [v for v in versions if v not in known]
            if missing:
                raise NotFound(f"model {name!r} has no version(s) {', '.join(map(str, missing))}",
                               code="version_not_found")
        previous = model.served_versions
        model.served_versions = versions
        session.flush()
        audit.record(session, actor, "model.serving", name, {"versions": versions, "previous": previous})
        return _model_entities(session, [model])[0]
