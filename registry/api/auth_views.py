"""Token management and the audit log (admin scope, see registry.auth.access.RULES)."""

from __future__ import annotations

from flask import request

from registry import auth
from registry.api import bp
from registry.api.parsing import int_arg, json_body, page_token_arg
from registry.auth import audit
from registry.auth.access import current_actor
from registry.context import get_registry
from registry.errors import InvalidRequest


@bp.get("/tokens")
def list_tokens():
    return {"tokens": [t.to_dict() for t in auth.list_tokens(get_registry().db)]}


@bp.post("/tokens")
def create_token():
    body = json_body()
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or set(body) - {"name", "scope"}:
        raise InvalidRequest('send a JSON object like {"name": "ci", "scope": "write"} (scope: read, write or '
                             'admin; default read)', code="invalid_token_request")
    info, token = auth.create_token(get_registry().db, body["name"], body.get("scope", auth.READ), current_actor())
    return {**info.to_dict(), "token": token}, 201


@bp.delete("/tokens/<name_or_id>")
def revoke_token(name_or_id: str):
    return auth.revoke_token(get_registry().db, name_or_id, current_actor()).to_dict()


@bp.get("/audit")
def list_audit_events():
    page = audit.list_events(get_registry().db, page_size=int_arg("page_size"),
                             page_token=page_token_arg(), action=request.args.get("action") or None)
    return {"events": [e.to_dict() for e in page.items], "next_page_token": page.next_page_token}
