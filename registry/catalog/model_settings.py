"""What an admin or a writer sets on a model: the op allowlist and the versions a TF Serving export serves.

Both are recorded in the audit log; neither converts anything again: the
label service and the export read them on every request or sync.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry import safety
from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.mapping import model_entities
from registry.catalog.names import validate_model_name
from registry.catalog.rows import model_row, model_write
from registry.db import Database
from registry.entities import ModelInfo
from registry.errors import InvalidRequest, NotFound
from registry.models import AuditEvent, ModelVersion, RegisteredModel, utcnow

ALLOWED_OPS_ACTION = "model.allowed_ops"

def _allowed_ops_answer(session: Session, model: RegisteredModel) -> dict:
    last = session.scalar(
        sa.select(AuditEvent).where(AuditEvent.action == ALLOWED_OPS_ACTION, AuditEvent.target == model.name)
        .order_by(AuditEvent.id.desc()).limit(1))
    change = None
    if last is not None:
        change = {"actor": last.actor, "at": last.created_at,
                  "reason": (last.details or {}).get("reason", "")}
    return {"model": model.name, "ops": list(model.allowed_ops or []), "last_change": change}


def get_allowed_ops(db: Database, name: str) -> dict:
    """The model's op allowlist and who changed it last (from the audit log)."""
    validate_model_name(name)
    with db.transaction() as session:
        return _allowed_ops_answer(session, model_row(session, name))


def set_allowed_ops(db: Database, name: str, ops: object, reason: str = "", actor: Actor = SYSTEM) -> dict:
    """Replace the model's op allowlist (an empty list clears it), recorded in the audit log.

    Existing versions are not converted again: whether the label service runs
    them is decided from their stored safety report and this list on every
    request (``registry.safety``).
    """
    validate_model_name(name)
    new = safety.validate_ops(ops)
    reason = (reason or "").strip()
    with model_write(db, name) as (session, model):
        old = list(model.allowed_ops or [])
        if set(new) - set(old) and not reason:  # removing ops only restricts: no reason needed
            raise InvalidRequest('say why these ops are safe for this model: send "reason" (kept in the audit '
                                 "log)", code="missing_reason")
        model.allowed_ops = new or None
        model.updated_at = utcnow()
        audit.record(session, actor, ALLOWED_OPS_ACTION, name,
                     {"old": old, "new": new, "added": sorted(set(new) - set(old)),
                      "removed": sorted(set(old) - set(new)), "reason": reason})
        session.flush()
        return _allowed_ops_answer(session, model)


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
    with model_write(db, name) as (session, model):
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
        return model_entities(session, [model])[0]
