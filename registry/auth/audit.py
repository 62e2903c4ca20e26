"""The audit log: every write, with who did it, from where and when.

``record`` adds the event to the session of the write itself, so the event and
the change it describes are committed together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry import pagination
from registry.db import Database
from registry.entities import Page
from registry.errors import InvalidRequest
from registry.models import AuditEvent


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a token (by name and id), ``anonymous`` where writes are open,
    or ``system``/``cli`` for the registry's own work and local commands."""

    name: str
    token_id: int | None = None
    remote_addr: str | None = None
    # The scope of the caller's token (None: no token).  The registry's own work and local commands
    # (which hold the database itself) act with admin scope.
    scope: str | None = None


SYSTEM = Actor("system", scope="admin")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    created_at: datetime
    actor: str
    token_id: int | None
    action: str
    target: str
    details: dict[str, Any] | None
    remote_addr: str | None


def record(session: Session, actor: Actor, action: str, target: str = "", details: dict[str, Any] | None = None,
           ) -> None:
    """Add an audit event to ``session`` (the write's own transaction)."""
    session.add(AuditEvent(actor=actor.name[:128], token_id=actor.token_id, action=action, target=target[:255],
                           details=details or None, remote_addr=(actor.remote_addr or None) and actor.remote_addr[:64]))


def list_events(db: Database, *, page_size: int | None = None, page_token: str | None = None,
                action: str | None = None) -> Page:
    """Events newest first, in keyset pages."""
    size = pagination.page_size(page_size)
    query = sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(size + 1)
    if page_token:
        before = pagination.decode_token(page_token)
        if not isinstance(before, int):
            raise InvalidRequest("page_token is not one this registry gave out; start again without it",
                                 code="invalid_page_token")
        query = query.where(AuditEvent.id < before)
    if action:
        query = query.where(AuditEvent.action == action)
    with db.transaction() as session:
        rows = session.scalars(query).all()
        items = [AuditEntry(r.id, r.created_at, r.actor, r.token_id, r.action, r.target, r.details, r.remote_addr)
                 for r in rows[:size]]
    return Page(items, pagination.encode_token(rows[size - 1].id) if len(rows) > size else None)
