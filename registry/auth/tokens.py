"""API tokens and the access policy.

A token is ``rgt_`` + an 8-character public prefix + ``_`` + 43 random characters
(256 bits).  Only its sha256 is stored; the prefix finds the row and the hashes
are compared with ``hmac.compare_digest``.  Scopes nest: ``admin`` ⊇ ``write`` ⊇
``read``.  Tokens are revoked, never deleted.

Who may act without a token (``anonymous_allowed``):

* ``REGISTRY_AUTH=off``: anyone may read and write (admin still needs an admin token);
* ``REGISTRY_AUTH=auto`` (default): the same while the registry runs on its
  embedded default (SQLite + local folder) and no token was ever created, so
  ``make run`` works out of the box; otherwise as ``on``;
* ``REGISTRY_AUTH=on``: writes need a token; reads need one unless
  ``REGISTRY_PUBLIC_READ`` (default: on in the embedded default, off otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from registry.auth import audit
from registry.auth.audit import Actor
from registry.config import Settings
from registry.db import Database
from registry.errors import Conflict, DatabaseUnavailable, InvalidRequest, NotFound, Unauthorized
from registry.models import ApiToken, WebSession, utcnow

log = logging.getLogger(__name__)

READ, WRITE, PROMOTE, ADMIN = "read", "write", "promote", "admin"
SCOPES = (READ, WRITE, PROMOTE, ADMIN)  # each includes the ones before it
_RANK = {None: 0, READ: 1, WRITE: 2, PROMOTE: 3, ADMIN: 4}

TOKEN_PREFIX = "rgt_"
TOKEN_RE = re.compile(r"^rgt_(?P<prefix>[0-9a-f]{8})_(?P<secret>[A-Za-z0-9_-]{43})$")
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
LAST_USED_RESOLUTION = timedelta(minutes=1)  # how stale last_used_at may get (saves a write per request)


def allows(granted: str | None, required: str | None) -> bool:
    """Whether ``granted`` scope covers ``required`` (None: nothing / public)."""
    return _RANK[granted] >= _RANK[required]


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    scope: str
    prefix: str
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.id, row.name, row.scope, row.prefix, row.created_by, row.created_at, row.last_used_at,
                     row.revoked_at)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}", code="invalid_scope")
    return scope


def validate_token_name(name: object) -> str:
    if not isinstance(name, str) or not TOKEN_NAME_RE.match(name) or name.isdigit():
        raise InvalidRequest(f"invalid token name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-', "
                             "starting with a letter or digit, not only digits", code="invalid_token_name")
    return name


def create_token(db: Database, name: str, scope: str, actor: Actor) -> tuple[TokenInfo, str]:
    """A new token; the token itself is returned here once and never stored."""
    validate_token_name(name)
    validate_scope(scope)
    with db.transaction() as session:
        taken = session.scalar(sa.select(sa.exists().where(ApiToken.name == name, ApiToken.revoked_at.is_(None))))
        if taken:
            raise Conflict(f"an active token is already named {name!r}: revoke it first or pick another name",
                           code="token_name_taken")
        while True:
            prefix = secrets.token_hex(4)
            if not session.scalar(sa.select(sa.exists().where(ApiToken.prefix == prefix))):
                break
        token = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        row = ApiToken(name=name, prefix=prefix, token_sha256=_digest(token), scope=scope, created_by=actor.name)
        session.add(row)
        session.flush()
        audit.record(session, actor, "token.create", f"token {name}", {"token_id": row.id, "scope": scope})
        return _info(row), token


MAX_TOKEN_ID = 2**63 - 1  # ids past it are no id (SQLite raises OverflowError on them)


def _find(session, name_or_id: str) -> ApiToken:
    """The active token named so, else the token with that id."""
    key = str(name_or_id).strip()
    row = session.scalar(sa.select(ApiToken).where(ApiToken.name == key, ApiToken.revoked_at.is_(None)))
    if row is None and key.isascii() and key.isdecimal() and len(key.lstrip("0")) <= len(str(MAX_TOKEN_ID)):
        token_id = int(key)
        row = session.get(ApiToken, token_id) if token_id <= MAX_TOKEN_ID else None
    if row is None:
        raise NotFound(f"no active token named {key!r} and no token with that id (see `registry token ls`)",
                       code="token_not_found")
    return row


def revoke_token(db: Database, name_or_id: str, actor: Actor) -> TokenInfo:
    """Revoke a token by name (the active one) or id; it stops working at once."""
    with db.transaction() as session:
        row = _find(session, name_or_id)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            audit.record(session, actor, "token.revoke", f"token {row.name}", {"token_id": row.id})
        session.execute(sa.delete(WebSession).where(WebSession.token_id == row.id))  # its browsers are signed out
        session.flush()
        return _info(row)


def list_tokens(db: Database) -> list[TokenInfo]:
    with db.transaction() as session:
        return [_info(r) for r in session.scalars(sa.select(ApiToken).order_by(ApiToken.id))]


def any_token_created(db: Database) -> bool:
    """Whether a token was ever created (revoked ones count: revoking the last token
    must not open the registry again)."""
    with db.transaction() as session:
        return bool(session.scalar(sa.select(sa.exists().where(ApiToken.id.is_not(None)))))


def verify(db: Database, token: str) -> TokenInfo:
    """The active token ``token`` is, or Unauthorized saying what is wrong with it."""
    match = TOKEN_RE.match(token)
    if not match:
        raise Unauthorized("the token is malformed: send Authorization: Bearer rgt_…, a token from "
                           "`registry token create`", code="invalid_token")
    with db.transaction() as session:
        row = session.scalar(sa.select(ApiToken).where(ApiToken.prefix == match["prefix"]))
        if row is None or not hmac.compare_digest(row.token_sha256, _digest(token)):
            raise Unauthorized("unknown token: check it, or create one with `registry token create`",
                               code="invalid_token")
        if row.revoked_at is not None:
            raise Unauthorized(f"token {row.name!r} was revoked: ask an admin for a new one", code="token_revoked")
        info = _info(row)
    now = utcnow()
    if info.last_used_at is None or now - info.last_used_at > LAST_USED_RESOLUTION:
        _record_use(db, info.id, now)
    return info


def _record_use(db: Database, token_id: int, now: datetime) -> None:
    """Note when a token was last used: bookkeeping, so a database that refuses writes (read-only,
    full) does not fail the request itself, and reads go on answering."""
    try:
        with db.transaction() as session:
            session.execute(sa.update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
    except DatabaseUnavailable as exc:
        log.warning("could not record the use of token id %d: %s", token_id, exc.message)


def anonymous_allowed(settings: Settings, db: Database, required: str) -> bool:
    """Whether a request without a token may do what needs ``required`` (see the module docstring);
    the database is asked only where the answer depends on it."""
    if required == ADMIN:
        return False
    if required == READ and settings.public_read:
        return True
    if settings.auth == "off":
        return True
    return settings.auth == "auto" and settings.embedded and not any_token_created(db)


# -- browser sessions ------------------------------------------------------------------------


def _session_digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start_web_session(db: Database, token_id: int) -> str:
    """A new signed-in browser session for ``token_id``: its random id, for the cookie (only the id's
    sha256 is stored)."""
    session_id = secrets.token_urlsafe(32)
    with db.transaction() as session:
        session.add(WebSession(id_sha256=_session_digest(session_id), token_id=token_id))
    return session_id


def web_session_token(db: Database, session_id: str) -> TokenInfo | None:
    """The token a browser session holds, while the session exists (not signed out) and the token is
    active (not revoked)."""
    with db.transaction() as session:
        row = session.scalar(sa.select(ApiToken).join(WebSession, WebSession.token_id == ApiToken.id).where(
            WebSession.id_sha256 == _session_digest(session_id), ApiToken.revoked_at.is_(None)))
        return _info(row) if row is not None else None


def end_web_session(db: Database, session_id: str) -> None:
    """Sign a browser session out: its cookie, and every copy of it, stops working."""
    with db.transaction() as session:
        session.execute(sa.delete(WebSession).where(WebSession.id_sha256 == _session_digest(session_id)))
