"""Webhooks (issue 17, part 5) against a real HTTP receiver on 127.0.0.1, on SQLite and PostgreSQL: events
written to the outbox in the transaction of their change, sent after commit signed with the hook's secret,
retried with backoff after 5xx, redelivered on request, in order per model, nothing lost while the receiver
is down; bad targets and unknown events refused; admin scope only.

The delivery loop is driven by its ``run_once`` here, and once by a real server's worker thread.
Over 400 lines: the receiver, and one test per promise of the issue's webhook part, on both databases."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner

from registry import catalog
from registry.auth.audit import Actor
from registry.entities import NewFile
from registry.errors import Forbidden, InvalidRequest
from registry.jobs import queue
from registry.models import WebhookDelivery, WebhookEvent
from registry.webhooks import delivery as hooks_delivery
from registry.webhooks import hooks
from tests.conftest import BOTH_DATABASES, make_settings, seed_database, start_live_server
from tests.helpers import bearer, issue_tokens

pytestmark = BOTH_DATABASES

FILE = NewFile("frozen", "frozen.pb", "0" * 64, 10)  # a version's record only: nothing converts it here
ADMIN = Actor("tests", scope="admin")


class Receiver:
    """A real HTTP receiver on 127.0.0.1: records every POST (headers, body) and answers from a script of
    status codes (then 200); it can be killed and brought back on the same port."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[int] = []
        self.answer_for = None  # a function of the body: a status, or None for the script's next
        self.lock = threading.Lock()
        self.port = 0
        self.server = None
        self.start()

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = receiver.answer_for(json.loads(body)) if receiver.answer_for else None
                    if status is None:
                        status = receiver.script.pop(0) if receiver.script else 200
                    receiver.requests.append({"headers": dict(self.headers), "body": body, "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def kill(self) -> None:
        """Down: the port refuses connections until ``start``."""
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def received(self, status: int | None = 200) -> list[dict]:
        """The JSON bodies received (those answered ``status``; None: all), in arrival order."""
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests if status is None or r["status"] == status]


def verify(secret: str, headers: dict, body: bytes) -> bool:
    """What a receiver does: recompute the HMAC over id.timestamp.body and compare in constant time."""
    signed = f"{headers['X-Registry-Delivery']}.{headers['X-Registry-Timestamp']}.{body.decode()}".encode()
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Registry-Signature"])


def hook_settings(home, database, **overrides):
    values = dict(webhook_allow_private=True, webhook_backoff_seconds=0.05, webhook_backoff_max_seconds=0.2,
                  webhook_timeout_seconds=2.0, webhook_max_attempts=5, convert_warm=False)
    values.update(overrides)
    return make_settings(home, **({"database_url": database} if database else {}), **values)


@pytest.fixture
def app(tmp_path, database):
    from registry.app import create_app

    app = create_app(seed_database(hook_settings(tmp_path / "home", database)))
    app.config["TESTING"] = True
    yield app
    app.extensions["registry"].db.dispose()


@pytest.fixture
def tokens(registry):
    return issue_tokens(registry.db)


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.kill()


def add_hook(client, tokens, url: str, events: list[str], **extra) -> dict:
    response = client.post("/api/v1/webhooks", json={"url": url, "events": events, **extra},
                           headers=bearer(tokens["admin"]))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def push(db, name: str) -> int:
    return catalog.create_version(db, name, source="frozen", files=[FILE]).version


def deliver_all(registry, sender=None, timeout: float = 15.0) -> None:
    """Run the delivery loop until nothing is pending (retries wait out their short backoff)."""
    sender = sender or hooks_delivery.Sender(registry.settings, registry.db)
    deadline = time.monotonic() + timeout
    while pending(registry.db):
        assert time.monotonic() < deadline, "deliveries still pending"
        if not sender.run_once():
            time.sleep(0.02)


def pending(db) -> int:
    with db.transaction() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)
                              .where(WebhookDelivery.status == "pending"))


def log(client, tokens, hook_id: int) -> list[dict]:
    response = client.get(f"/api/v1/webhooks/{hook_id}/deliveries", headers=bearer(tokens["admin"]))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["deliveries"]


def test_a_delivery_is_signed_and_the_receiver_verifies_the_signature(client, registry, tokens, receiver):
    hook = add_hook(client, tokens, receiver.url, ["version.created"])
    assert hook["secret"].startswith("whsec_")
    push(registry.db, "cnn")
    deliver_all(registry)

    [request] = receiver.requests
    headers, body = request["headers"], request["body"]
    assert verify(hook["secret"], headers, body)
    assert not verify(hook["secret"] + "x", headers, body)
    payload = json.loads(body)
    assert headers["X-Registry-Event"] == payload["event"] == "version.created"
    assert headers["X-Registry-Delivery"] == str(payload["delivery_id"])
    assert headers["X-Registry-Timestamp"] == str(payload["timestamp"])
    assert abs(payload["timestamp"] - time.time()) < 60
    assert (payload["model"], payload["version"], payload["status"]) == ("cnn", 1, "queued")
    [entry] = log(client, tokens, hook["id"])
    assert (entry["id"], entry["status"], entry["attempts"], entry["last_status_code"]) == \
        (payload["delivery_id"], "delivered", 1, 200)
    listed = client.get("/api/v1/webhooks", headers=bearer(tokens["admin"])).get_json()["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    assert hook["secret"] not in client.get(f"/api/v1/webhooks/{hook['id']}",
                                            headers=bearer(tokens["admin"])).get_data(as_text=True)


def test_a_given_secret_signs_the_deliveries(client, registry, tokens, receiver):
    secret = "a-secret-of-our-own-choosing"
    hook = add_hook(client, tokens, receiver.url, ["tag.changed"], secret=secret, model="cnn")
    assert hook["secret"] == secret
    push(registry.db, "cnn")
    catalog.set_tags(registry.db, "cnn", {"team": "vision"}, ref="1")
    deliver_all(registry)
    [request] = receiver.requests
    assert verify(secret, request["headers"], request["body"])
    payload = json.loads(request["body"])
    assert payload["tags"] == {"team": {"old": None, "new": "vision"}} and payload["version"] == 1


def test_500s_are_retried_with_backoff_until_the_receiver_takes_it(client, registry, tokens, receiver):
    hook = add_hook(client, tokens, receiver.url, ["version.created"])
    receiver.script = [500, 500]
    push(registry.db, "cnn")
    sender = hooks_delivery.Sender(registry.settings, registry.db)
    assert sender.run_once() == 1
    [entry] = log(client, tokens, hook["id"])
    assert (entry["status"], entry["attempts"], entry["last_status_code"]) == ("pending", 1, 500)
    assert sender.run_once() == 0  # backing off: not due yet
    deliver_all(registry, sender)

    assert [r["status"] for r in receiver.requests] == [500, 500, 200]
    assert len({r["headers"]["X-Registry-Delivery"] for r in receiver.requests}) == 1  # one delivery, retried
    assert all(verify(hook["secret"], r["headers"], r["body"]) for r in receiver.requests)
    [entry] = log(client, tokens, hook["id"])
    assert (entry["status"], entry["attempts"], entry["last_status_code"], entry["last_error"]) == \
        ("delivered", 3, 200, None)


def test_retries_stop_at_the_attempt_limit_and_other_4xx_fail_at_once(client, registry, tokens, receiver):
    hook = add_hook(client, tokens, receiver.url, ["version.created"])
    seen: dict[str, int] = {}

    def answer(body):
        seen[body["model"]] = seen.get(body["model"], 0) + 1
        if body["model"] == "c":
            return 429 if seen["c"] == 1 else 200
        return {"a": 503, "b": 404}[body["model"]]
    receiver.answer_for = answer
    for name in ("a", "b", "c"):
        push(registry.db, name)
    deliver_all(registry)

    by_model = {e["model"]: e for e in log(client, tokens, hook["id"])}
    assert (by_model["a"]["status"], by_model["a"]["attempts"], by_model["a"]["last_status_code"]) == \
        ("failed", 5, 503)
    assert "gave up after 5 attempts" in by_model["a"]["last_error"]
    assert (by_model["b"]["status"], by_model["b"]["attempts"], by_model["b"]["last_status_code"]) == \
        ("failed", 1, 404)
    assert by_model["c"]["status"] == "delivered" and by_model["c"]["attempts"] > 1  # 429 is retried


def test_redeliver_sends_the_same_event_again_as_a_new_delivery(client, registry, tokens, receiver):
    hook = add_hook(client, tokens, receiver.url, ["alias.moved"])
    push(registry.db, "cnn")
    catalog.set_alias(registry.db, "cnn", "production", 1, reason="first")
    deliver_all(registry)
    [first] = log(client, tokens, hook["id"])

    response = client.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{first['id']}/redeliver",
                           headers=bearer(tokens["admin"]))
    assert response.status_code == 201, response.get_json()
    again = response.get_json()
    assert again["id"] != first["id"] and again["status"] == "pending" and again["event_id"] == first["event_id"]
    deliver_all(registry)

    bodies = receiver.received()
    assert [b["delivery_id"] for b in bodies] == [first["id"], again["id"]]
    strip = [{k: v for k, v in b.items() if k not in ("delivery_id", "timestamp")} for b in bodies]
    assert strip[0] == strip[1]
    assert (strip[0]["alias"], strip[0]["from_version"], strip[0]["to_version"], strip[0]["reason"]) == \
        ("production", None, 1, "first")
    assert all(verify(hook["secret"], r["headers"], r["body"]) for r in receiver.requests)
    assert [e["id"] for e in log(client, tokens, hook["id"])] == [again["id"], first["id"]]  # newest first
    missing = client.post(f"/api/v1/webhooks/{hook['id']}/deliveries/999999/redeliver",
                          headers=bearer(tokens["admin"]))
    assert missing.status_code == 404


def test_a_hook_gets_each_model_s_events_in_order_even_when_one_is_retried(client, registry, tokens, receiver):
    add_hook(client, tokens, receiver.url, ["version.created"])
    failed_once = []

    def answer(body):
        if (body["model"], body["version"]) == ("a", 1) and not failed_once:
            failed_once.append(True)
            return 500
        return None
    receiver.answer_for = answer
    for name in ("a", "b", "a", "b", "a"):
        push(registry.db, name)
    deliver_all(registry)

    arrived = receiver.received(status=None)
    assert [b["version"] for b in arrived if b["model"] == "a"] == [1, 1, 2, 3]  # a2 waited for a1
    assert [b["version"] for b in arrived if b["model"] == "b"] == [1, 2]  # b did not wait for a
    assert [b["version"] for b in receiver.received() if b["model"] == "a"] == [1, 2, 3]


def test_a_receiver_killed_mid_run_gets_every_event_in_order_per_model_when_back(client, registry, tokens,
                                                                              receiver):
    hook = add_hook(client, tokens, receiver.url, ["version.created", "tag.changed"])
    stop = threading.Event()
    # attempts enough for the time it is down (the backoff's cap is 0.2 s here)
    sender = hooks_delivery.Sender(replace(registry.settings, webhook_max_attempts=1000), registry.db)
    thread = threading.Thread(target=sender.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        for i in range(3):
            for name in ("a", "b"):
                push(registry.db, name)
        deadline = time.monotonic() + 10
        while len(receiver.received()) < 6:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        receiver.kill()  # down: connections refused
        for i in range(3):
            for name in ("a", "b"):
                push(registry.db, name)
                catalog.set_tags(registry.db, name, {"n": str(i)})
        deadline = time.monotonic() + 10
        while not any("cannot connect" in (e["last_error"] or "") for e in log(client, tokens, hook["id"])):
            assert time.monotonic() < deadline, "the sender never tried the receiver while it was down"
            time.sleep(0.05)
        time.sleep(1.0)  # down a while longer: several rounds of retries
        receiver.start()  # back, on the same port
        deadline = time.monotonic() + 20
        while pending(registry.db):
            assert time.monotonic() < deadline, "deliveries still pending after the receiver came back"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)

    delivered = receiver.received()
    for name in ("a", "b"):
        mine = [b for b in delivered if b["model"] == name]
        assert [b["version"] for b in mine if b["event"] == "version.created"] == [1, 2, 3, 4, 5, 6]
        assert [b["tags"]["n"]["new"] for b in mine if b["event"] == "tag.changed"] == ["0", "1", "2"]
        with registry.db.transaction() as session:
            event_ids = session.scalars(sa.select(WebhookEvent.id).where(WebhookEvent.model == name)
                                        .order_by(WebhookEvent.id)).all()
        assert len(mine) == len(event_ids) == 9  # every event, once
        order = {delivery["delivery_id"]: i for i, delivery in enumerate(mine)}
        assert list(order) == sorted(order)  # in the order they were written
    assert all(e["status"] == "delivered" for e in log(client, tokens, hook["id"]))


def test_every_write_reports_its_event_to_the_hooks_that_want_it(client, registry, tokens, receiver):
    every = add_hook(client, tokens, receiver.url, ["version.created", "version.ready", "version.failed",
                                                    "version.deleted", "alias.moved", "tag.changed"])
    only_b = add_hook(client, tokens, receiver.url + "?b", ["alias.moved"], model="b")
    db = registry.db
    for name in ("a", "a", "a", "b"):
        push(db, name)
    # the conversion's outcome, where the job queue records it: ready, failed, failed for good
    for ready in (True, False):
        job = queue.claim(db, "w", 30)
        assert queue.finish(db, job, ready=ready, message="done" if ready else "no", fields={})
    for _ in range(3):  # the third version's conversion fails for good on its last attempt
        job = queue.claim(db, "w", 30)
        again = queue.retry_later(db, job, "boom", backoff=lambda attempt: 0)
    assert not again
    catalog.set_alias(db, "a", "production", 1)
    catalog.set_tags(db, "a", {"team": "vision"})
    catalog.delete_alias(db, "a", "production", reason="gone")
    catalog.set_alias(db, "b", "production", 1)
    catalog.delete_version(db, "a", "3")
    catalog.delete_model(db, "b")
    with db.transaction() as session:
        events = [(e.event, e.model, e.payload) for e in session.scalars(sa.select(WebhookEvent)
                                                                          .order_by(WebhookEvent.id))]
    names = [(e, m) for e, m, _ in events]
    assert names[:4] == [("version.created", "a")] * 3 + [("version.created", "b")]
    assert names[4:] == [("version.ready", "a"), ("version.failed", "a"), ("version.failed", "a"),
                         ("alias.moved", "a"), ("tag.changed", "a"), ("alias.moved", "a"), ("alias.moved", "b"),
                         ("version.deleted", "a"), ("version.deleted", "b")]
    payloads = [p for _, _, p in events]
    assert (payloads[4]["version"], payloads[4]["status"]) == (1, "ready")
    assert (payloads[5]["version"], payloads[5]["status_message"]) == (2, "no")
    assert payloads[6]["version"] == 3 and "failed 3 times" in payloads[6]["status_message"]
    assert (payloads[9]["from_version"], payloads[9]["to_version"], payloads[9]["reason"]) == (1, None, "gone")
    assert (payloads[11]["versions"], payloads[11]["model_deleted"]) == ([3], False)
    assert (payloads[12]["versions"], payloads[12]["model_deleted"]) == ([1], True)
    deliver_all(registry)
    assert [e["event"] for e in log(client, tokens, only_b["id"])] == ["alias.moved"]  # its model's only
    assert len(log(client, tokens, every["id"])) == len(events)


def test_a_rollback_is_reported_as_an_alias_move(client, registry, tokens, receiver):
    add_hook(client, tokens, receiver.url, ["alias.moved"])
    for _ in range(2):
        push(registry.db, "cnn")
    catalog.set_alias(registry.db, "cnn", "production", 1)
    catalog.set_alias(registry.db, "cnn", "production", 2)
    catalog.aliases.rollback(registry.db, "cnn", "production", reason="v2 is slow")
    deliver_all(registry)
    moves = [(b["from_version"], b["to_version"], b["reason"]) for b in receiver.received()]
    assert moves == [(None, 1, ""), (1, 2, ""), (2, 1, "v2 is slow")]


def test_events_are_written_in_the_transaction_of_their_change(client, registry, tokens, receiver):
    add_hook(client, tokens, receiver.url, ["version.created"])
    broken = NewFile(None, "frozen.pb", "0" * 64, 10)  # NOT NULL: the push's transaction fails at its end
    with pytest.raises(sa.exc.IntegrityError):
        catalog.create_version(registry.db, "cnn", source="frozen", files=[broken])
    with registry.db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(WebhookEvent)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 0
    push(registry.db, "cnn")  # the same write that commits: its event is there
    with registry.db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(WebhookEvent)) == 1
    deliver_all(registry)
    assert [b["version"] for b in receiver.received()] == [1]


def test_a_deleted_hook_gets_nothing_more_and_its_pending_deliveries_fail(client, registry, tokens, receiver):
    hook = add_hook(client, tokens, receiver.url, ["version.created"])
    push(registry.db, "cnn")
    response = client.delete(f"/api/v1/webhooks/{hook['id']}", headers=bearer(tokens["admin"]))
    assert response.status_code == 200 and response.get_json()["deleted_at"]
    push(registry.db, "cnn")
    deliver_all(registry)
    assert receiver.requests == []
    [entry] = log(client, tokens, hook["id"])  # the log stays readable
    assert (entry["status"], entry["last_error"]) == ("failed", "the webhook was deleted")
    assert client.get("/api/v1/webhooks", headers=bearer(tokens["admin"])).get_json()["webhooks"] == []
    assert client.delete(f"/api/v1/webhooks/{hook['id']}", headers=bearer(tokens["admin"])).status_code == 404
    again = client.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{entry['id']}/redeliver",
                        headers=bearer(tokens["admin"]))
    assert again.status_code == 409
    audited = client.get("/api/v1/audit", headers=bearer(tokens["admin"])).get_json()["events"]
    assert [(e["action"], e["target"], e["actor"]) for e in audited if e["action"].startswith("webhook.")] == [
        ("webhook.delete", f"webhook/{hook['id']}", "admin-token"),
        ("webhook.create", f"webhook/{hook['id']}", "admin-token")]
    assert all(hook["secret"] not in json.dumps(e) for e in audited)


@pytest.mark.parametrize("url, code", [
    ("ftp://example.com/hook", "invalid_webhook_url"),
    ("file:///etc/passwd", "invalid_webhook_url"),
    ("example.com/hook", "invalid_webhook_url"),
    ("http:///nohost", "invalid_webhook_url"),
    ("http://127.0.0.1:9/hook", "unsafe_webhook_url"),
    ("http://localhost/hook", "unsafe_webhook_url"),
    ("http://10.1.2.3/hook", "unsafe_webhook_url"),
    ("http://169.254.169.254/latest/meta-data", "unsafe_webhook_url"),
    ("http://[::1]/hook", "unsafe_webhook_url"),
    ("http://[::ffff:192.168.0.1]/hook", "unsafe_webhook_url"),
    ("http://224.0.0.1/hook", "unsafe_webhook_url"),
])
def test_bad_targets_are_refused_with_a_400(tmp_path, database, url, code):
    from registry.app import create_app

    app = create_app(seed_database(hook_settings(tmp_path / "strict", database, webhook_allow_private=False)))
    try:
        tokens = issue_tokens(app.extensions["registry"].db)
        response = app.test_client().post("/api/v1/webhooks", json={"url": url, "events": ["version.ready"]},
                                          headers=bearer(tokens["admin"]))
        assert response.status_code == 400, response.get_json()
        assert response.get_json()["error"]["code"] == code
        if code == "unsafe_webhook_url":
            assert "REGISTRY_WEBHOOK_ALLOW_PRIVATE=true" in response.get_json()["error"]["message"]
    finally:
        app.extensions["registry"].db.dispose()


def test_unknown_events_and_bad_fields_are_refused_naming_them(client, registry, tokens, receiver):
    response = client.post("/api/v1/webhooks", json={"url": receiver.url,
                                                     "events": ["version.ready", "version.exploded", "x"]},
                           headers=bearer(tokens["admin"]))
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "unknown_webhook_event"
    assert "'version.exploded', 'x'" in error["message"] and "alias.moved" in error["message"]
    for body in ({"url": receiver.url, "events": []}, {"url": receiver.url}, {"events": ["version.ready"]},
                 {"url": receiver.url, "events": ["version.ready"], "secret": "short"},
                 {"url": receiver.url, "events": ["version.ready"], "model": "not a name!"}):
        assert client.post("/api/v1/webhooks", json=body, headers=bearer(tokens["admin"])).status_code == 400
    with pytest.raises(InvalidRequest, match="invalid model name"):  # the service checks what the API does
        hooks.create_hook(registry.db, receiver.url, ["version.ready"], model="not a name!", allow_private=True,
                          actor=ADMIN)
    assert hooks.MODEL_FILTER_RE.pattern == catalog.MODEL_NAME_RE.pattern


def test_a_target_that_became_private_fails_at_delivery_time(client, registry, tokens, receiver):
    add_hook(client, tokens, receiver.url, ["version.created"])  # allowed when it was registered
    push(registry.db, "cnn")
    strict = hooks_delivery.Sender(hook_settings(registry.settings.home, None, webhook_allow_private=False),
                                   registry.db)
    deliver_all(registry, strict)
    assert receiver.requests == []
    with registry.db.transaction() as session:
        row = session.scalar(sa.select(WebhookDelivery))
        assert row.status == "failed" and "REGISTRY_WEBHOOK_ALLOW_PRIVATE" in row.last_error


def test_webhooks_need_an_admin_token(client, registry, tokens, receiver):
    hook = add_hook(client, tokens, receiver.url, ["version.created"])
    calls = [("POST", "/api/v1/webhooks", {"url": receiver.url, "events": ["version.created"]}),
             ("GET", "/api/v1/webhooks", None), ("GET", f"/api/v1/webhooks/{hook['id']}", None),
             ("GET", f"/api/v1/webhooks/{hook['id']}/deliveries", None),
             ("POST", f"/api/v1/webhooks/{hook['id']}/deliveries/1/redeliver", None),
             ("DELETE", f"/api/v1/webhooks/{hook['id']}", None)]
    for method, url, body in calls:
        assert client.open(url, method=method, json=body).status_code == 401, url
        for scope in ("read", "write"):
            answer = client.open(url, method=method, json=body, headers=bearer(tokens[scope]))
            assert answer.status_code == 403, (scope, url)
    with pytest.raises(Forbidden, match="only an admin token"):
        hooks.create_hook(registry.db, receiver.url, ["version.created"], allow_private=True,
                          actor=Actor("ci", scope="write"))


def test_a_live_server_sends_from_its_worker_thread_and_the_cli_manages_hooks(tmp_path, database, receiver):
    from registry.cli import main

    settings = hook_settings(tmp_path / "live", database, embedded_workers=1)
    server, stop = start_live_server(settings, workers=True)
    try:
        tokens = issue_tokens(server.registry.db)
        runner = CliRunner()

        def cli(*args):
            return runner.invoke(main, ["webhook", *args, "--url", server.url, "--token", tokens["admin"]])
        added = cli("add", receiver.url, "--event", "tag.changed", "--event", "alias.moved", "--model", "cnn")
        assert added.exit_code == 0, added.output
        hook_id = int(added.output.split()[1].rstrip(":"))
        secret = added.output.split("secret: ")[1].split()[0]
        assert "tag.changed,alias.moved" in cli("ls").output and secret not in cli("ls").output

        push(server.registry.db, "cnn")
        answer = requests.patch(f"{server.url}/api/v1/models/cnn/tags", json={"team": "vision"},
                                headers=bearer(tokens["write"]), timeout=10)
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 15
        while not receiver.requests:  # the server's own delivery thread sends it
            assert time.monotonic() < deadline, "the server's worker thread sent nothing"
            time.sleep(0.05)
        [request] = receiver.requests
        assert verify(secret, request["headers"], request["body"])
        assert json.loads(request["body"])["tags"] == {"team": {"old": None, "new": "vision"}}

        shown = cli("deliveries", str(hook_id))
        assert shown.exit_code == 0 and "tag.changed" in shown.output and "delivered" in shown.output, shown.output
        delivery_id = json.loads(request["body"])["delivery_id"]
        again = cli("redeliver", str(hook_id), str(delivery_id))
        assert again.exit_code == 0 and "queued" in again.output, again.output
        deadline = time.monotonic() + 15
        while len(receiver.requests) < 2:
            assert time.monotonic() < deadline, "the redelivery was not sent"
            time.sleep(0.05)
        assert cli("delete", str(hook_id)).exit_code == 0
        assert "no webhooks" in cli("ls").output

        refused = cli("add", "ftp://example.com/x", "--event", "version.ready")
        assert refused.exit_code == 1 and "Traceback" not in refused.output
        assert [line for line in refused.output.splitlines() if line.startswith("Error: ")] == [
            "Error: a webhook URL must start with http:// or https://, not 'ftp://example.com/x'"]
        missing = cli("deliveries", "999")
        assert missing.exit_code == 1 and missing.output.startswith("Error: there is no webhook 999")
    finally:
        stop()


def test_several_senders_at_once_send_each_delivery_once_and_in_order_per_model(client, registry, tokens, receiver):
    add_hook(client, tokens, receiver.url, ["version.created"])
    for _ in range(5):
        for name in ("a", "b", "c", "d"):
            push(registry.db, name)
    stop = threading.Event()
    senders = [hooks_delivery.Sender(registry.settings, registry.db, name=f"sender-{i}") for i in range(3)]
    threads = [threading.Thread(target=s.run_forever, args=(stop,), daemon=True) for s in senders]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while pending(registry.db):
            assert time.monotonic() < deadline, "deliveries still pending"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    bodies = receiver.received(status=None)
    with registry.db.transaction() as session:
        made = session.scalars(sa.select(WebhookDelivery.id).order_by(WebhookDelivery.id)).all()
    assert len(made) == 20 and sorted(b["delivery_id"] for b in bodies) == made  # each once
    for name in ("a", "b", "c", "d"):
        assert [b["version"] for b in bodies if b["model"] == name] == [1, 2, 3, 4, 5]


def test_the_webhooks_page_shows_the_delivery_log_and_redelivers(client, registry, tokens, receiver):
    """An admin signed in reads each hook's deliveries on /webhooks and sends one again from there."""
    from tests.helpers import csrf_token

    hook = add_hook(client, tokens, receiver.url, ["alias.moved"])
    push(registry.db, "cnn")
    catalog.set_alias(registry.db, "cnn", "production", 1)
    deliver_all(registry)
    [first] = log(client, tokens, hook["id"])
    assert client.get("/webhooks").status_code in (302, 401, 403)  # not signed in: no log
    signed = client.post("/sign-in", data={"token": tokens["admin"], "csrf_token": csrf_token(client)})
    assert signed.status_code in (302, 303)
    page = client.get("/webhooks").get_data(as_text=True)
    assert f'data-delivery="{first["id"]}" data-status="delivered"' in page and receiver.url in page
    sent = client.post(f"/webhooks/{hook['id']}/deliveries/{first['id']}/redeliver",
                       data={"csrf_token": csrf_token(client)})
    assert sent.status_code in (302, 303)
    deliver_all(registry)
    assert len(receiver.received()) == 2
    page = client.get("/webhooks").get_data(as_text=True)
    assert page.count('data-status="delivered"') == 2
