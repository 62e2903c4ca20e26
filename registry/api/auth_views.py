"""Token management and the audit log (admin scope, see registry.auth.access.RULES)."""

from __future__ import annotations

from registry import auth
from registry.api import bp, schemas
from registry.api.spec import Json, Param, operation
from registry.auth import audit
from registry.auth.access import current_actor
from registry.context import get_registry


@bp.get("/tokens")
@operation("listTokens", summary="API tokens, revoked ones included",
           answers={200: Json(schemas.TokenList, "Every token (never the token itself)")})
def list_tokens():
    return schemas.TokenList(tokens=[schemas.Token.of(t) for t in auth.list_tokens(get_registry().db)])


@bp.post("/tokens")
@operation("createToken", summary="Create a token; the answer is the only place the token is ever shown",
           body=schemas.TokenRequest, answers={
               201: Json(schemas.NewToken, "The new token, with `token`"), 400: "Invalid name or scope",
               409: "An active token has that name"})
def create_token(body: schemas.TokenRequest):
    info, token = auth.create_token(get_registry().db, body.name, body.scope, current_actor())
    return schemas.NewToken.of(info, token=token), 201


@bp.delete("/tokens/<name_or_id>")
@operation("revokeToken", summary="Revoke a token (by active name, or id); it stops at once",
           path=(Param("name_or_id"),), answers={200: Json(schemas.Token, "The revoked token"),
                                                 404: "No such token"})
def revoke_token(name_or_id: str):
    return schemas.Token.of(auth.revoke_token(get_registry().db, name_or_id, current_actor()))


@bp.get("/audit")
@operation("listAuditEvents", summary="The audit log of writes, newest first", query=schemas.AuditQuery,
           answers={200: Json(schemas.AuditPage, "A page of events"), 400: "Bad page size or token"})
def list_audit_events(query: schemas.AuditQuery):
    page = audit.list_events(get_registry().db, page_size=query.page_size, page_token=query.page_token,
                             action=query.action)
    return schemas.AuditPage(events=page.items, next_page_token=page.next_page_token)
