"""Who may do what, and what they did.

* ``tokens.py``: API tokens (hashed, scoped), browser sessions, and who may act without a token;
* ``access.py``: every endpoint's required scope, checked before each request; sessions, CSRF;
* ``audit.py``: the audit log, written in the transaction of each change;
* ``limits.py``: per-client rate limits, enforced in one hook.

``from registry import auth`` gives the token API (``auth.verify``, ``auth.create_token``,
the scopes); the Flask hooks live in ``registry.auth.access`` and ``registry.auth.limits``.
"""

from registry.auth.tokens import (
    ADMIN,
    PROMOTE,
    READ,
    SCOPES,
    TOKEN_NAME_RE,
    TOKEN_PREFIX,
    WRITE,
    TokenInfo,
    allows,
    anonymous_allowed,
    any_token_created,
    create_token,
    end_web_session,
    list_tokens,
    revoke_token,
    start_web_session,
    validate_scope,
    validate_token_name,
    verify,
    web_session_token,
)

__all__ = [
    "ADMIN", "PROMOTE", "READ", "SCOPES", "TOKEN_NAME_RE", "TOKEN_PREFIX", "WRITE", "TokenInfo", "allows", "anonymous_allowed", "any_token_created",
    "create_token", "end_web_session", "list_tokens", "revoke_token", "start_web_session", "validate_scope",
    "validate_token_name", "verify", "web_session_token",
]
