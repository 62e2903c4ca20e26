"""Registering webhooks and reading their delivery log: admin only, every write audited.

A hook's secret (the HMAC-SHA256 key of its signatures) is shown once, in the answer to its creation,
like an API token; listings never show it.  A target URL must be http(s), and one whose host is (or
resolves to) a private, loopback, link-local, multicast or reserved address is refused, against SSRF,
unless ``REGISTRY_WEBHOOK_ALLOW_PRIVATE=true``; the delivery loop checks again before each send.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import sqlalchemy as sa

from registry import pagination
from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.auth.tokens import ADMIN, allows
from registry.db import Database
from registry.entities import Page
from registry.errors import Conflict, Forbidden, InvalidRequest, NotFound
from registry.models import Webhook, WebhookDelivery, WebhookEvent, utcnow
from registry.webhooks.events import EVENTS, FAILED, PENDING

MAX_URL = 2000
MIN_SECRET, MAX_SECRET = 16, 128
MAX_DESCRIPTION = 1000
# registry.catalog.names.MODEL_NAME_RE (the API's schema checks with it): not imported, since the catalog
# imports this package to emit its events
MODEL_FILTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class HookInfo:
    id: int
    url: str
    events: list[str]
    model: str | None
    description: str
    active: bool
    created_by: str
    created_at: datetime
    deleted_at: datetime | None


@dataclass(frozen=True)
class DeliveryInfo:
    id: int
    webhook_id: int
    event_id: int
    event: str
    model: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict


class UnsafeTarget(Exception):
    """A target address the registry does not send to (SSRF)."""


def _hook(row: Webhook) -> HookInfo:
    return HookInfo(row.id, row.url, list(row.events or []), row.model, row.description, row.active,
                    row.created_by, row.created_at, row.deleted_at)


def _delivery(row: WebhookDelivery, event: WebhookEvent) -> DeliveryInfo:
    return DeliveryInfo(row.id, row.webhook_id, row.event_id, event.event, event.model, row.status, row.attempts,
                        row.next_attempt_at, row.last_status_code, row.last_error, row.created_at,
                        row.delivered_at, event.payload)


def _blocked(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified)


def check_target(url: str, allow_private: bool) -> None:
    """Raise UnsafeTarget when ``url``'s host is, or resolves to, an address outside the public internet
    (every address it resolves to is checked); nothing to check when private targets are allowed."""
    if allow_private:
        return
    parts = urlsplit(url)
    host = (parts.hostname or "").strip("[]")
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                       type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UnsafeTarget(f"the host {host!r} does not resolve ({exc})") from None
        addresses = {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}
    bad = sorted(str(a) for a in addresses if _blocked(a))
    if bad:
        raise UnsafeTarget(f"{host!r} is (or resolves to) a private, loopback, link-local, multicast or reserved "
                           f"address ({', '.join(bad)}); the registry does not send webhooks there unless "
                           "REGISTRY_WEBHOOK_ALLOW_PRIVATE=true")


def validate_url(url: object) -> str:
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest("send the webhook's URL, e.g. https://ci.example.com/hooks/registry",
                             code="invalid_webhook_url")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidRequest(f"a webhook URL must start with http:// or https://, not {url[:100]!r}",
                             code="invalid_webhook_url")
    try:
        parts.port
    except ValueError:
        raise InvalidRequest(f"the webhook URL {url[:100]!r} has an invalid port", code="invalid_webhook_url") from None
    if not parts.hostname:
        raise InvalidRequest(f"the webhook URL {url[:100]!r} names no host: e.g. https://ci.example.com/hook",
                             code="invalid_webhook_url")
    if len(url) > MAX_URL:
        raise InvalidRequest(f"the webhook URL has {len(url)} characters: at most {MAX_URL}",
                             code="invalid_webhook_url")
    return url


def validate_events(events: object) -> list[str]:
    """The events asked for, each once; a 400 naming the unknown ones."""
    if not isinstance(events, (list, tuple)) or not events or not all(isinstance(e, str) for e in events):
        raise InvalidRequest(f"send the events to subscribe to, a non-empty list of: {', '.join(EVENTS)}",
                             code="invalid_webhook_events")
    unknown = [e for e in dict.fromkeys(events) if e not in EVENTS]
    if unknown:
        raise InvalidRequest(f"unknown webhook event(s) {', '.join(map(repr, unknown))}: use {', '.join(EVENTS)}",
                             code="unknown_webhook_event")
    return list(dict.fromkeys(events))


def _admin(actor: Actor) -> None:
    if not allows(actor.scope, ADMIN):
        raise Forbidden("only an admin token may manage webhooks", code="insufficient_scope")


def create_hook(db: Database, url: object, events: object, *, model: str | None = None, secret: str | None = None,
                description: str = "", allow_private: bool = False, actor: Actor = SYSTEM) -> tuple[HookInfo, str]:
    """Register a hook; returns it and its secret (generated unless given), which is never shown again."""
    _admin(actor)
    url = validate_url(url)
    events = validate_events(events)
    if model is not None and not (isinstance(model, str) and MODEL_FILTER_RE.match(model)):
        raise InvalidRequest(f"invalid model name {model!r}: use 1-128 letters, digits, '_', '-' or '.', starting "
                             "with a letter or digit", code="invalid_model_name")
    if secret is None:
        secret = "whsec_" + secrets.token_urlsafe(32)
    elif not isinstance(secret, str) or not MIN_SECRET <= len(secret) <= MAX_SECRET or not secret.isprintable():
        raise InvalidRequest(f"a webhook secret is {MIN_SECRET}-{MAX_SECRET} printable characters (or leave it out "
                             "and the registry makes one)", code="invalid_webhook_secret")
    if len(description or "") > MAX_DESCRIPTION:
        raise InvalidRequest(f"the description has {len(description)} characters: at most {MAX_DESCRIPTION}",
                             code="invalid_webhook_description")
    try:
        check_target(url, allow_private)
    except UnsafeTarget as exc:
        raise InvalidRequest(str(exc), code="unsafe_webhook_url") from None
    with db.transaction() as session:
        row = Webhook(url=url, events=events, model=model, secret=secret, description=description or "",
                      active=True, created_by=actor.name[:128], created_at=utcnow())
        session.add(row)
        session.flush()
        audit.record(session, actor, "webhook.create", f"webhook/{row.id}",
                     {"url": url, "events": events, **({"model": model} if model else {})})
        return _hook(row), secret


def list_hooks(db: Database) -> list[HookInfo]:
    """The hooks not deleted, oldest first (never their secrets)."""
    with db.transaction() as session:
        rows = session.scalars(sa.select(Webhook).where(Webhook.deleted_at.is_(None)).order_by(Webhook.id)).all()
        return [_hook(r) for r in rows]


def _row(session, hook_id: int) -> Webhook:
    row = session.get(Webhook, hook_id)
    if row is None:
        raise NotFound(f"there is no webhook {hook_id}: `registry webhook ls` lists them", code="webhook_not_found")
    return row


def get_hook(db: Database, hook_id: int) -> HookInfo:
    """A hook, a deleted one too (its ``deleted_at`` says so), so its delivery log stays readable."""
    with db.transaction() as session:
        return _hook(_row(session, hook_id))


def delete_hook(db: Database, hook_id: int, actor: Actor = SYSTEM) -> HookInfo:
    """Tombstone a hook: it gets no new event, and its pending deliveries fail (its log stays)."""
    _admin(actor)
    with db.transaction(write=True) as session:
        row = session.get(Webhook, hook_id, with_for_update=True)
        if row is None or row.deleted_at is not None:
            raise NotFound(f"there is no webhook {hook_id}" + (" (it was deleted)" if row is not None else ""),
                           code="webhook_not_found")
        row.deleted_at = utcnow()
        row.active = False
        cancelled = session.execute(
            sa.update(WebhookDelivery).where(WebhookDelivery.webhook_id == hook_id, WebhookDelivery.status == PENDING)
            .values(status=FAILED, last_error="the webhook was deleted", lease_owner=None, lease_expires_at=None)
        ).rowcount
        audit.record(session, actor, "webhook.delete", f"webhook/{hook_id}",
                     {"url": row.url, "pending_cancelled": cancelled})
        return _hook(row)


def list_deliveries(db: Database, hook_id: int, *, page_size: int | None = None,
                    page_token: str | None = None) -> Page:
    """A hook's deliveries, newest first, in keyset pages."""
    size = pagination.page_size(page_size)
    with db.transaction() as session:
        _row(session, hook_id)
        query = (sa.select(WebhookDelivery, WebhookEvent)
                 .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
                 .where(WebhookDelivery.webhook_id == hook_id))
        if page_token:
            before = pagination.decode_token(page_token)
            if not isinstance(before, int):
                raise InvalidRequest("invalid page_token for this log", code="invalid_page_token")
            query = query.where(WebhookDelivery.id < before)
        rows = session.execute(query.order_by(WebhookDelivery.id.desc()).limit(size + 1)).all()
        items = [_delivery(d, e) for d, e in rows[:size]]
        return Page(items, pagination.encode_token(rows[size - 1][0].id) if len(rows) > size else None)


def redeliver(db: Database, hook_id: int, delivery_id: int, actor: Actor = SYSTEM) -> DeliveryInfo:
    """Send a delivery's event to its hook again, as a new pending delivery (after the hook's pending
    ones for that model, so the order per model holds)."""
    _admin(actor)
    with db.transaction(write=True) as session:
        hook = _row(session, hook_id)
        found = session.execute(sa.select(WebhookDelivery, WebhookEvent)
                                .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
                                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.webhook_id == hook_id)
                                ).one_or_none()
        if found is None:
            raise NotFound(f"webhook {hook_id} has no delivery {delivery_id}: `registry webhook deliveries "
                           f"{hook_id}` lists them", code="delivery_not_found")
        if hook.deleted_at is not None:
            raise Conflict(f"webhook {hook_id} was deleted: register it again to send it events",
                           code="webhook_deleted")
        now = utcnow()
        row = WebhookDelivery(webhook_id=hook_id, event_id=found[1].id, status=PENDING, attempts=0,
                              next_attempt_at=now, created_at=now)
        session.add(row)
        session.flush()
        audit.record(session, actor, "webhook.redeliver", f"webhook/{hook_id}",
                     {"delivery": delivery_id, "new_delivery": row.id, "event": found[1].event})
        return _delivery(row, found[1])
