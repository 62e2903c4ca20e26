"""Alias history, "as of" lookups, rollback, and protected aliases with their gates (issue 17):
thin handlers over ``registry.catalog.aliases``.  Moving and removing an alias stay in ``views``."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import request

from registry.api import bp, schemas
from registry.api.spec import Json, Param, operation
from registry.auth.access import current_actor
from registry.catalog import aliases
from registry.context import get_registry
from registry.errors import InvalidRequest

NAME = Param("name", "Model name", schemas.ModelName)
ALIAS = Param("alias")


def _move(move) -> dict | None:
    return None if move is None else schemas.AliasMove.model_validate(move).model_dump()


def _when(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"at={text!r} is not a time: write it like 2026-11-24T10:00Z", code="invalid_at") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@bp.get("/models/<name>/aliases/<alias>")
@operation("getAlias", summary="Where the alias points now, or (?at=2026-11-24T10:00Z) where it pointed then",
           path=(NAME, ALIAS), answers={200: Json(schemas.AliasState, "The alias then or now, with its rule"),
                                        400: "A malformed at=", 404: "No such model, or an alias it never had"})
def get_alias(name: str, alias: str):
    db = get_registry().db
    rule = next((r for r in aliases.alias_rules(db, name) if r.alias == alias), None)
    at = request.args.get("at")
    when = _when(at) if at else datetime.now(timezone.utc)
    move = aliases.alias_at(db, name, alias, when)
    if move is None and not at:
        aliases.alias_history(db, name, alias, page_size=1)  # a 404 naming the alias when it never existed
    return schemas.AliasState(model=name, alias=alias, version=move.to_version if move else None,
                              at=when if at else None, move=_move(move), protected=bool(rule and rule.protected),
                              gate=rule.gate if rule else None)


@bp.get("/models/<name>/aliases/<alias>/history")
@operation("getAliasHistory", summary="Every move of the alias, newest first: from, to, who, when, why",
           path=(NAME, ALIAS), query=schemas.PageQuery,
           answers={200: Json(schemas.AliasHistory, "A page of moves"), 400: "Invalid model name or page",
                    404: "No such model, or an alias it never had"})
def get_alias_history(name: str, alias: str, query: schemas.PageQuery):
    page = aliases.alias_history(get_registry().db, name, alias, page_size=query.page_size,
                                 page_token=query.page_token)
    return schemas.AliasHistory(model=name, alias=alias, moves=[_move(m) for m in page.items],
                                next_page_token=page.next_page_token)


@bp.post("/models/<name>/aliases/<alias>/rollback")
@operation("rollbackAlias", summary="Move the alias back to the version it held before its last move (audited)",
           path=(NAME, ALIAS), body=schemas.RollbackBody, answers={
               200: Json(schemas.Alias, "Where the alias points now"),
               400: "No reason for a protected alias", 403: "A protected alias without the promote scope",
               404: "No such model, or an alias it never had",
               409: "Nothing to roll back to, the earlier version was deleted, or the gate refuses it"})
def rollback_alias(name: str, alias: str, body: schemas.RollbackBody):
    registry = get_registry()
    version, _ = aliases.rollback(registry.db, name, alias, current_actor(), reason=body.reason, force=body.force)
    registry.serving_changed()
    return schemas.Alias(model=name, alias=alias, version=version.version)


@bp.get("/models/<name>/alias-rules")
@operation("listAliasRules", summary="The model's protected aliases and their gates", path=(NAME,),
           answers={200: {"description": "The rules", "content": {"application/json": {"schema": {
               "type": "array", "items": {"$ref": "#/components/schemas/AliasRule"}}}}}, 400: "Invalid model name",
               404: "No such model"})
def list_alias_rules(name: str):
    return [schemas.AliasRule.model_validate(r).model_dump(mode="json") for r in
            aliases.alias_rules(get_registry().db, name)]


@bp.put("/models/<name>/aliases/<alias>/rule")
@operation("setAliasRule", summary="Protect an alias and set its promotion gate (admin, audited)",
           path=(NAME, ALIAS), body=schemas.AliasRuleBody, answers={
               200: Json(schemas.AliasRule, "The rule"),
               400: "A malformed gate, or one naming an unknown metric or evaluation set", 404: "No such model"})
def set_alias_rule(name: str, alias: str, body: schemas.AliasRuleBody):
    rule = aliases.set_alias_rule(get_registry().db, name, alias, protected=body.protected, gate=body.gate,
                                  actor=current_actor())
    return schemas.AliasRule.model_validate(rule)
