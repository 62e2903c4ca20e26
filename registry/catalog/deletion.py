"""Deleting versions and models.

Deleting removes rows for real (a version's files, aliases and job go with it)
but never the counter: a deleted model stays as a tombstone row, so numbers are
never handed out twice.  Blobs are left to the garbage collector
(``registry.jobs.gc``).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.names import version_number
from registry.catalog.rows import model_write, resolve_version_row
from registry.catalog.aliases import record_removal
from registry.catalog.shadow import stop_shadows_of_version
from registry.db import Database
from registry.entities import CONVERT, QUEUED, RUNNING, DeletedModel, DeletedVersion
from registry.errors import InvalidRequest, NotFound
from registry.models import Agreement, Alias, EvalSet, Job, ModelVersion, RegisteredModel, VersionFile, utcnow
from registry.webhooks import events as webhooks


def _delete_versions(session: Session, version_ids) -> tuple[int, int]:
    """Remove versions with their files, aliases and jobs; return how many versions
    went and how many conversions were still pending (queued or running), which deleting
    them cancels (a pending SavedModel build of a ready version goes too, uncounted)."""
    pending = session.scalar(
        sa.select(sa.func.count()).select_from(Job)
        .where(Job.version_id.in_(version_ids), Job.status.in_((QUEUED, RUNNING)), Job.kind == CONVERT)
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
    with model_write(db, name) as (session, model):
        if version_number(ref) is None:
            row = resolve_version_row(session, model, ref)  # 404 for an unknown alias first
            raise InvalidRequest(
                f"delete a version by its number, not {ref!r} (it means version {row.version} now): "
                f"DELETE /api/v1/models/{name}/versions/{row.version}",
                code="delete_by_number",
            )
        row = resolve_version_row(session, model, ref)
        aliases = list(session.scalars(
            sa.select(Alias.name).where(Alias.version_id == row.id).order_by(Alias.name)))
        session.execute(sa.delete(Agreement).where(
            Agreement.model_id == model.id, sa.or_(Agreement.newer == row.version, Agreement.older == row.version)))
        stop_shadows_of_version(session, name, row, actor)  # shadowing it stops, audited
        for alias in aliases:  # the alias's history says where it went
            record_removal(session, model.id, alias, row.version, actor, f"version {row.version} deleted")
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
        webhooks.emit(session, webhooks.VERSION_DELETED, name, {
            "version": row.version, "versions": [row.version], "status": row.status, "aliases_removed": aliases,
            "model_deleted": False, "actor": actor.name})
        return DeletedVersion(name, row.version, row.status, aliases, cancelled > 0)


def delete_model(db: Database, name: str, actor: Actor = SYSTEM) -> DeletedModel:
    """Delete a model and every version of it.

    The model's row stays as a tombstone holding its version counter: pushing the
    same name again starts after the highest number it ever had.
    """
    with model_write(db, name) as (session, model):
        ids = list(session.scalars(sa.select(ModelVersion.id).where(ModelVersion.model_id == model.id)))
        aliases = list(session.scalars(
            sa.select(Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)))
        webhooks.emit(session, webhooks.VERSION_DELETED, name, {  # one event for every version of the model
            "version": None, "versions": list(session.scalars(sa.select(ModelVersion.version).where(
                ModelVersion.model_id == model.id).order_by(ModelVersion.version))),
            "aliases_removed": aliases, "model_deleted": True, "actor": actor.name})
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
        # its evaluation sets go too (tombstones, as a deleted set's; registry gc frees their blobs)
        session.execute(sa.update(EvalSet).where(EvalSet.model_id == model.id, EvalSet.deleted_at.is_(None))
                        .values(deleted_at=now))
        audit.record(session, actor, "model.delete", name,
                     {"versions_deleted": len(ids), "aliases_removed": aliases, "jobs_cancelled": cancelled})
        return DeletedModel(name, len(ids), aliases, cancelled, model.last_version)
