"""Aliases: names that point at a version of a model, moved by a write on the model.

Every move is kept in the alias's history (from which version to which, who, when, why), so "which
version held production on Tuesday?" has an answer and ``rollback`` can move an alias back.  A model's
admin may protect an alias: moving it then needs the ``promote`` scope (or admin) and a reason, and
its gate (:mod:`registry.catalog.gates`) must pass, unless an admin forces the move with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry import pagination
from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.auth.tokens import ADMIN, PROMOTE, allows
from registry.catalog import gates
from registry.catalog.mapping import version_entities
from registry.catalog.names import validate_alias_name, validate_model_name
from registry.catalog.rows import model_row, model_write, resolve_version_row
from registry.db import Database
from registry.entities import FAILED, Page, VersionInfo
from registry.errors import Conflict, Forbidden, InvalidRequest, NotFound
from registry.models import Alias, AliasMove, AliasRule, ModelVersion, RegisteredModel, utcnow
from registry.webhooks import events as webhooks

MAX_REASON = 1000


@dataclass(frozen=True)
class Move:
    """One move of an alias (``to_version`` None: removed; ``from_version`` None: created)."""

    id: int
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    forced: bool
    at: datetime


@dataclass(frozen=True)
class Rule:
    alias: str
    protected: bool
    gate: dict | None
    updated_by: str
    updated_at: datetime | None


def _reason(reason: str | None) -> str:
    reason = (reason or "").strip()
    if len(reason) > MAX_REASON:
        raise InvalidRequest(f"the reason has {len(reason)} characters: at most {MAX_REASON}", code="invalid_reason")
    return reason


def _rule(session: Session, model: RegisteredModel, alias: str) -> AliasRule | None:
    return session.scalar(sa.select(AliasRule).where(AliasRule.model_id == model.id, AliasRule.alias == alias))


def _check_protection(session: Session, model: RegisteredModel, alias: str, row: ModelVersion | None,
                      actor: Actor, reason: str, force: bool) -> bool:
    """Refuse a move of a protected alias without the promote scope and a reason, or one its gate refuses
    (409 listing each condition) unless an admin forces it; whether the move was forced."""
    if force and not allows(actor.scope, ADMIN):
        raise Forbidden("only an admin token may force an alias move past its gate", code="insufficient_scope")
    if force and not reason:
        raise InvalidRequest("say why the gate is forced: send a reason (kept in the alias's history and the audit "
                             "log)", code="missing_reason")
    rule = _rule(session, model, alias)
    if rule is None:
        return False
    if rule.protected:
        if not allows(actor.scope, PROMOTE):
            raise Forbidden(f"alias {alias!r} of {model.name!r} is protected: moving it needs a token with the "
                            f"promote scope (or admin); {actor.name!r} has {actor.scope or 'no token'}",
                            code="protected_alias")
        if not reason:
            raise InvalidRequest(f"alias {alias!r} of {model.name!r} is protected: say why it moves (send a reason)",
                                 code="missing_reason")
    if rule.gate and row is not None:
        results = gates.evaluate(session, model, alias, row, rule.gate)
        failed = [r for r in results if not r["passed"]]
        if failed and not force:
            raise Conflict(f"the gate of alias {alias!r} refuses version {row.version}: " + "; ".join(
                r["message"] for r in failed), code="gate_refused", details={"conditions": results})
        return bool(failed)
    return False


def set_alias(db: Database, name: str, alias: str, version: int, actor: Actor = SYSTEM, *, reason: str = "",
              force: bool = False, note: str = "") -> VersionInfo:
    """Point ``alias`` at ``version`` (creating or moving it), recorded in its history with ``reason``
    (the caller's: a protected alias needs one), else ``note`` (what the registry says of the move)."""
    validate_model_name(name)
    validate_alias_name(alias)
    reason = _reason(reason)
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
        if existing is not None:
            previous = session.scalar(sa.select(ModelVersion.version).where(ModelVersion.id == existing.version_id))
        forced = _check_protection(session, model, alias, row, actor, reason, force)
        if existing is None:
            session.add(Alias(model_id=model.id, name=alias, version_id=row.id))
        else:
            existing.version_id = row.id
            existing.updated_at = utcnow()
        if previous != row.version:
            session.add(AliasMove(model_id=model.id, alias=alias, from_version=previous, to_version=row.version,
                                  actor=actor.name[:128], reason=reason or note, forced=forced))
            webhooks.emit(session, webhooks.ALIAS_MOVED, name, {
                "alias": alias, "from_version": previous, "to_version": row.version, "reason": reason or note,
                "forced": forced, "actor": actor.name})
        audit.record(session, actor, "alias.set", f"{name}:{alias}", {
            "version": row.version, "previous": previous, **({"reason": reason} if reason else {}),
            **({"forced": True} if forced else {})})
        session.flush()
        return version_entities(session, name, [row])[0]


def delete_alias(db: Database, name: str, alias: str, actor: Actor = SYSTEM, *, reason: str = "") -> None:
    reason = _reason(reason)
    with model_write(db, name) as (session, model):
        existing = session.scalar(sa.select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
        if existing is None:
            raise NotFound(f"model {name!r} has no alias {alias!r}", code="alias_not_found")
        _check_protection(session, model, alias, None, actor, reason, False)
        number = session.scalar(sa.select(ModelVersion.version).where(ModelVersion.id == existing.version_id))
        session.delete(existing)
        session.add(AliasMove(model_id=model.id, alias=alias, from_version=number, to_version=None,
                              actor=actor.name[:128], reason=reason))
        webhooks.emit(session, webhooks.ALIAS_MOVED, name, {
            "alias": alias, "from_version": number, "to_version": None, "reason": reason, "forced": False,
            "actor": actor.name})
        audit.record(session, actor, "alias.delete", f"{name}:{alias}", {
            "version": number, **({"reason": reason} if reason else {})})


def record_removal(session: Session, model_id: int, alias: str, version: int, actor: Actor, why: str) -> None:
    """History of an alias removed with its version (the deletion of a version or model calls it)."""
    session.add(AliasMove(model_id=model_id, alias=alias, from_version=version, to_version=None,
                          actor=actor.name[:128], reason=why))


def _moves(rows) -> list[Move]:
    return [Move(r.id, r.alias, r.from_version, r.to_version, r.actor, r.reason, r.forced, r.created_at)
            for r in rows]


def alias_history(db: Database, name: str, alias: str, *, page_size: int | None = None,
                  page_token: str | None = None) -> Page:
    """The alias's moves, newest first."""
    validate_model_name(name)
    size = pagination.page_size(page_size)
    with db.transaction() as session:
        model = model_row(session, name)
        query = sa.select(AliasMove).where(AliasMove.model_id == model.id, AliasMove.alias == alias)
        if page_token:
            before = pagination.decode_token(page_token)
            if not isinstance(before, int):
                raise InvalidRequest("invalid page_token for this history", code="invalid_page_token")
            query = query.where(AliasMove.id < before)
        rows = session.scalars(query.order_by(AliasMove.id.desc()).limit(size + 1)).all()
        if not rows and not page_token:
            raise NotFound(f"model {name!r} has no alias {alias!r}, and never had one", code="alias_not_found")
        return Page(_moves(rows[:size]), pagination.encode_token(rows[size - 1].id) if len(rows) > size else None)


def alias_at(db: Database, name: str, alias: str, when: datetime) -> Move | None:
    """The move that put the alias where it was at ``when`` (None: it did not exist yet); its
    ``to_version`` is the version that held it then (None: it had been removed)."""
    validate_model_name(name)
    with db.transaction() as session:
        model = model_row(session, name)
        row = session.scalar(sa.select(AliasMove).where(
            AliasMove.model_id == model.id, AliasMove.alias == alias, AliasMove.created_at <= when)
            .order_by(AliasMove.created_at.desc(), AliasMove.id.desc()).limit(1))
        return _moves([row])[0] if row is not None else None


def rollback(db: Database, name: str, alias: str, actor: Actor = SYSTEM, *, reason: str = "",
             force: bool = False) -> tuple[VersionInfo, Move]:
    """Move ``alias`` back to the version it held before its last move (a protected alias's rules apply)."""
    validate_model_name(name)
    with db.transaction() as session:
        model = model_row(session, name)
        last = session.scalar(sa.select(AliasMove).where(AliasMove.model_id == model.id, AliasMove.alias == alias)
                              .order_by(AliasMove.id.desc()).limit(1))
    if last is None:
        raise NotFound(f"model {name!r} has no alias {alias!r}, and never had one", code="alias_not_found")
    if last.from_version is None:
        raise Conflict(f"alias {alias!r} of {name!r} held no version before its last move (it was created then): "
                       "nothing to roll back to", code="nothing_to_roll_back")
    with db.transaction() as session:
        exists = session.scalar(sa.select(ModelVersion.id).where(ModelVersion.model_id == model.id,
                                                                 ModelVersion.version == last.from_version))
    if exists is None:
        raise Conflict(f"alias {alias!r} of {name!r} held version {last.from_version} before, but that version was "
                       "deleted: point the alias at another version", code="version_deleted")
    undone = f"version {last.to_version}" if last.to_version is not None else "its removal"
    version = set_alias(db, name, alias, last.from_version, actor, reason=reason, force=force,
                        note=f"rollback of {undone}")
    return version, _moves([last])[0]


def alias_rules(db: Database, name: str) -> list[Rule]:
    validate_model_name(name)
    with db.transaction() as session:
        model = model_row(session, name)
        rows = session.scalars(sa.select(AliasRule).where(AliasRule.model_id == model.id)
                               .order_by(AliasRule.alias)).all()
        return [Rule(r.alias, r.protected, r.gate, r.updated_by, r.updated_at) for r in rows]


def set_alias_rule(db: Database, name: str, alias: str, *, protected: bool, gate: object = None,
                   actor: Actor = SYSTEM) -> Rule:
    """Protect (or not) an alias and set its gate (None: no gate); admin only, audited.  A gate's
    conditions are checked now: an unknown metric or evaluation set is a 400."""
    validate_alias_name(alias)
    if not allows(actor.scope, ADMIN):
        raise Forbidden("only an admin token may protect an alias or set its gate", code="insufficient_scope")
    with model_write(db, name) as (session, model):
        checked = gates.validate(session, model, gate) if gate is not None else None
        row = _rule(session, model, alias)
        if row is None:
            row = AliasRule(model_id=model.id, alias=alias)
            session.add(row)
        previous = {"protected": row.protected, "gate": row.gate}
        row.protected, row.gate, row.updated_by, row.updated_at = bool(protected), checked, actor.name, utcnow()
        audit.record(session, actor, "alias.rule", f"{name}:{alias}",
                     {"protected": bool(protected), "gate": checked, "previous": previous})
        session.flush()
        return Rule(row.alias, row.protected, row.gate, row.updated_by, row.updated_at)
