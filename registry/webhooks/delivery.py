"""Sending the outbox: the delivery loop the workers run after commit.

A sender claims due pending deliveries with a lease (``lease_owner`` + ``lease_expires_at``), as the job
queue claims jobs: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, a single-writer transaction
(``BEGIN IMMEDIATE``) on SQLite, so several workers never send one delivery twice at once.  Only the
first pending delivery of each (hook, model) is due: a hook gets a model's events in order, and a
receiver that is down gets them, still in order, when it is back.

Each POST carries ``X-Registry-Event``, ``X-Registry-Delivery`` (the delivery's id),
``X-Registry-Timestamp`` (Unix seconds) and ``X-Registry-Signature: sha256=HEX``, HEX being
HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}").  A timeout, a connection error, 429 or 5xx
is retried with exponential backoff up to REGISTRY_WEBHOOK_MAX_ATTEMPTS; any other answer that is not
2xx fails the delivery at once (it can be redelivered).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import requests
import sqlalchemy as sa
from sqlalchemy.orm import aliased

from registry.config import Settings
from registry.db import Database
from registry.models import Webhook, WebhookDelivery, WebhookEvent, utcnow
from registry.webhooks.events import DELIVERED, FAILED, PENDING
from registry.webhooks.hooks import UnsafeTarget, check_target

log = logging.getLogger(__name__)
BATCH = 20  # deliveries one claim takes (each the first pending one of its hook and model)
USER_AGENT = "tf-model-registry-webhooks/1"


@dataclass(frozen=True)
class Claimed:
    id: int
    attempts: int  # this attempt's number
    event: str
    payload: dict
    url: str
    secret: str
    hook_deleted: bool


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retry: bool
    status_code: int | None
    error: str | None


def signature(secret: str, delivery_id: int | str, timestamp: int | str, body: bytes | str) -> str:
    """The X-Registry-Signature value: ``sha256=`` and the hex HMAC-SHA256 of ``id.timestamp.body``."""
    text = body.decode() if isinstance(body, bytes) else body
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{text}".encode(), hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def backoff(settings: Settings, attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: base, 2 x base, 4 x base, ... up to the cap."""
    return min(settings.webhook_backoff_max_seconds, settings.webhook_backoff_seconds * 2 ** max(0, attempts - 1))


def _lease_seconds(settings: Settings, count: int) -> float:
    """Long enough to send ``count`` deliveries one after another, each up to the timeout."""
    return 30.0 + count * settings.webhook_timeout_seconds


def claim(db: Database, owner: str, settings: Settings, limit: int = BATCH) -> list[Claimed]:
    """Lease the due deliveries (at most ``limit``), each the oldest pending one of its hook and model."""
    now = utcnow()
    earlier, earlier_event = aliased(WebhookDelivery), aliased(WebhookEvent)
    blocked = (sa.select(earlier.id).join(earlier_event, earlier_event.id == earlier.event_id)
               .where(earlier.webhook_id == WebhookDelivery.webhook_id, earlier_event.model == WebhookEvent.model,
                      earlier.status == PENDING, earlier.id < WebhookDelivery.id))
    query = (sa.select(WebhookDelivery.id).join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
             .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now,
                    sa.or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at < now),
                    ~sa.exists(blocked))
             .order_by(WebhookDelivery.id).limit(limit)
             .with_for_update(skip_locked=True, of=WebhookDelivery))
    with db.transaction(write=True) as session:
        ids = list(session.scalars(query))
        if not ids:
            return []
        lease = now + timedelta(seconds=_lease_seconds(settings, len(ids)))
        session.execute(sa.update(WebhookDelivery).where(WebhookDelivery.id.in_(ids))
                        .values(lease_owner=owner, lease_expires_at=lease, attempts=WebhookDelivery.attempts + 1)
                        .execution_options(synchronize_session=False))
        rows = session.execute(
            sa.select(WebhookDelivery.id, WebhookDelivery.attempts, WebhookEvent.event, WebhookEvent.payload,
                      Webhook.url, Webhook.secret, Webhook.deleted_at)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(WebhookDelivery.id.in_(ids)).order_by(WebhookDelivery.id)).all()
        return [Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[6] is not None) for r in rows]


def body_of(delivery: Claimed, timestamp: int) -> bytes:
    """The JSON sent: the event's payload with the delivery's id and the time of sending."""
    return json.dumps({"delivery_id": delivery.id, "timestamp": timestamp, **delivery.payload},
                      separators=(",", ":"), sort_keys=False).encode()


def send(settings: Settings, delivery: Claimed, http: requests.Session) -> Outcome:
    """POST one delivery, signed; what came of it."""
    if delivery.hook_deleted:
        return Outcome(False, False, None, "the webhook was deleted")
    try:  # again at each send: the host name may resolve elsewhere now
        check_target(delivery.url, settings.webhook_allow_private)
    except UnsafeTarget as exc:
        return Outcome(False, False, None, str(exc))
    timestamp = int(time.time())
    body = body_of(delivery, timestamp)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Registry-Event": delivery.event, "X-Registry-Delivery": str(delivery.id),
               "X-Registry-Timestamp": str(timestamp),
               "X-Registry-Signature": signature(delivery.secret, delivery.id, timestamp, body)}
    try:
        with http.post(delivery.url, data=body, headers=headers, timeout=settings.webhook_timeout_seconds,
                       allow_redirects=False, stream=True) as response:
            code = response.status_code
            text = "" if 200 <= code < 300 else _snippet(response)
    except requests.Timeout:
        return Outcome(False, True, None, f"no answer within {settings.webhook_timeout_seconds:g} s")
    except requests.ConnectionError as exc:
        return Outcome(False, True, None, f"cannot connect: {_reason(exc)}")
    except requests.RequestException as exc:
        return Outcome(False, False, None, f"cannot send: {exc}")
    if 200 <= code < 300:
        return Outcome(True, False, code, None)
    if 300 <= code < 400:
        return Outcome(False, False, code, f"answered {code} (a redirect, not followed): register the final URL")
    retry = code == 429 or code >= 500
    return Outcome(False, retry, code, f"answered {code}" + (f": {text}" if text else ""))


def _snippet(response: requests.Response) -> str:
    try:
        return next(response.iter_content(200), b"").decode("utf-8", "replace").strip()
    except requests.RequestException:
        return ""


def _reason(exc: Exception) -> str:
    while exc.__context__ is not None and not isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
        exc = exc.__context__
    return str(exc)[:300]


def record(db: Database, settings: Settings, delivery: Claimed, outcome: Outcome, owner: str) -> str:
    """Record an attempt (unless the lease was lost meanwhile); the delivery's status after it."""
    now = utcnow()
    values: dict = {"last_status_code": outcome.status_code, "last_error": outcome.error, "lease_owner": None,
                    "lease_expires_at": None}
    if outcome.delivered:
        values.update(status=DELIVERED, delivered_at=now)
    elif outcome.retry and delivery.attempts < settings.webhook_max_attempts:
        values.update(status=PENDING, next_attempt_at=now + timedelta(seconds=backoff(settings, delivery.attempts)))
    else:
        if outcome.retry:
            values["last_error"] = f"gave up after {delivery.attempts} attempts; last: {outcome.error}"
        values.update(status=FAILED)
    with db.transaction() as session:
        session.execute(sa.update(WebhookDelivery)
                        .where(WebhookDelivery.id == delivery.id, WebhookDelivery.lease_owner == owner,
                               WebhookDelivery.status == PENDING)
                        .values(**values).execution_options(synchronize_session=False))
    return values["status"]


class Sender:
    """The delivery loop of one worker (a thread in ``registry serve``, beside ``registry worker``'s jobs)."""

    def __init__(self, settings: Settings, db: Database, name: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.owner = name or f"{socket.gethostname()}:{os.getpid()}:hooks-{uuid.uuid4().hex[:8]}"
        self.http = requests.Session()
        self.http.trust_env = False  # no proxy from the environment between the check and the target

    def run_once(self) -> int:
        """Send the deliveries due now, one claim's worth; how many were attempted."""
        claimed = claim(self.db, self.owner, self.settings)
        for delivery in claimed:
            outcome = send(self.settings, delivery, self.http)
            status = record(self.db, self.settings, delivery, outcome, self.owner)
            if status != DELIVERED:
                log.info("webhook delivery %d (%s, attempt %d): %s%s", delivery.id, delivery.event,
                         delivery.attempts, status, f" - {outcome.error}" if outcome.error else "")
        return len(claimed)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if self.run_once():
                    continue
            except Exception:  # the database may be briefly away: log, wait, go on
                log.exception("webhook sender %s: a round failed", self.owner)
            stop.wait(self.settings.worker_poll_seconds)


def start_sender_thread(registry) -> threading.Thread:
    """The delivery loop as a daemon thread of ``registry serve``, stopped with its workers."""
    sender = Sender(registry.settings, registry.db)
    thread = threading.Thread(target=sender.run_forever, args=(registry.stop_workers,), name="registry-webhooks",
                              daemon=True)
    thread.start()
    registry.workers = [*registry.workers, thread]
    return thread
