"""Who may call which endpoint: the one place where requests are authorised.

``RULES`` names the scope every endpoint needs (``None``: public).  A
``before_request`` hook first refuses what no browser page of ours sends: a
``Host`` the server does not answer to (400: DNS rebinding) and a write from a
page of another site (403: ``Origin`` / ``Sec-Fetch-Site``, unless the request
carries an ``Authorization: Bearer`` header, which such a page cannot add).  Then it
finds the caller — a ``Authorization: Bearer`` token, or the browser session a
token signed in (its id in the session cookie, the session itself in the
database) — and answers 401 (no or bad credentials, with ``WWW-Authenticate:
Bearer``) or 403 (scope too narrow, or a cookie-authenticated form without its
CSRF token) before any handler runs.  Pages send anonymous visitors to the
sign-in page instead.  An endpoint missing from ``RULES`` needs ``admin`` (and a
test fails).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, g, has_request_context, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from registry.auth import tokens
from registry.auth.audit import Actor
from registry.auth.tokens import ADMIN, READ, WRITE, TokenInfo
from registry.config import Settings, owner_only
from registry.context import get_registry
from registry.errors import Forbidden, InvalidRequest, Unauthorized
from registry.http_errors import wants_json

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
    "api.get_alias": READ,
    "api.list_metrics": READ,
    "api.get_alias_history": READ,
    "api.list_alias_rules": READ,
    "api.search": READ,  # versions of every model matching a filter
    "api.download_frozen": READ,
    "api.download_labels": READ,
    "api.download_saved_model": READ,
    "api.download_saved_model_tar": READ,
    "api.serving_plan": READ,
    "api.serving_config": READ,
    "web.models": READ,
    "web.model": READ,
    "web.version": READ,
    "web.compare": READ,
    "web.comparison": READ,
    "web.demo_file": READ,
    "serving.list_models": READ,
    "serving.get_model": READ,
    "serving.post_model": READ,  # :label, :compare, :predict run graphs but change nothing
    "serving.prometheus_metrics": READ,  # request counts per model: as much as the catalog tells
    "api.list_comparisons": READ,  # stored comparison reports (:compare runs them, with serving.post_model)
    "api.get_comparison": READ,
    "api.get_auto_compare": READ,
    # changing the catalog
    "api.push_version": WRITE,
    "api.update_version": WRITE,
    "api.set_model_tags": WRITE,
    "api.set_auto_compare": WRITE,
    "api.record_metrics": WRITE,
    "api.set_version_tags": WRITE,
    "api.set_prediction_output": WRITE,
    "api.set_alias": WRITE,  # a protected alias needs promote (registry.catalog.aliases checks it)
    "api.rollback_alias": WRITE,  # the same
    "api.delete_alias": WRITE,
    "api.delete_version": WRITE,
    "api.delete_model": WRITE,
    "api.update_model": WRITE,  # its description
    "api.set_served_versions": WRITE,  # which versions a TF Serving export serves: like moving an alias
    "api.set_shadow": WRITE,  # shadow traffic: which version gets a copy of an alias's requests
    "api.delete_shadow": WRITE,
    "api.get_shadow": READ,  # the shadow setting and its agreement figures (and samples, when kept)
    "web.push": WRITE,
    "web.set_alias": WRITE,
    "web.set_tags": WRITE,
    "web.set_model_tags": WRITE,
    "web.set_prediction_output": WRITE,
    "api.get_allowed_ops": READ,
    # evaluation sets: listing and downloading read, adding and deleting (audited) write
    "api.list_eval_sets": READ,
    "api.list_eval_set_revisions": READ,
    "api.get_eval_set_revision": READ,
    "api.download_eval_set": READ,
    "api.get_eval_set_input": READ,
    "api.add_eval_set": WRITE,
    "api.delete_eval_set": WRITE,
    "api.delete_eval_set_revision": WRITE,
    # tokens, the audit log, and relaxing the converter's op scan for a model
    "api.set_allowed_ops": ADMIN,
    "api.set_alias_rule": ADMIN,  # protecting an alias and setting its gate
    "api.list_tokens": ADMIN,
    "api.create_token": ADMIN,
    "api.revoke_token": ADMIN,
    "api.list_audit_events": ADMIN,
    # webhooks: their targets, secrets and delivery logs
    "api.create_webhook": ADMIN,
    "api.list_webhooks": ADMIN,
    "api.get_webhook": ADMIN,
    "api.delete_webhook": ADMIN,
    "api.list_webhook_deliveries": ADMIN,
    "api.redeliver_webhook": ADMIN,
    "web.audit": ADMIN,
    "web.webhooks": ADMIN,
    "web.redeliver": ADMIN,
}

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_ID = "sid"  # the browser session's random id (registry.auth.tokens.start_web_session)
SESSION_CSRF = "csrf"
DEFAULT_PORTS = {"http": 80, "https": 443}


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
    return Actor(caller.name, caller.token.id if caller.token else None, request.remote_addr,
                 caller.token.scope if caller.token else None)


def csrf_token() -> str:
    """This session's CSRF token (made on first use), for forms and the pages' scripts."""
    token = session.get(SESSION_CSRF)
    if not token:
        token = session[SESSION_CSRF] = secrets.token_urlsafe(32)
    return token


def sign_in(token: TokenInfo) -> None:
    """Bind the browser to ``token`` with a new server-side session, and a fresh cookie and CSRF token."""
    session.clear()
    session[SESSION_ID] = tokens.start_web_session(get_registry().db, token.id)
    csrf_token()


def sign_out() -> None:
    """End the browser's session on the server (a copy of the cookie stops working too) and clear it."""
    session_id = session.get(SESSION_ID)
    if isinstance(session_id, str):
        tokens.end_web_session(get_registry().db, session_id)
    session.clear()


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


def _has_bearer_header() -> bool:
    """A page of another site cannot add this header, and browsers never add it on their own (unlike
    Basic credentials they remember)."""
    return request.headers.get("Authorization", "").strip().lower().startswith("bearer ")


def _identify(registry) -> Caller:
    token = _bearer()
    if token is not None:
        try:
            return Caller(tokens.verify(registry.db, token), "bearer")
        except Unauthorized:
            g.auth_error = "invalid_token"
            raise
    session_id = session.get(SESSION_ID)
    if session_id is not None:
        info = tokens.web_session_token(registry.db, session_id) if isinstance(session_id, str) else None
        if info is not None:
            return Caller(info, "session")
        session.pop(SESSION_ID, None)  # signed out (perhaps in another copy of this cookie), or revoked
        g.signed_out = True
    return Caller()


def _host_name(host: str) -> str | None:
    """The name in a Host header ("name:port", "[::1]:port"), lower-cased; None if it has none."""
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:
        return None


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _allowed_host(host: str, allowed_hosts: tuple[str, ...]) -> str | None:
    """None when a request with Host ``host`` may be answered, else the name it refuses (remembered per
    Host value: a server hears the same few on every request)."""
    name = (_host_name(host) or "").rstrip(".")
    if name and (name == "localhost" or _is_ip_address(name) or name in allowed_hosts):
        return None
    return name


def _check_host(settings: Settings) -> None:
    """Refuse a Host this server does not answer to, against DNS rebinding: a page of another site whose
    name the attacker re-points at this machine would otherwise be same-origin with the registry, and
    no Origin check could tell.  Such a request always carries the attacker's name, never an IP address,
    so addresses pass, as do ``localhost`` and the names in ``settings.allowed_hosts``."""
    if "*" in settings.allowed_hosts:
        return
    host = request.host
    name = _allowed_host(host, tuple(settings.allowed_hosts))
    if name is None:
        return
    raise InvalidRequest(f"this server does not answer to Host {host!r} (a check against DNS rebinding): "
                         f"if clients reach the registry under the name {name!r}, add it to "
                         "REGISTRY_ALLOWED_HOSTS (comma-separated names; * for any)", code="host_not_allowed")


def _same_origin(origin: str) -> bool:
    """Whether an Origin header names this server: the same host name and port as the Host header.  The
    scheme is not compared, so a page served over https by a TLS-terminating proxy still matches."""
    try:
        sent, here = urlsplit(origin), urlsplit(f"//{request.host}")
        default = DEFAULT_PORTS.get(sent.scheme)
        return (default is not None and bool(sent.hostname) and sent.hostname == here.hostname
                and (sent.port or default) == (here.port or default))
    except ValueError:
        return False


def _cross_site() -> str | None:
    """What shows that this request comes from a page of another site (None: nothing does).  Browsers
    send Origin with every POST, PUT, PATCH and DELETE, and Sec-Fetch-Site with every request; the CLI
    and curl send neither."""
    origin = request.headers.get("Origin")
    site = (request.headers.get("Sec-Fetch-Site") or "").strip().lower()
    same_origin = origin is not None and _same_origin(origin)
    if site == "cross-site" or (site == "same-site" and not same_origin):
        return f"Sec-Fetch-Site: {site}" + (f", Origin: {origin}" if origin else "")
    if origin is not None and not same_origin:
        return f"Origin: {origin}"
    return None


def _is_page() -> bool:
    return (request.endpoint or "").startswith("web.") and not wants_json()


def check_request():
    """The before_request hook: identify the caller and apply ``RULES``."""
    registry = get_registry()
    _check_host(registry.settings)
    endpoint = request.endpoint
    if endpoint is None or request.method == "OPTIONS":
        return None  # no such route (404/405 follow), or a CORS-style probe that runs nothing
    required = RULES.get(endpoint, ADMIN)
    unsafe = request.method in UNSAFE_METHODS
    if unsafe and not _has_bearer_header():
        reason = _cross_site()
        if reason is not None:
            raise Forbidden(f"a page of another site may not change anything here ({reason}): use the "
                            "registry's own pages, or send an Authorization: Bearer header as the CLI does",
                            code="cross_site_request")
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
    if not (tokens.allows(granted, required) or tokens.anonymous_allowed(registry.settings, registry.db, required)):
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

    def get_signing_serializer(self, app: Flask):
        """Flask's serializer, made once per key (Flask makes a new one on every request, API calls too)."""
        key = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        cached = getattr(self, "_serializer", None)
        if cached is None or cached[0] != key:
            cached = self._serializer = (key, super().get_signing_serializer(app))
        return cached[1]


def secret_key(settings: Settings) -> str:
    """REGISTRY_SECRET_KEY, else a key generated once and kept in REGISTRY_HOME/secret_key."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.home) / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        owner_only(path)  # made readable to others by an older version, or by hand
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
