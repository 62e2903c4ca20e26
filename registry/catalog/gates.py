"""Promotion gates: conditions a version must meet, from recorded evidence, before a protected
alias moves to it.

A gate is ``{"conditions": [...]}``, each condition one of:

* ``{"kind": "verified"}``: its frozen graph was verified against the checkpoint (verification passed);
* ``{"kind": "not_flagged"}``: its op scan flagged nothing the model's allowlist does not allow;
* ``{"kind": "metric", "name": "accuracy@val", "min": 0.75}`` (or ``"max"``): its latest recorded
  value of that metric (``POST .../metrics``, or a comparison with expected labels);
* ``{"kind": "agreement", "eval_set": "val", "min": 0.95}``: top-1 agreement with the version the
  alias points at now, on that evaluation set, from the latest comparison of the two on it;
* ``{"kind": "latency_p50_ms", "max": 20}``: its latest recorded ``latency_p50_ms`` metric.

Conditions are checked when the gate is set (an unknown metric or evaluation set is a 400) and
evaluated at each move; each result carries the measured value and the threshold.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry import safety
from registry.errors import InvalidRequest
from registry.models import Alias, ComparisonReport, EvalSet, ModelVersion, RegisteredModel, VersionMetric

KINDS = ("verified", "not_flagged", "metric", "agreement", "latency_p50_ms")
LATENCY_METRIC = "latency_p50_ms"
EXAMPLE = ('{"conditions": [{"kind": "verified"}, {"kind": "metric", "name": "accuracy@val", "min": 0.75}, '
           '{"kind": "agreement", "eval_set": "val", "min": 0.95}]}')


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"{message}; a gate looks like {EXAMPLE}", code="invalid_gate")


def validate(session: Session, model: RegisteredModel, gate: object) -> dict[str, Any]:
    """``gate`` checked against what the model has: known kinds, thresholds that are numbers, metrics
    some version of the model has recorded, evaluation sets the model has."""
    if not isinstance(gate, dict) or not isinstance(gate.get("conditions"), list) or not gate["conditions"]:
        raise _bad("a gate is an object with a non-empty list of conditions")
    checked = []
    for i, condition in enumerate(gate["conditions"], 1):
        if not isinstance(condition, dict) or condition.get("kind") not in KINDS:
            raise _bad(f"condition {i} has no known kind (one of {', '.join(KINDS)})")
        kind = condition["kind"]
        bounds = {k: condition[k] for k in ("min", "max") if k in condition}
        if kind in ("metric", "agreement", "latency_p50_ms"):
            if not bounds or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bounds.values()):
                raise _bad(f"condition {i} ({kind}) needs a numeric min or max")
        if kind == "metric":
            name = condition.get("name")
            if not isinstance(name, str) or not name:
                raise _bad(f"condition {i} (metric) names no metric")
            if not _metric_known(session, model.id, name):
                raise InvalidRequest(f"condition {i}: no version of {model.name!r} has a metric {name!r} recorded: "
                                     "record it first (POST .../versions/N/metrics, or a comparison with expected "
                                     "labels)", code="unknown_metric")
        if kind == "agreement":
            name = condition.get("eval_set")
            if not isinstance(name, str) or not session.scalar(sa.select(EvalSet.id).where(
                    EvalSet.model_id == model.id, EvalSet.name == name, EvalSet.deleted_at.is_(None)).limit(1)):
                raise InvalidRequest(f"condition {i}: {model.name!r} has no evaluation set {name!r}: add it first "
                                     "(registry eval-set add)", code="unknown_eval_set")
        checked.append({"kind": kind, **{k: condition[k] for k in ("name", "eval_set") if k in condition}, **bounds})
    return {"conditions": checked}


def _metric_known(session: Session, model_id: int, name: str) -> bool:
    return session.scalar(sa.select(VersionMetric.id).join(ModelVersion, ModelVersion.id == VersionMetric.version_id)
                          .where(ModelVersion.model_id == model_id, VersionMetric.name == name).limit(1)) is not None


def _latest_metric(session: Session, version_id: int, name: str) -> float | None:
    return session.scalar(sa.select(VersionMetric.value).where(VersionMetric.version_id == version_id,
                                                               VersionMetric.name == name)
                          .order_by(VersionMetric.created_at.desc(), VersionMetric.id.desc()).limit(1))


def _agreement(session: Session, model_id: int, eval_set: str, a: int, b: int) -> float | None:
    """Top-1 agreement of versions ``a`` and ``b`` from the latest finished comparison of both on ``eval_set``."""
    reports = session.scalars(sa.select(ComparisonReport).where(
        ComparisonReport.model_id == model_id, ComparisonReport.eval_set_name == eval_set,
        ComparisonReport.status == "done").order_by(ComparisonReport.id.desc()).limit(50))
    for report in reports:
        for pair in ((report.report or {}).get("agreement") or {}).get("pairs") or []:
            if {pair.get("a"), pair.get("b")} == {a, b} and pair.get("top1_agreement") is not None:
                return float(pair["top1_agreement"])
    return None


def _within(value: float | None, condition: dict) -> bool:
    return value is not None and value >= condition.get("min", float("-inf")) and value <= condition.get(
        "max", float("inf"))


def _threshold(condition: dict) -> str:
    return " and ".join(f"{'≥' if k == 'min' else '≤'} {condition[k]:g}" for k in ("min", "max") if k in condition)


def evaluate(session: Session, model: RegisteredModel, alias: str, row: ModelVersion, gate: dict) -> list[dict]:
    """Each condition of ``gate`` for version ``row``: passed, the measured value, the threshold, a message."""
    current = session.scalar(sa.select(ModelVersion.version).join(Alias, Alias.version_id == ModelVersion.id)
                             .where(Alias.model_id == model.id, Alias.name == alias))
    results = []
    for condition in gate.get("conditions", []):
        kind = condition["kind"]
        if kind == "verified":
            status = ((row.conversion or {}).get("verification") or {}).get("status")
            passed, measured, message = status == "passed", status, f"verification {status or 'not recorded'}"
        elif kind == "not_flagged":
            flags = safety.blocking_flags(row.conversion, list(model.allowed_ops or []))
            passed, measured = row.conversion is not None and not flags, len(flags)
            message = "nothing flagged" if passed else ("not scanned yet" if row.conversion is None
                                                        else f"flagged: {safety.describe(flags)}")
        elif kind in ("metric", "latency_p50_ms"):
            name = condition.get("name", LATENCY_METRIC)
            measured = _latest_metric(session, row.id, name)
            passed = _within(measured, condition)
            message = f"{name} is {'not recorded' if measured is None else f'{measured:g}'} (needs {_threshold(condition)})"
        else:  # agreement with the alias's current version
            if current is None or current == row.version:
                passed, measured = True, None
                message = f"agreement on {condition['eval_set']}: nothing to compare with (the alias " + (
                    "does not exist yet)" if current is None else "already points there)")
            else:
                measured = _agreement(session, model.id, condition["eval_set"], row.version, current)
                passed = _within(measured, condition)
                message = (f"top-1 agreement with version {current} on {condition['eval_set']} is "
                           + ("not measured: compare them on it first" if measured is None else f"{measured:.1%}")
                           + f" (needs {_threshold(condition)})")
        results.append({"condition": condition, "passed": bool(passed), "measured": measured,
                        "threshold": {k: condition[k] for k in ("min", "max") if k in condition} or None,
                        "message": message})
    return results
