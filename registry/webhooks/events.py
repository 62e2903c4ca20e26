"""The outbox: ``emit`` adds an event and one pending delivery per subscribed hook to the session of the
write it reports, so the event is committed with the change or not at all (a rolled-back push, a refused
alias move leave nothing to send).  The workers send them after commit (``registry.webhooks.delivery``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry.models import ModelVersion, RegisteredModel, Webhook, WebhookDelivery, WebhookEvent, utcnow
from registry.webhooks import (ALIAS_MOVED, EVENTS, TAG_CHANGED, VERSION_CREATED, VERSION_DELETED,
                               VERSION_FAILED, VERSION_READY)

__all__ = ["ALIAS_MOVED", "DELIVERED", "EVENTS", "FAILED", "PENDING", "TAG_CHANGED", "VERSION_CREATED",
           "VERSION_DELETED", "VERSION_FAILED", "VERSION_READY", "emit", "emit_for_version", "subscribed"]

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def subscribed(session: Session, event: str, model: str) -> list[int]:
    """The ids of the active hooks that want ``event`` of ``model`` (a hook without a model: every model)."""
    rows = session.execute(sa.select(Webhook.id, Webhook.events).where(
        Webhook.active.is_(True), Webhook.deleted_at.is_(None),
        sa.or_(Webhook.model.is_(None), Webhook.model == model)).order_by(Webhook.id)).all()
    return [hook_id for hook_id, events in rows if event in (events or ())]


def emit(session: Session, event: str, model: str, payload: dict[str, Any]) -> int | None:
    """Record ``event`` of ``model`` (with ``payload``, its fields) and a pending delivery to each hook
    subscribed to it, in ``session`` (the write's own transaction); the event's id, or None when no hook
    wants it (nothing is written then)."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    hooks = subscribed(session, event, model)
    if not hooks:
        return None
    now = utcnow()
    row = WebhookEvent(event=event, model=model, created_at=now,
                       payload={"event": event, "model": model, **payload, "occurred_at": now.isoformat()})
    session.add(row)
    session.flush()
    session.add_all(WebhookDelivery(webhook_id=hook_id, event_id=row.id, status=PENDING, attempts=0,
                                    next_attempt_at=now, created_at=now) for hook_id in hooks)
    return row.id


def emit_for_version(session: Session, event: str, version_id: int, **fields: Any) -> int | None:
    """``emit`` for a version known by its row id (the job queue's view of it): its model's name and
    its number are looked up in the same session."""
    found = session.execute(sa.select(RegisteredModel.name, ModelVersion.version)
                            .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
                            .where(ModelVersion.id == version_id)).one_or_none()
    if found is None:
        return None
    return emit(session, event, found[0], {"version": found[1], **fields})
