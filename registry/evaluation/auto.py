"""Automatic comparison: when a version becomes ready, compare it with the version a reference alias
(default ``production``) points at, on the model's chosen evaluation sets, in the background.

The per-model setting is ``{"sets": [names], "reference": alias}`` (``models.auto_compare``; None: off).
:func:`schedule` queues one comparison job per set (the latest live revision), each a stored report
with trigger ``auto``; the converter workers run them, so their number bounds how many run at once.
:func:`verdicts` says in plain words what the finished ones found, for the version's page.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.names import validate_alias_name, validate_model_name
from registry.catalog.rows import model_row, model_write
from registry.db import Database
from registry.entities import READY, VersionInfo
from registry.errors import InvalidRequest, RegistryError
from registry.evaluation import reports, sets
from registry.models import Alias, ComparisonReport, EvalSet, ModelVersion

log = logging.getLogger(__name__)
DEFAULT_REFERENCE = "production"
SETTINGS = {"top_k": 5, "tolerance": 1e-6, "kind": None, "strict_labels": True}


def get_auto_compare(db: Database, name: str) -> dict[str, Any] | None:
    validate_model_name(name)
    with db.transaction() as session:
        return model_row(session, name).auto_compare


def set_auto_compare(db: Database, name: str, setting: dict[str, Any] | None, actor: Actor = SYSTEM) -> dict | None:
    """Turn automatic comparison on (``{"sets": [...], "reference": "production"}``) or off (None); audited.
    Every set named must exist for the model."""
    if setting is not None:
        names = setting.get("sets")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise InvalidRequest('send {"sets": ["holdout"], "reference": "production"} (sets: the evaluation sets '
                                 "to compare on; reference: the alias to compare with), or null to turn it off",
                                 code="invalid_auto_compare")
        reference = setting.get("reference") or DEFAULT_REFERENCE
        validate_alias_name(reference)
        setting = {"sets": list(dict.fromkeys(names)), "reference": reference}
    with model_write(db, name) as (session, model):
        if setting is not None:
            known = set(session.scalars(sa.select(EvalSet.name).where(EvalSet.model_id == model.id,
                                                                      EvalSet.deleted_at.is_(None))))
            missing = [n for n in setting["sets"] if n not in known]
            if missing:
                raise InvalidRequest(f"{name!r} has no evaluation set {', '.join(map(repr, missing))}: add it first "
                                     f"(registry eval-set add {name} SET FILE); it has: "
                                     f"{', '.join(sorted(known)) or 'none'}", code="unknown_eval_set")
        previous, model.auto_compare = model.auto_compare, setting
        audit.record(session, actor, "model.auto_compare", name, {"setting": setting, "previous": previous})
        return setting


def schedule(db: Database, version: VersionInfo, *, max_attempts: int = 3) -> list[int]:
    """Queue the comparisons of a version that just became ready; the report ids (none when the model
    has no setting, the reference alias is missing or already points at this version)."""
    with db.transaction() as session:
        model = model_row(session, version.model)
        setting = model.auto_compare
        if not setting:
            return []
        reference = session.execute(
            sa.select(ModelVersion.version, ModelVersion.frozen_sha256, ModelVersion.status)
            .join(Alias, Alias.version_id == ModelVersion.id)
            .where(Alias.model_id == model.id, Alias.name == setting["reference"])).first()
    if reference is None or reference.version == version.version or reference.status != READY:
        return []
    made = []
    for name in setting["sets"]:
        try:
            chosen = sets.get_eval_set(db, version.model, name)
        except RegistryError as exc:
            log.warning("auto-compare of %s v%d on %r skipped: %s", version.model, version.version, name, exc.message)
            continue
        pinned = [{"version": reference.version, "sha256": reference.frozen_sha256, "ref": setting["reference"]},
                  {"version": version.version, "sha256": version.frozen_sha256, "ref": str(version.version)}]
        info = reports.create(db, version.model, versions=pinned, signature="", settings=dict(SETTINGS),
                              total=chosen.count, eval_set=chosen, job_version_id=version.id, trigger="auto",
                              max_attempts=max_attempts)
        made.append(info.id)
    return made


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def verdict(report: dict[str, Any], number: int, unit: str = "inputs") -> str | None:
    """A finished report's finding about version ``number`` against the other version, in words
    (``unit``: what the inputs are, e.g. images)."""
    entries = {v["version"]: v for v in report.get("versions", [])}
    others = [n for n in entries if n != number]
    if number not in entries or not others:
        return None
    other = entries[others[0]]
    named = other.get("ref") if other.get("ref") and not str(other.get("ref")).isdigit() else f"v{other['version']}"
    inputs = report.get("inputs") or 0
    what = "images" if report.get("images") is not None else unit
    pair = next((p for p in (report.get("agreement") or {}).get("pairs", []) if {p["a"], p["b"]} ==
                 {number, other["version"]}), None)
    if pair is not None:
        text = f"agrees with {named} on {_percent(pair['top1_agreement'])} of {inputs:,} {what}"
        mine, theirs = entries[number].get("accuracy"), other.get("accuracy")
        if mine and theirs:
            text += f"; accuracy {_percent(mine.get('top1'))} vs {_percent(theirs.get('top1'))}"
        return text
    numeric = next((p for p in (report.get("differences") or {}).get("pairs", []) if {p["a"], p["b"]} ==
                    {number, other["version"]}), None)
    if numeric is not None:
        outputs = numeric.get("outputs") or {}
        largest = max((o.get("max_abs_diff") or 0.0 for o in outputs.values()), default=0.0)
        within = min((o.get("within_tolerance") for o in outputs.values() if o.get("within_tolerance") is not None),
                     default=None)
        return (f"differs from {named} by at most {largest:.3g} on {inputs:,} {what}"
                + (f"; {_percent(within)} of values within tolerance" if within is not None else ""))
    return None


def verdicts(db: Database, version: VersionInfo, limit: int = 5) -> list[dict[str, Any]]:
    """The latest comparisons that ran this version against another, newest first, each with its
    verdict (None while it runs) and its report's permalink."""
    with db.transaction() as session:
        model = model_row(session, version.model)
        rows = session.scalars(sa.select(ComparisonReport).where(ComparisonReport.model_id == model.id)
                               .order_by(ComparisonReport.id.desc()).limit(200)).all()
        formats = dict(session.execute(sa.select(EvalSet.id, EvalSet.format).where(
            EvalSet.id.in_({r.eval_set_id for r in rows if r.eval_set_id}))).all()) if rows else {}
        found = []
        for row in rows:
            if version.version not in [v["version"] for v in row.versions or []] or len(row.versions or []) < 2:
                continue
            found.append({"id": row.id, "status": row.status, "trigger": row.trigger, "eval_set": (
                f"{row.eval_set_name}@{row.eval_set_revision}" if row.eval_set_name else None),
                "verdict": verdict(row.report, version.version, "images" if formats.get(row.eval_set_id) == "images"
                                   else "inputs") if row.status == reports.DONE and row.report
                else None, "error": row.error, "done": row.done, "total": row.total})
            if len(found) >= limit:
                break
        return found
