"""Versions: pushing the next one, editing it, choosing its prediction output, reading one or a page of them.

Version numbers come from a per-model counter, ``last_version``, set inside the
push transaction to ``last_version + 1`` or to the number the push asks for
(TF Serving's folder number of an imported export), which must be above it: a
number is never reused nor goes back, also after deletes.  The row lock
(PostgreSQL) or the write lock (SQLite) serialises concurrent pushes, a
rolled-back push gives its number back, and the unique constraint on
``(model_id, version)`` backs it up.  The push transaction also adds the
version's conversion job (claimed by ``registry.jobs``), so the job exists if
and only if the version does.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from registry import pagination, signatures as sigs
from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.mapping import version_entities
from registry.catalog.names import MAX_VERSION, validate_model_name
from registry.catalog.rows import model_row, model_write, resolve_version_row
from registry.db import Database
from registry.entities import (CONVERT, PREPROCESSING_KEYS, QUEUED, READY, SAVED_MODEL, FileInfo, NewFile, Page,
                               VersionInfo)
from registry.errors import Conflict, InvalidRequest, NotFound
from registry.models import Job, ModelVersion, RegisteredModel, VersionFile, VersionTag, utcnow
from registry.webhooks import events as webhooks


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
    signatures: list[dict] | None = None,
    tags: dict[str, str] | None = None,
    lineage: dict[str, str] | None = None,
    max_attempts: int = 3,
    actor: Actor = SYSTEM,
    version: int | None = None,
) -> VersionInfo:
    """Register version ``version`` of ``name`` (None: the next one), creating the model on first push,
    and queue its conversion, all in one transaction."""
    validate_model_name(name)
    if version is not None:
        version = check_version_number(version)
    for attempt in range(5):
        try:
            with db.transaction(write=True) as session:
                model_id = _get_or_create_model_id(session, name)
                # Move the counter on (the model's row is locked already, so nothing moves it meanwhile).
                highest = session.scalar(sa.select(RegisteredModel.last_version).where(RegisteredModel.id == model_id))
                number = _number_for(name, highest, version)
                session.execute(
                    sa.update(RegisteredModel)
                    .where(RegisteredModel.id == model_id)
                    .values(last_version=number, version_count=RegisteredModel.version_count + 1,
                            updated_at=utcnow())
                )
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
                    requested_signatures=signatures or None,
                    **{k: v for k, v in (lineage or {}).items() if k in ("source_commit", "run_url", "dataset")},
                )
                session.add(row)
                session.flush()
                session.add_all(VersionTag(version_id=row.id, key=k, value=v, updated_by=actor.name)
                                for k, v in (tags or {}).items())
                session.add_all(
                    VersionFile(version_id=row.id, role=f.role, filename=f.filename, sha256=f.sha256, size=f.size)
                    for f in files
                )
                # its conversion job, claimed by a worker (registry.jobs): committed with the version or not at all
                session.add(Job(kind=CONVERT, version_id=row.id, status=QUEUED, max_attempts=max_attempts))
                webhooks.emit(session, webhooks.VERSION_CREATED, name, {  # the outbox: sent after commit
                    "version": number, "status": QUEUED, "source": source, "tags": dict(tags or {})})
                audit.record(session, actor, "version.push", f"{name}/{number}",
                             {"source": source, "files": [{"role": f.role, "filename": f.filename,
                                                           "sha256": f.sha256, "size": f.size} for f in files],
                              **({"tags": tags} if tags else {})})
                session.flush()
                return version_entities(session, name, [row])[0]
        except IntegrityError:
            # Another push created the model (or took the number) first: go again.
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


# The version columns (``model_versions.version``, ``models.last_version``: registry/models.py, migration
# 0001) are plain Integer columns, 32-bit on PostgreSQL, so no version may be numbered above 2^31 - 1.
# A Unix timestamp in seconds (TF Serving exports' usual folder name, e.g. 1546532211) fits until 2038.
MAX_VERSION_NUMBER = 2**31 - 1


def check_version_number(value: object) -> int:
    """The version number a push asks for, as an int: a whole number from 1 to MAX_VERSION_NUMBER,
    given as an int or as ASCII digits (leading zeros allowed: TF Serving's folder 00000123 is 123)."""
    number = value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdecimal():
        digits = value.strip().lstrip("0") or "0"
        number = int(digits) if len(digits) <= len(str(MAX_VERSION_NUMBER)) else MAX_VERSION_NUMBER + 1
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_VERSION_NUMBER:
        raise InvalidRequest(
            f"the version number to register must be a whole number from 1 to {MAX_VERSION_NUMBER} (2^31 - 1, "
            f"the largest the database keeps), not {value!r}: e.g. 123 for TF Serving's folder 00000123, or "
            "leave it out to get the model's next number", code="invalid_version_number")
    return number


def check_version_available(db: Database, name: str, version: int) -> None:
    """Refuse ``version`` at once when ``name`` (deleted or not) already had that number or a higher one.

    A push checks this before publishing its blobs, so a refused number costs no storage.  The
    counter only goes up once committed, so a number found taken here stays taken; one found free
    is checked again under the row lock by :func:`create_version`.
    """
    with db.transaction() as session:
        highest = session.scalar(sa.select(RegisteredModel.last_version).where(RegisteredModel.name == name))
    if highest is not None:
        _number_for(name, highest, version)


def _number_for(name: str, highest: int, asked: int | None) -> int:
    """The number a new version of ``name`` gets: ``asked`` if above ``highest`` (the highest number the
    model ever had), else the next one; a Conflict that says what to do when there is none."""
    if asked is not None and asked <= highest:
        instead = (f"push without a version number to get {highest + 1}, or choose a number above {highest}"
                   if highest < MAX_VERSION_NUMBER else "push it under another model name")
        raise Conflict(f"model {name!r} already had version {highest} (numbers are never reused nor go back, "
                       f"also after a delete), so it cannot get version {asked}: {instead}",
                       code="version_number_taken")
    if asked is None and highest >= MAX_VERSION_NUMBER:
        raise Conflict(f"model {name!r} already had version {highest}, the largest number a version can have "
                       f"({MAX_VERSION_NUMBER}): push it under another model name", code="version_numbers_exhausted")
    return highest + 1 if asked is None else asked


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


def validate_preprocessing(values: dict) -> dict:
    """label_image.py settings: whole sizes of 1-8192 pixels, a mean, and a non-zero std."""
    unknown = sorted(set(values) - set(PREPROCESSING_KEYS))
    if unknown:
        raise InvalidRequest(
            f"unknown preprocessing setting(s) {', '.join(unknown)}: use {', '.join(PREPROCESSING_KEYS)}",
            code="invalid_preprocessing",
        )
    out: dict = {}
    for key, value in values.items():
        if isinstance(value, int) and abs(value) > MAX_VERSION:  # no float holds it: OverflowError
            raise InvalidRequest(f"{key} must be a number below 2^63, not one of 20 or more digits",
                                 code="invalid_preprocessing")
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
    with model_write(db, name) as (session, model):
        row = resolve_version_row(session, model, ref)
        if preprocessing is not None:
            row.preprocessing = {**(row.preprocessing or {}), **validate_preprocessing(preprocessing)} or None
        if description is not None:
            row.description = description
        row.updated_at = utcnow()
        changes = {k: v for k, v in {"preprocessing": preprocessing, "description": description}.items()
                   if v is not None}
        audit.record(session, actor, "version.update", f"{name}/{row.version}", changes)
        session.flush()
        return version_entities(session, name, [row])[0]


MAX_REASON = 1000  # characters of the reason given with a new prediction output


def prediction_outputs(version: VersionInfo) -> list[str]:
    """The outputs :label and :compare may rank classes by: the default signature's output nodes."""
    signature = version.signature_map.get(version.default_signature)
    nodes = set(sigs.node_names(signature, "outputs")) if signature else set()
    return [node for node in version.output_nodes or [] if node in nodes]


def signature_report(version: VersionInfo) -> dict:
    """A version's signatures as the API, the pages and the CLI show them: each with its verification
    (a version converted before signatures were verified one by one has its one signature's from the
    freeze), the ones that could not be frozen or verified, and the prediction output with why."""
    conversion = version.conversion or {}
    signatures = {}
    stored = version.signature_map
    for name in sorted(stored, key=lambda n: (n != version.default_signature, n)):  # the default first
        signature = stored[name]
        if name == version.default_signature and "verification" not in signature and conversion.get("verification"):
            signature = {**signature, "verification": conversion["verification"]}
        signatures[name] = signature
    node = version.prediction_node
    recorded = conversion.get("prediction_output") or {}
    if node is None:
        reason = None
    elif recorded.get("node") == node and recorded.get("reason"):
        reason = recorded["reason"]
    elif len(version.output_nodes or []) == 1:
        reason = "its only output"
    else:
        reason = "the first output (the conversion recorded no choice)"
    return {"default_signature": version.default_signature, "signatures": signatures or None,
            "failed_signatures": dict(conversion.get("failed_signatures") or {}),
            "prediction_output": node, "prediction_output_reason": reason,
            "prediction_outputs": prediction_outputs(version)}


def set_prediction_output(db: Database, name: str, ref: str, node: str, *, reason: str = "",
                          actor: Actor = SYSTEM) -> VersionInfo:
    """Choose the output :label and :compare rank classes by, among the default signature's outputs.

    The label service reads the choice from the version it resolves for each request, so it applies
    without loading the graph again.  Why this output is kept with the conversion's own record
    (``conversion["prediction_output"]``): the user's choice and reason, or, when the converter's
    choice is chosen again without a reason, the converter's reason.
    """
    node = (node or "").strip()
    node = node[:-2] if node.endswith(":0") else node
    reason = (reason or "").strip()
    if len(reason) > MAX_REASON:
        raise InvalidRequest(f"the reason is {len(reason)} characters long: say why in at most {MAX_REASON}",
                             code="invalid_prediction_output")
    with model_write(db, name) as (session, model):
        row = resolve_version_row(session, model, ref)
        if row.status != READY:
            raise Conflict(f"version {row.version} of {name!r} is {row.status}: its outputs are known once it is "
                           "ready; choose its prediction output then", code="version_not_ready")
        version = version_entities(session, name, [row])[0]
        choices = prediction_outputs(version)
        if node not in choices:
            raise InvalidRequest(
                f"{node!r} is not an output of the {version.default_signature} signature of version "
                f"{row.version} of {name!r}: choose one of {', '.join(choices) or 'none'}",
                code="invalid_prediction_output")
        conversion = dict(row.conversion or {})
        recorded = conversion.get("prediction_output") or {}
        converter = recorded.get("converter") if "set_by" in recorded else (recorded or None)
        now = utcnow()
        if converter and converter.get("node") == node and not reason:  # back to the converter's choice
            conversion["prediction_output"] = converter
        else:
            conversion["prediction_output"] = {
                "node": node, "set_by": actor.name, "set_at": now.isoformat(),
                "reason": f"chosen by {actor.name} on {now:%Y-%m-%d %H:%M} UTC" + (f": {reason}" if reason else ""),
                **({"converter": converter} if converter else {})}
        previous = version.prediction_node
        row.conversion = conversion
        row.prediction_output = node
        row.updated_at = now
        audit.record(session, actor, "version.update", f"{name}/{row.version}",
                     {"prediction_output": node, "previous": previous, **({"reason": reason} if reason else {})})
        session.flush()
        return version_entities(session, name, [row])[0]


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
        if new.role == SAVED_MODEL:
            row.saved_model_state, row.saved_model_message = READY, ""
            session.flush()
        return FileInfo(existing.role, existing.filename, existing.sha256, existing.size)


def get_version(db: Database, name: str, ref: str) -> VersionInfo:
    validate_model_name(name)
    with db.transaction() as session:
        model = model_row(session, name)
        row = resolve_version_row(session, model, ref)
        return version_entities(session, name, [row])[0]


def get_version_by_id(db: Database, version_id: int) -> VersionInfo:
    with db.transaction() as session:
        row = session.get(ModelVersion, version_id)
        if row is None:
            raise NotFound(f"version id {version_id} does not exist", code="version_not_found")
        model_name = session.scalar(sa.select(RegisteredModel.name).where(RegisteredModel.id == row.model_id))
        return version_entities(session, model_name, [row])[0]


def list_versions(
    db: Database, name: str, *, page_size: int | None = None, page_token: str | None = None,
    status: str | None = None, summary: bool = False,
) -> Page:
    """Versions newest first, by keyset on the version number.

    ``summary`` leaves out what a listing page does not show (the conversion
    report and the file list), so a page costs the same for 10 or 10,000 versions.
    """
    validate_model_name(name)
    size = pagination.page_size(page_size)
    with db.transaction() as session:
        model = model_row(session, name)
        query = sa.select(ModelVersion).where(ModelVersion.model_id == model.id)
        if summary:
            query = query.options(defer(ModelVersion.conversion, raiseload=True),
                                  defer(ModelVersion.signatures, raiseload=True))
        if status:
            query = query.where(ModelVersion.status == status)
        if page_token:
            before = pagination.decode_token(page_token)
            if not isinstance(before, int):
                raise InvalidRequest("invalid page_token for this listing", code="invalid_page_token")
            query = query.where(ModelVersion.version < before)
        rows = session.scalars(query.order_by(ModelVersion.version.desc()).limit(size + 1)).all()
        token = pagination.encode_token(rows[size - 1].version) if len(rows) > size else None
        return Page(version_entities(session, name, rows[:size], summary=summary), token)
