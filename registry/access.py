"""Who may call which endpoint: the one place where requests are authorised.

``RULES`` names the scope every endpoint needs (``None``: public).  A
``before_request`` hook finds the caller — a ``Authorization: Bearer`` token, or
the token a browser signed in with (kept in the session cookie) — and answers
401 (no or bad credentials, with ``WWW-Authenticate: Bearer``) or 403 (scope too
narrow, or a cookie-authenticated form without its CSRF token) before any
handler runs.  Pages send anonymous visitors to the sign-in page instead.  An
endpoint missing from ``RULES`` needs ``admin`` (and a test fails).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, g, has_request_context, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from registry import auth
from registry.audit import Actor
from registry.auth import ADMIN, READ, WRITE, TokenInfo
from registry.config import Settings
from registry.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

PUBLIC = None

RULES: dict[str, str | None] = {
    "healthz": PUBLIC,
    "readyz": PUBLIC,
    "api.openapi": PUBLIC,
    "web.static": PUBLIC,
    "web.sign_in": PUBLIC,
    "web.sign_out": PUBLIC,
    # reading the catalog, downloading, labelling
    "api.list_models": READ,
    "api.get_model": READ,
    "api.list_versions": READ,
    "api.get_version": READ,
    "api.download_frozen": READ,
    "api.download_labels": READ,
    "api.download_saved_model": READ,
    "api.serving_plan": READ,
    "api.serving_config": READ,
    "web.models": READ,
    "web.model": READ,
    "web.version": READ,
    "web.compare": READ,
    "web.demo_file": READ,
    "serving.get_model": READ,
    "serving.post_model": READ,  # :label, :compare, :predict run graphs but change nothing
    # changing the catalog
    "api.push_version": WRITE,
    "api.update_version": WRITE,
    "api.set_alias": WRITE,
    "api.delete_alias": WRITE,
    "api.delete_version": WRITE,
    "api.delete_model": WRITE,
    "api.set_served_versions": WRITE,  # which versions a TF Serving export serves: like moving an alias
    "web.push": WRITE,
    "web.set_alias": WRITE,
    "api.get_allowed_ops": READ,
    # tokens, the audit log, and relaxing the converter's op scan for a model
    "api.set_allowed_ops": ADMIN,
    "api.list_tokens": ADMIN,
    "api.create_token": ADMIN,
    "api.revoke_token": ADMIN,
    "api.list_audit_events": ADMIN,
    "web.audit": ADMIN,
}

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_TOKEN = "token_id"
SESSION_CSRF = "csrf"


@dataclass(frozen=True)
class Caller:
    """Who sent this request: a token (by ``via`` bearer header or session cookie) or nobody."""

    token: TokenInfo | None = None
    via: str | None = None  # "bearer" | "session" | None

    @property
    def name(self) -> str:
        return self.token.name if self.token else "anonymous"


def current_caller() -> Caller:
    return g.get("caller") or Caller()


def current_actor() -> Actor:
    """The actor the audit log records for this request."""
    caller = current_caller()
    return Actor(caller.name, caller.token.id if caller.token else None, request.remote_addr)


def csrf_token() -> str:
    """This session's CSRF token (made on first use), for forms and the pages' scripts."""
    token = session.get(SESSION_CSRF)
    if not token:
        token = session[SESSION_CSRF] = secrets.token_urlsafe(32)
    return token


def sign_in(token: TokenInfo) -> None:
    """Bind the browser session to ``token``, with a fresh session and CSRF token."""
    session.clear()
    session[SESSION_TOKEN] = token.id
    csrf_token()


def _csrf_ok() -> bool:
    expected = session.get(SESSION_CSRF)
    sent = request.headers.get(CSRF_HEADER) or (
        request.form.get(CSRF_FIELD) if request.mimetype in ("application/x-www-form-urlencoded",
                                                             "multipart/form-data") and request.endpoint
        and request.endpoint.startswith("web.") else None)
    return bool(expected and sent and hmac.compare_digest(str(expected), str(sent)))


def _bearer() -> str | None:
    """The token of the Authorization header; Unauthorized when the header is not a Bearer token."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    kind, _, value = header.strip().partition(" ")
    if kind.lower() != "bearer" or not value.strip():
        g.auth_error = "invalid_request"
        raise Unauthorized("send the token as Authorization: Bearer rgt_…", code="invalid_token")
    return value.strip()


def _identify(registry) -> Caller:
    token = _bearer()
    if token is not None:
        try:
            return Caller(auth.verify(registry.db, token), "bearer")
        except Unauthorized:
            g.auth_error = "invalid_token"
            raise
    token_id = session.get(SESSION_TOKEN)
    if token_id is not None:
        info = auth.active_token(registry.db, int(token_id))
        if info is not None:
            return Caller(info, "session")
        session.pop(SESSION_TOKEN, None)  # revoked since sign-in: signed out
        g.signed_out = True
    return Caller()


def _is_page() -> bool:
    from registry.api.errors import wants_json

    return (request.endpoint or "").startswith("web.") and not wants_json()


def check_request():
    """The before_request hook: identify the caller and apply ``RULES``."""
    endpoint = request.endpoint
    if endpoint is None or request.method == "OPTIONS":
        return None  # no such route (404/405 follow), or a CORS-style probe that runs nothing
    from registry.app import get_registry

    registry = get_registry()
    required = RULES.get(endpoint, ADMIN)
    unsafe = request.method in UNSAFE_METHODS
    if required is PUBLIC:
        if unsafe and endpoint.startswith("web.") and not _csrf_ok():
            raise Forbidden("the form is out of date (missing or wrong CSRF token): reload the page and try again",
                            code="csrf_failed")
        if endpoint.startswith("web."):  # the page header shows who is signed in
            try:
                g.caller = _identify(registry)
            except Unauthorized:
                pass
        return None
    caller = g.caller = _identify(registry)
    granted = caller.token.scope if caller.token else None
    if not (auth.allows(granted, required) or auth.anonymous_allowed(registry.settings, registry.db, required)):
        if caller.token is None:
            if _is_page():
                back = request.full_path.rstrip("?") if request.method == "GET" else None
                return redirect(url_for("web.sign_in", next=back, signed_out=1 if g.get("signed_out") else None))
            g.auth_error = "invalid_token" if g.get("signed_out") else None
            raise Unauthorized(f"this needs a token with {required} scope: send Authorization: Bearer <token> "
                               "(REGISTRY_TOKEN for the CLI; an admin creates one with `registry token create`)",
                               code="unauthorized")
        raise Forbidden(f"token {caller.token.name!r} has {caller.token.scope} scope; this needs {required}",
                        code="insufficient_scope")
    if unsafe and caller.via != "bearer" and (caller.via == "session" or endpoint.startswith("web.")):
        if not _csrf_ok():
            raise Forbidden(f"missing or wrong CSRF token: forms send it as {CSRF_FIELD}, scripts as the "
                            f"{CSRF_HEADER} header (reload the page and try again)", code="csrf_failed")
    return None


def _challenge(response):
    if response.status_code == 401 and "WWW-Authenticate" not in response.headers:
        error = g.get("auth_error")
        response.headers["WWW-Authenticate"] = 'Bearer realm="registry"' + (f', error="{error}"' if error else "")
    return response


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the Secure flag whenever the request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or (has_request_context() and request.is_secure))


def secret_key(settings: Settings) -> str:
    """REGISTRY_SECRET_KEY, else a key generated once and kept in REGISTRY_HOME/secret_key."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.home) / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    for _ in range(50):  # another process may be writing it right now
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty: delete it, or set REGISTRY_SECRET_KEY")


def install(app: Flask, settings: Settings) -> None:
    """Sessions, the access check and the 401 challenge header for ``app``."""
    app.secret_key = secret_key(settings)
    app.config.update(SESSION_COOKIE_NAME="registry_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax")
    app.session_interface = _SessionInterface()
    app.before_request(check_request)
    app.after_request(_challenge)
    app.jinja_env.globals.update(csrf_token=csrf_token, current_caller=current_caller)
