"""Aliases: names that point at a version of a model, moved by a write on the model."""

from __future__ import annotations

import sqlalchemy as sa

from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.mapping import version_entities
from registry.catalog.names import validate_alias_name, validate_model_name
from registry.catalog.rows import model_write, resolve_version_row
from registry.db import Database
from registry.entities import FAILED, VersionInfo
from registry.errors import Conflict, NotFound
from registry.models import Alias, ModelVersion, utcnow


def set_alias(db: Database, name: str, alias: str, version: int, actor: Actor = SYSTEM) -> VersionInfo:
    """Point ``alias`` at ``version`` (creating or moving it)."""
    validate_model_name(name)
    validate_alias_name(alias)
    with model_write(db, name) as (session, model):
        row = resolve_version_row(session, model, str(version))
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
        return version_entities(session, name, [row])[0]


def delete_alias(db: Database, name: str, alias: str, actor: Actor = SYSTEM) -> None:
    with model_write(db, name) as (session, model):
        existing = session.scalar(sa.select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
        if existing is None:
            raise NotFound(f"model {name!r} has no alias {alias!r}", code="alias_not_found")
        number = session.scalar(sa.select(ModelVersion.version).where(ModelVersion.id == existing.version_id))
        session.delete(existing)
        audit.record(session, actor, "alias.delete", f"{name}:{alias}", {"version": number})
