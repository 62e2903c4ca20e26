"""Authentication and authorisation: tokens, the access rules of every endpoint,
sign-in sessions with CSRF, and the modes that keep `make run` open out of the box."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys

import pytest
import requests
import sqlalchemy as sa

from registry import auth
from registry.auth.audit import Actor
from tests.conftest import make_settings, seed_database, start_live_server
from tests.helpers import bearer, csrf_token, frozen_form, issue_tokens, push

ANYONE, READ, WRITE, ADMIN = None, "read", "write", "admin"

# The specification of who may call what: every route the app serves, keyed by what a client
# sends (method and URL rule) and given the scope that follows from what the route does.  It is
# written here, not read from the access rules the server applies (registry.auth.access.RULES,
# keyed by endpoint name); test_auth_matrix_every_route_and_every_kind_of_caller checks the
# server's answers against it, and a route served but missing here (or listed here but no
# longer served) fails test_every_route_the_app_serves_has_a_stated_scope.
ACCESS = {
    # needed before anyone has a token: probes, the API description, signing in and out, assets
    ("GET", "/healthz"): ANYONE,
    ("GET", "/readyz"): ANYONE,
    ("GET", "/api/v1/openapi.json"): ANYONE,
    ("GET", "/static/<path:filename>"): ANYONE,
    ("GET", "/sign-in"): ANYONE,
    ("POST", "/sign-in"): ANYONE,
    ("POST", "/sign-out"): ANYONE,
    # reading the catalog and downloading what it holds
    ("GET", "/api/v1/models"): READ,
    ("GET", "/api/v1/models/<name>"): READ,
    ("GET", "/api/v1/models/<name>/versions"): READ,
    ("GET", "/api/v1/models/<name>/versions/<ref>"): READ,
    ("GET", "/api/v1/models/<name>/versions/<ref>/frozen.pb"): READ,
    ("GET", "/api/v1/models/<name>/versions/<ref>/labels.txt"): READ,
    ("GET", "/api/v1/models/<name>/versions/<ref>/saved_model.tar.gz"): READ,
    ("GET", "/api/v1/models/<name>/versions/<ref>/saved_model.tar"): READ,
    ("GET", "/api/v1/models/<name>/allowed-ops"): READ,
    # evaluation sets: listing and downloading them; adding and deleting them change the catalog
    ("GET", "/api/v1/models/<name>/eval-sets"): READ,
    ("GET", "/api/v1/models/<name>/eval-sets/<set>"): READ,
    ("GET", "/api/v1/models/<name>/eval-sets/<set>/<int:revision>"): READ,
    ("GET", "/api/v1/models/<name>/eval-sets/<set>/<int:revision>/download"): READ,
    ("GET", "/api/v1/models/<name>/eval-sets/<set>/<int:revision>/inputs/<int:index>"): READ,
    ("POST", "/api/v1/models/<name>/eval-sets/<set>"): WRITE,
    ("DELETE", "/api/v1/models/<name>/eval-sets/<set>"): WRITE,
    ("DELETE", "/api/v1/models/<name>/eval-sets/<set>/<int:revision>"): WRITE,
    ("GET", "/api/v1/serving"): READ,
    ("GET", "/api/v1/versions"): READ,  # search across models
    ("GET", "/api/v1/models/<name>/aliases/<alias>"): READ,  # where it points (now, or at= a time)
    ("GET", "/api/v1/models/<name>/aliases/<alias>/history"): READ,
    ("GET", "/api/v1/models/<name>/alias-rules"): READ,
    ("GET", "/api/v1/models/<name>/auto-compare"): READ,
    ("GET", "/api/v1/models/<name>/versions/<ref>/metrics"): READ,
    ("GET", "/api/v1/serving/models.config"): READ,
    ("GET", "/"): READ,
    ("GET", "/models/<name>"): READ,
    ("GET", "/models/<name>/versions/<ref>"): READ,
    ("GET", "/models/<name>/compare"): READ,
    ("GET", "/models/<name>/comparisons/<int:report_id>"): READ,
    ("GET", "/demo/<path:filename>"): READ,
    # the label service runs graphs but changes nothing: model status, :label, :compare, :predict
    ("GET", "/v1/models"): READ,
    ("GET", "/v1/models/<path:spec>"): READ,
    ("POST", "/v1/models/<path:spec>"): READ,
    # the comparison reports :compare stores
    ("GET", "/api/v1/models/<name>/comparisons"): READ,
    ("GET", "/api/v1/models/<name>/comparisons/<int:report_id>"): READ,
    # the label service's Prometheus metrics (TF Serving's path): counts per model tell what the catalog does
    ("GET", "/monitoring/prometheus/metrics"): READ,
    # changing the catalog: pushing, editing and deleting versions and models, moving aliases,
    # choosing what a TF Serving export serves (like moving an alias)
    ("POST", "/api/v1/models/<name>/versions"): WRITE,
    ("PATCH", "/api/v1/models/<name>/versions/<ref>"): WRITE,
    ("PUT", "/api/v1/models/<name>/versions/<ref>/prediction-output"): WRITE,
    ("DELETE", "/api/v1/models/<name>/versions/<ref>"): WRITE,
    ("DELETE", "/api/v1/models/<name>"): WRITE,
    ("PATCH", "/api/v1/models/<name>"): WRITE,  # its description
    ("PATCH", "/api/v1/models/<name>/tags"): WRITE,
    ("PUT", "/api/v1/models/<name>/auto-compare"): WRITE,
    ("POST", "/api/v1/models/<name>/versions/<ref>/metrics"): WRITE,
    ("PATCH", "/api/v1/models/<name>/versions/<ref>/tags"): WRITE,
    ("PUT", "/api/v1/models/<name>/aliases/<alias>"): WRITE,
    ("DELETE", "/api/v1/models/<name>/aliases/<alias>"): WRITE,
    ("POST", "/api/v1/models/<name>/aliases/<alias>/rollback"): WRITE,  # protected: promote (in the service)
    ("PUT", "/api/v1/models/<name>/serving"): WRITE,
    # shadow traffic: which version gets a copy of an alias's requests (like moving an alias); reading it
    ("PUT", "/api/v1/models/<name>/aliases/<alias>/shadow"): WRITE,
    ("DELETE", "/api/v1/models/<name>/aliases/<alias>/shadow"): WRITE,
    ("GET", "/api/v1/models/<name>/aliases/<alias>/shadow"): READ,
    ("GET", "/push"): WRITE,  # the push form, shown to those who may push
    ("POST", "/models/<name>/aliases"): WRITE,
    ("POST", "/models/<name>/versions/<ref>/tags"): WRITE,
    ("POST", "/models/<name>/tags"): WRITE,
    ("POST", "/models/<name>/versions/<ref>/prediction-output"): WRITE,
    # tokens, the audit log, and relaxing the converter's op scan for a model (a security control)
    ("GET", "/api/v1/tokens"): ADMIN,
    ("PUT", "/api/v1/models/<name>/aliases/<alias>/rule"): ADMIN,  # protecting an alias, its gate
    ("POST", "/api/v1/tokens"): ADMIN,
    ("DELETE", "/api/v1/tokens/<name_or_id>"): ADMIN,
    ("GET", "/api/v1/audit"): ADMIN,
    ("POST", "/api/v1/webhooks"): ADMIN,  # webhooks: targets, secrets, delivery logs
    ("GET", "/api/v1/webhooks"): ADMIN,
    ("GET", "/api/v1/webhooks/<int:hook_id>"): ADMIN,
    ("DELETE", "/api/v1/webhooks/<int:hook_id>"): ADMIN,
    ("GET", "/api/v1/webhooks/<int:hook_id>/deliveries"): ADMIN,
    ("POST", "/api/v1/webhooks/<int:hook_id>/deliveries/<int:delivery_id>/redeliver"): ADMIN,
    ("GET", "/audit"): ADMIN,
    ("GET", "/webhooks"): ADMIN,  # hooks' delivery logs, and redelivering one
    ("POST", "/webhooks/<int:hook_id>/deliveries/<int:delivery_id>/redeliver"): ADMIN,
    ("PUT", "/api/v1/models/<name>/allowed-ops"): ADMIN,
}
# URL values that reach each handler without loading TensorFlow or changing anything.
VALUES = {"name": "cnn", "ref": "1", "alias": "production", "spec": "cnn/versions/1", "filename": "app.js",
          "name_or_id": "nobody", "set": "holdout", "revision": 1, "report_id": 1, "hook_id": 1, "delivery_id": 1,
          "index": 0}
POST_SPEC = "cnn/versions/x:label"  # refused by the path parser, after the access check
CALLERS = ("none", "read", "write", "admin", "revoked", "malformed")
RANK = {ANYONE: 0, READ: 1, WRITE: 2, ADMIN: 3}


def routes(app):
    """(method, URL rule, url) for every route the app serves."""
    from flask import url_for

    out = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            values = {k: VALUES[k] for k in rule.arguments}
            if method == "POST" and rule.rule.startswith("/v1/"):
                values["spec"] = POST_SPEC
            with app.test_request_context():
                url = url_for(rule.endpoint, **values)
            out.append((method, rule.rule, url))
    return out


def is_page(url: str) -> bool:
    return not url.startswith(("/api/", "/v1/", "/monitoring/"))


@pytest.fixture
def secured(tmp_path):
    """A registry that enforces tokens for reads too (as a server on PostgreSQL + S3 does by default)."""
    from registry.app import create_app

    app = create_app(seed_database(make_settings(tmp_path / "secured", embedded=False, public_read=False)))
    app.config["TESTING"] = True
    tokens = issue_tokens(app.extensions["registry"].db)
    yield app, tokens
    app.extensions["registry"].db.dispose()


def call(app, tokens, caller: str, method: str, url: str):
    """One request as ``caller``, from a client whose session has a CSRF token (sent along),
    so that only credentials decide the answer."""
    client = app.test_client()
    csrf = csrf_token(client)
    headers = {"X-CSRF-Token": csrf}
    if caller == "malformed":
        headers["Authorization"] = "Bearer not-a-registry-token"
    elif caller != "none":
        headers.update(bearer(tokens[caller]))
    data = {"csrf_token": csrf} if method != "GET" else None
    return client.open(url, method=method, headers=headers, data=data)


def error_code(response) -> str | None:
    body = response.get_json(silent=True)
    if not body:
        return None
    return body["error"] if isinstance(body["error"], str) else body["error"]["code"]


def error_message(response) -> str:
    """The error's text in either shape: the registry's {"error": {"code", "message"}} or TF Serving's
    {"error": "..."}."""
    error = (response.get_json(silent=True) or {}).get("error")
    return error if isinstance(error, str) else (error or {}).get("message", "")


def test_every_route_the_app_serves_has_a_stated_scope(app):
    served = {(method, rule.rule) for rule in app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert sorted(served - set(ACCESS)) == [], "state who may call these new routes in ACCESS"
    assert sorted(set(ACCESS) - served) == [], "these routes are no longer served: remove them from ACCESS"


def test_auth_matrix_every_route_and_every_kind_of_caller(secured):
    app, tokens = secured
    checked = 0
    for method, rule, url in routes(app):
        required = ACCESS[(method, rule)]
        page = is_page(url)
        for caller in CALLERS:
            response = call(app, tokens, caller, method, url)
            where = (caller, method, url, response.status_code, response.get_data(as_text=True)[:200])
            if required is ANYONE:
                assert response.status_code not in (401, 403), where
            elif caller == "none" and page:
                assert response.status_code == 302, where
                assert "/sign-in" in response.headers["Location"], where
            elif caller in ("none", "revoked", "malformed"):
                assert response.status_code == 401, where
                assert response.headers["WWW-Authenticate"].startswith("Bearer realm="), where
                if not page:
                    assert error_code(response) is not None, where
                if caller == "none":  # the answer names the scope the route needs
                    assert f"needs a token with {required} scope" in error_message(response), where
            elif RANK[caller] >= RANK[required]:
                assert response.status_code not in (401, 403), where
            else:
                assert response.status_code == 403, where
                if not page:
                    assert error_message(response).endswith(f"this needs {required}"), where
                if url.startswith("/api/"):
                    assert error_code(response) == "insufficient_scope", where
            checked += 1
    assert checked == len(routes(app)) * len(CALLERS) == len(ACCESS) * len(CALLERS)


def test_public_read_opens_reads_but_not_writes(tmp_path):
    from registry.app import create_app

    app = create_app(seed_database(make_settings(tmp_path / "h", embedded=False, public_read=True)))
    tokens = issue_tokens(app.extensions["registry"].db)
    for method, rule, url in routes(app):
        response = call(app, tokens, "none", method, url)
        where = (method, url, response.status_code)
        if ACCESS[(method, rule)] in (ANYONE, READ):
            assert response.status_code not in (401, 403), where
        elif is_page(url):
            assert response.status_code == 302 and "/sign-in" in response.headers["Location"], where
        else:
            assert response.status_code == 401, where
    app.extensions["registry"].db.dispose()


def test_a_route_without_a_rule_needs_admin(tmp_path):
    from registry.app import create_app

    app = create_app(seed_database(make_settings(tmp_path / "h")))
    app.add_url_rule("/api/v1/forgotten", "api.forgotten", lambda: {"ok": True})
    tokens = issue_tokens(app.extensions["registry"].db)
    client = app.test_client()
    assert client.get("/api/v1/forgotten").status_code == 401
    assert client.get("/api/v1/forgotten", headers=bearer(tokens["write"])).status_code == 403
    assert client.get("/api/v1/forgotten", headers=bearer(tokens["admin"])).get_json() == {"ok": True}
    app.extensions["registry"].db.dispose()


# -- modes -------------------------------------------------------------------------------------------

def test_embedded_default_is_open_until_the_first_token_then_writes_need_one(client, registry):
    assert client.put("/api/v1/models/cnn/aliases/prod", json={"version": 1}).status_code == 404  # reached
    assert client.get("/api/v1/tokens").status_code == 401  # admin always needs a token
    _, token = auth.create_token(registry.db, "first", "admin", Actor("tests"))
    response = client.put("/api/v1/models/cnn/aliases/prod", json={"version": 1})
    assert response.status_code == 401 and "write scope" in response.get_json()["error"]["message"]
    assert client.get("/api/v1/models").status_code == 200  # reads stay public in the embedded default
    auth.revoke_token(registry.db, "first", Actor("tests"))
    assert client.put("/api/v1/models/cnn/aliases/prod", json={"version": 1}).status_code == 401


def test_outside_the_embedded_default_writes_need_a_token_from_the_start(tmp_path):
    from registry.app import create_app

    app = create_app(seed_database(make_settings(tmp_path / "h", embedded=False, public_read=False)))
    client = app.test_client()
    assert client.get("/api/v1/models").status_code == 401
    assert client.put("/api/v1/models/cnn/aliases/prod", json={"version": 1}).status_code == 401
    app.extensions["registry"].db.dispose()


def test_auth_off_leaves_reads_and_writes_open_but_not_admin(tmp_path):
    from registry.app import create_app

    app = create_app(seed_database(make_settings(tmp_path / "h", embedded=False, public_read=False, auth="off")))
    issue_tokens(app.extensions["registry"].db)
    client = app.test_client()
    assert client.get("/api/v1/models").status_code == 200
    assert client.put("/api/v1/models/cnn/aliases/prod", json={"version": 1}).status_code == 404
    assert client.get("/api/v1/audit").status_code == 401
    app.extensions["registry"].db.dispose()


def test_settings_from_the_environment(monkeypatch, tmp_path):
    from registry.config import Settings

    monkeypatch.setenv("REGISTRY_HOME", str(tmp_path))
    for name in ("REGISTRY_DATABASE_URL", "REGISTRY_PUBLIC_READ", "REGISTRY_AUTH", "REGISTRY_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    embedded = Settings.from_env()
    assert (embedded.embedded, embedded.public_read, embedded.auth) == (True, True, "auto")
    monkeypatch.setenv("REGISTRY_DATABASE_URL", "postgresql+psycopg://db/registry")
    server = Settings.from_env()
    assert (server.embedded, server.public_read) == (False, False)
    monkeypatch.setenv("REGISTRY_PUBLIC_READ", "1")
    assert Settings.from_env().public_read is True
    monkeypatch.setenv("REGISTRY_AUTH", "sometimes")
    with pytest.raises(ValueError, match="REGISTRY_AUTH must be one of auto, on, off"):
        Settings.from_env()


# -- tokens ---------------------------------------------------------------------------------------------

def test_tokens_are_stored_hashed_never_in_plain(secured):
    app, tokens = secured
    registry = app.extensions["registry"]
    with registry.db.engine.connect() as connection:
        rows = connection.execute(sa.text("select * from api_tokens where name = 'write-token'")).mappings().all()
    assert len(rows) == 1
    row = dict(rows[0])
    token = tokens["write"]
    assert row["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert token.startswith(f"rgt_{row['prefix']}_")
    secret = token.split("_", 2)[2]
    assert all(secret not in str(value) for value in row.values())
    for path in registry.settings.home.glob("registry.db*"):  # the database file and its WAL
        assert secret.encode() not in path.read_bytes()


def test_a_token_that_differs_in_one_character_is_refused(secured):
    app, tokens = secured
    token = tokens["admin"]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    response = app.test_client().get("/api/v1/models", headers=bearer(forged))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.get_json()["error"]["message"].startswith("unknown token")


def test_token_api_creates_lists_and_revokes(secured):
    app, tokens = secured
    client = app.test_client()
    admin = bearer(tokens["admin"])
    created = client.post("/api/v1/tokens", json={"name": "ci", "scope": "write"}, headers=admin)
    assert created.status_code == 201
    token = created.get_json()["token"]
    assert client.put("/api/v1/models/x/aliases/p", json={"version": 1}, headers=bearer(token)).status_code == 404
    listed = client.get("/api/v1/tokens", headers=admin).get_json()["tokens"]
    assert {t["name"]: t["scope"] for t in listed if t["active"]} == {
        "read-token": "read", "write-token": "write", "promote-token": "promote", "admin-token": "admin",
        "ci": "write"}
    assert all("token" not in t for t in listed)
    again = client.post("/api/v1/tokens", json={"name": "ci"}, headers=admin)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "token_name_taken"
    bad = client.post("/api/v1/tokens", json={"name": "ci2", "scope": "root"}, headers=admin)
    assert bad.status_code == 400 and "scope must be one of read, write, promote, admin" in bad.get_json()["error"]["message"]
    revoked = client.delete("/api/v1/tokens/ci", headers=admin)
    assert revoked.status_code == 200 and revoked.get_json()["active"] is False
    response = client.get("/api/v1/models", headers=bearer(token))
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "token_revoked"


def test_cli_creates_and_revokes_tokens_against_the_database(live_server, models):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "REGISTRY_HOME": str(live_server.settings.home),
           "REGISTRY_URL": live_server.url}
    env.pop("REGISTRY_DATABASE_URL", None)
    env.pop("REGISTRY_TOKEN", None)

    def registry(*args, **extra):
        return subprocess.run([sys.executable, "-m", "registry.cli", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=120)

    created = registry("token", "create", "--scope", "write", "--name", "ci")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"rgt_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", token)
    frozen = str(models["frozen"].frozen_graph)
    refused = registry("push", "cnn", "--frozen", frozen)
    assert refused.returncode != 0 and "needs a token with write scope" in refused.stderr
    pushed = registry("push", "cnn", "--frozen", frozen, REGISTRY_TOKEN=token)
    assert pushed.returncode == 0, pushed.stderr
    assert "cnn version 1: queued" in pushed.stdout
    with_option = registry("alias", "cnn", "production", "1", "--token", token)
    assert with_option.returncode == 0, with_option.stderr
    listed = registry("token", "ls")
    assert re.search(r"\bci\s+write\s+rgt_" + token[4:12], listed.stdout), listed.stdout
    assert token not in listed.stdout
    revoked = registry("token", "revoke", "ci")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    after = registry("push", "cnn", "--frozen", frozen, REGISTRY_TOKEN=token)
    assert after.returncode != 0 and "token 'ci' was revoked" in after.stderr
    events = requests.get(f"{live_server.url}/api/v1/audit", headers=bearer(
        auth.create_token(live_server.registry.db, "auditor", "admin", Actor("tests"))[1])).json()["events"]
    assert [(e["action"], e["actor"]) for e in events][:5] == [
        ("token.create", "tests"), ("token.revoke", "cli:" + _user()), ("alias.set", "ci"), ("version.push", "ci"),
        ("token.create", "cli:" + _user())]
    assert events[2]["remote_addr"] == "127.0.0.1" and events[2]["target"] == "cnn:production"


def _user() -> str:
    import getpass

    return getpass.getuser()


# -- audit log ----------------------------------------------------------------------------------------

def test_every_write_is_audited_with_who_what_and_from_where(secured, models):
    app, tokens = secured
    client = app.test_client()
    write, admin = bearer(tokens["write"]), bearer(tokens["admin"])
    client.post("/api/v1/models/cnn/versions", data=frozen_form(models["frozen"].frozen_graph),
                content_type="multipart/form-data", headers=write)
    client.patch("/api/v1/models/cnn/versions/1", json={"description": "first"}, headers=write)
    assert client.put("/api/v1/models/cnn/aliases/production", json={"version": 9}, headers=write).status_code == 404
    client.put("/api/v1/models/cnn/aliases/production", json={"version": 1}, headers=write)
    client.delete("/api/v1/models/cnn/aliases/production", headers=write)
    events = client.get("/api/v1/audit", headers=admin).get_json()["events"]
    latest = [(e["action"], e["target"], e["actor"]) for e in events[:4]]
    assert latest == [("alias.delete", "cnn:production", "write-token"),
                      ("alias.set", "cnn:production", "write-token"),
                      ("version.update", "cnn/1", "write-token"),
                      ("version.push", "cnn/1", "write-token")]  # the refused alias left no event
    push_event = events[3]
    assert push_event["details"]["source"] == "frozen"
    assert push_event["details"]["files"][0]["sha256"] == hashlib.sha256(
        models["frozen"].frozen_graph.read_bytes()).hexdigest()
    assert push_event["remote_addr"] == "127.0.0.1" and push_event["token_id"] is not None
    assert events[1]["details"] == {"version": 1, "previous": None}
    assert [e["action"] for e in events[4:]] == ["token.revoke"] + ["token.create"] * 5  # a token per scope, +1
    first = client.get("/api/v1/audit?page_size=3", headers=admin).get_json()
    second = client.get(f"/api/v1/audit?page_size=3&page_token={first['next_page_token']}", headers=admin).get_json()
    assert [e["id"] for e in first["events"] + second["events"]] == [e["id"] for e in events[:6]]
    only = client.get("/api/v1/audit?action=alias.set", headers=admin).get_json()["events"]
    assert [e["action"] for e in only] == ["alias.set"]
    page = client.get("/audit", headers={**admin, "Accept": "text/html"}).get_data(as_text=True)
    assert 'data-action="version.push"' in page and "write-token" in page


# -- browser sessions -----------------------------------------------------------------------------------

def sign_in(client, token: str, next_url: str = ""):
    return client.post("/sign-in", data={"token": token, "next": next_url, "csrf_token": csrf_token(client)})


def test_pages_send_anonymous_visitors_to_sign_in_and_back(secured):
    app, tokens = secured
    client = app.test_client()
    response = client.get("/models/cnn?page_size=5")
    assert response.status_code == 302
    assert response.headers["Location"] == "/sign-in?next=/models/cnn?page_size%3D5"
    wrong = sign_in(client, "rgt_nothing")
    assert wrong.status_code == 400 and "malformed" in wrong.get_data(as_text=True)
    response = sign_in(client, tokens["read"], "/push")
    assert response.status_code == 302 and response.headers["Location"] == "/push"
    assert client.get("/push").status_code == 403  # read scope cannot push
    assert "read-token (read)" in client.get("/").get_data(as_text=True)
    assert sign_in(client, tokens["read"], "https://evil.example/").headers["Location"] == "/"
    client.post("/sign-out", data={"csrf_token": csrf_token(client)})
    assert client.get("/").status_code == 302


def test_session_cookie_is_httponly_samesite_lax_and_secure_over_https(secured):
    app, tokens = secured
    response = sign_in(app.test_client(), tokens["write"])
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    secure_client = app.test_client()
    secure_client.get("/sign-in", base_url="https://localhost")
    body = secure_client.get("/sign-in", base_url="https://localhost").get_data(as_text=True)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', body).group(1)
    response = secure_client.post("/sign-in", data={"token": tokens["write"], "csrf_token": csrf},
                                  base_url="https://localhost")
    assert response.status_code == 302 and "Secure" in response.headers["Set-Cookie"]


def test_cookie_authenticated_writes_need_the_csrf_token(secured):
    app, tokens = secured
    client = app.test_client()
    sign_in(client, tokens["write"])
    csrf = csrf_token(client)
    response = client.put("/api/v1/models/cnn/aliases/production", json={"version": 1})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "csrf_failed"
    wrong = client.put("/api/v1/models/cnn/aliases/production", json={"version": 1},
                       headers={"X-CSRF-Token": "x" * len(csrf)})
    assert wrong.status_code == 403
    accepted = client.put("/api/v1/models/cnn/aliases/production", json={"version": 1},
                          headers={"X-CSRF-Token": csrf})
    assert accepted.status_code == 404  # past the checks, to the handler: no model cnn yet
    form = client.post("/models/cnn/aliases", data={"alias": "production", "version": "1"})
    assert form.status_code == 403 and "CSRF" in form.get_data(as_text=True)
    form = client.post("/models/cnn/aliases", data={"alias": "production", "version": "1", "csrf_token": csrf})
    assert form.status_code == 302
    assert client.post("/sign-in", data={"token": tokens["write"]}).status_code == 403  # the sign-in form too
    # Bearer requests are not exposed to CSRF: no token needed
    assert client.put("/api/v1/models/cnn/aliases/production", json={"version": 1},
                      headers=bearer(tokens["write"])).status_code == 404


def test_revoking_a_token_signs_its_browser_sessions_out(secured):
    app, tokens = secured
    client = app.test_client()
    sign_in(client, tokens["write"])
    assert client.get("/").status_code == 200
    auth.revoke_token(app.extensions["registry"].db, "write-token", Actor("tests"))
    response = client.get("/")
    assert response.status_code == 302 and "signed_out=1" in response.headers["Location"]
    assert "your token was revoked" in client.get(response.headers["Location"]).get_data(as_text=True)
    assert client.get("/api/v1/models").status_code == 401


def test_the_session_secret_is_generated_once_and_kept_private(tmp_path):
    from registry.auth.access import secret_key

    settings = make_settings(tmp_path)
    first = secret_key(settings)
    assert len(first) >= 48 and secret_key(settings) == first
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600
    assert secret_key(make_settings(tmp_path, secret_key="from-the-environment")) == "from-the-environment"


def test_label_service_rest_refuses_without_a_token_in_tf_serving_error_shape(tmp_path):
    server, stop = start_live_server(make_settings(tmp_path / "h", embedded=False, public_read=False),
                                     workers=False)
    try:
        tokens = issue_tokens(server.registry.db)
        response = requests.get(f"{server.url}/v1/models/cnn")
        assert response.status_code == 401 and isinstance(response.json()["error"], str)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        response = requests.get(f"{server.url}/v1/models/cnn", headers=bearer(tokens["read"]))
        assert response.status_code == 404
    finally:
        stop()


def test_tokens_and_the_audit_log_on_postgresql(pg_url, tmp_path):
    from registry.app import create_app

    app = create_app(make_settings(tmp_path / "h", database_url=pg_url, embedded=False, public_read=False))
    try:
        tokens = issue_tokens(app.extensions["registry"].db)
        client = app.test_client()
        assert client.get("/api/v1/models", headers=bearer(tokens["read"])).status_code == 200
        assert client.get("/api/v1/models", headers=bearer(tokens["revoked"])).status_code == 401
        assert client.put("/api/v1/models/x/aliases/p", json={"version": 1},
                          headers=bearer(tokens["read"])).status_code == 403
        events = client.get("/api/v1/audit", headers=bearer(tokens["admin"])).get_json()["events"]
        assert [e["action"] for e in events] == ["token.revoke"] + ["token.create"] * 5  # one per scope, +1
    finally:
        app.extensions["registry"].db.dispose()


def test_open_writes_are_audited_as_anonymous_with_their_address(client, registry, models):
    push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
    _, admin = auth.create_token(registry.db, "admin", "admin", Actor("tests"))
    events = client.get("/api/v1/audit", headers=bearer(admin)).get_json()["events"]
    assert [(e["action"], e["actor"], e["token_id"], e["remote_addr"]) for e in events] == [
        ("token.create", "tests", None, None), ("version.push", "anonymous", None, "127.0.0.1")]
