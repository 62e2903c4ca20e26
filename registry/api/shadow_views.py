"""Thin handlers for shadow traffic: an alias's shadow version, set, cleared and read with its figures."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from registry import catalog
from registry.api import bp, schemas
from registry.api.spec import Json, operation
from registry.api.views import ALIAS, NAME
from registry.auth.access import current_actor
from registry.context import get_registry
from registry.errors import InvalidRequest

DEFAULT_SPAN = timedelta(hours=24)
SHADOW_PATH = "/models/<name>/aliases/<alias>/shadow"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _figures(windows) -> dict:
    compared = sum(w.compared for w in windows)
    agreed = sum(w.agreed for w in windows)
    values = sum(w.values for w in windows)
    total = sum(w.sum_abs_diff for w in windows)
    return {"requests": sum(w.requests for w in windows), "compared": compared, "agreed": agreed,
            "agreement": agreed / compared if compared else None, "dropped": sum(w.dropped for w in windows),
            "errors": sum(w.errors for w in windows), "values": values,
            "mean_abs_diff": total / values if values else None,
            "max_abs_diff": max((w.max_abs_diff for w in windows), default=0.0) if values else None}


@bp.put(SHADOW_PATH)
@operation("setShadow", summary="Let a version get a copy of the alias's traffic (shadow traffic; audited)",
           description="Requests answered through the alias (/v1/models/NAME/labels/ALIAS:predict, gRPC "
                       "version_label) are answered by the alias's version as before; a copy runs on the shadow "
                       "version in the background and their agreement is measured per time window.",
           path=(NAME, ALIAS), body=schemas.ShadowBody, answers={
               200: Json(schemas.ShadowSetting, "The alias with its shadow version"),
               400: "Invalid name or body, a version that is not ready (shadow_not_ready), or the alias's own "
                    "version (shadow_is_primary)",
               404: "No such model, alias or version",
               409: "The model changed under a concurrent request (concurrent_change): look again and retry"})
def set_shadow(name: str, alias: str, body: schemas.ShadowBody):
    setting = catalog.set_shadow(get_registry().db, name, alias, body.version, actor=current_actor())
    return schemas.ShadowSetting.model_validate(setting)


@bp.delete(SHADOW_PATH)
@operation("deleteShadow", summary="Stop shadowing the alias (audited; its figures stay readable)",
           path=(NAME, ALIAS), answers={
               200: Json(schemas.ShadowSetting, "The alias, without a shadow version"),
               400: "Invalid model name", 404: "No such model or alias, or the alias has no shadow version",
               409: "The model changed under a concurrent request (concurrent_change): look again and retry"})
def delete_shadow(name: str, alias: str):
    setting = catalog.delete_shadow(get_registry().db, name, alias, actor=current_actor())
    return schemas.ShadowSetting.model_validate(setting)


@bp.get(SHADOW_PATH)
@operation("getShadow", summary="The alias's shadow version and how it agreed with the alias's version, per "
                                "time window", path=(NAME, ALIAS), query=schemas.ShadowQuery, answers={
               200: Json(schemas.ShadowReport, "The setting, the windows of [since, until) and their totals, and "
                                               "the disagreeing inputs kept"),
               400: "Invalid model name or times", 404: "No such model or alias"})
def get_shadow(name: str, alias: str, query: schemas.ShadowQuery):
    registry = get_registry()
    until = _utc(query.until) or datetime.now(timezone.utc)
    since = _utc(query.since) or until - DEFAULT_SPAN
    if since >= until:
        raise InvalidRequest(f"since ({since.isoformat()}) must be before until ({until.isoformat()})",
                             code="invalid_time")
    report = catalog.get_shadow(registry.db, name, alias, since, until)
    setting = report.setting
    return schemas.ShadowReport(
        model=setting.model, alias=setting.alias, version=setting.version, shadow_version=setting.shadow_version,
        since=since, until=until, window_seconds=registry.settings.shadow_window_seconds,
        totals=schemas.ShadowFigures(**_figures(report.windows)),
        windows=[schemas.ShadowWindow(window_start=w.window_start, primary_version=w.primary_version,
                                      shadow_version=w.shadow_version, **_figures([w])) for w in report.windows],
        samples=[schemas.ShadowSample(created_at=s.created_at, primary_version=s.primary_version,
                                      shadow_version=s.shadow_version, inputs=s.inputs,
                                      primary_outputs=s.primary_outputs, shadow_outputs=s.shadow_outputs)
                 for s in report.samples])
