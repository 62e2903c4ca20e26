"""Named numeric metrics of a version (``accuracy@imagenet-val-1k``): recorded through the API (with an
optional evaluation set and step) or by a comparison with expected labels, read by the model page's
charts and by promotion gates (:mod:`registry.catalog.gates`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.names import validate_model_name
from registry.catalog.rows import model_row, model_write, resolve_version_row
from registry.db import Database
from registry.errors import InvalidRequest
from registry.models import ModelVersion, VersionMetric

METRIC_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/:@]{0,127}$")
MAX_METRICS_PER_WRITE = 100


@dataclass(frozen=True)
class Metric:
    version: int
    name: str
    value: float
    eval_set: str | None
    step: int | None
    source: str
    report_id: int | None
    created_by: str
    created_at: datetime


def validate_metrics(metrics: object) -> dict[str, float]:
    if not isinstance(metrics, dict) or not metrics:
        raise InvalidRequest('send "metrics" as an object of names and numbers, e.g. {"accuracy@val": 0.78}',
                             code="invalid_metrics")
    if len(metrics) > MAX_METRICS_PER_WRITE:
        raise InvalidRequest(f"at most {MAX_METRICS_PER_WRITE} metrics in one write", code="invalid_metrics")
    for name, value in metrics.items():
        if not isinstance(name, str) or not METRIC_NAME_RE.match(name):
            raise InvalidRequest(f"invalid metric name {name!r}: use 1-128 letters, digits, '_', '-', '.', '/', ':' "
                                 "or '@' (e.g. accuracy@imagenet-val-1k)", code="invalid_metric_name")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRequest(f"metric {name!r} must be a finite number, not {value!r}", code="invalid_metric_value")
    return {k: float(v) for k, v in metrics.items()}


def record_metrics(db: Database, name: str, ref: str, metrics: object, *, eval_set: str | None = None,
                   step: int | None = None, actor: Actor = SYSTEM) -> list[Metric]:
    """Record ``metrics`` on version ``ref`` of ``name`` (audited); the rows written."""
    values = validate_metrics(metrics)
    with model_write(db, name) as (session, model):
        row = resolve_version_row(session, model, ref)
        made = [VersionMetric(version_id=row.id, name=k, value=v, eval_set=eval_set or None, step=step, source="api",
                              created_by=actor.name[:128]) for k, v in values.items()]
        session.add_all(made)
        audit.record(session, actor, "version.metrics", f"{name}:{row.version}",
                     {"metrics": values, **({"eval_set": eval_set} if eval_set else {}),
                      **({"step": step} if step is not None else {})})
        session.flush()
        return [_metric(row.version, m) for m in made]


def _metric(version: int, m: VersionMetric) -> Metric:
    return Metric(version, m.name, m.value, m.eval_set, m.step, m.source, m.report_id, m.created_by, m.created_at)


def list_metrics(db: Database, name: str, ref: str | None = None) -> list[Metric]:
    """The metrics of version ``ref`` (or of every version of the model), oldest first."""
    validate_model_name(name)
    with db.transaction() as session:
        model = model_row(session, name)
        query = (sa.select(ModelVersion.version, VersionMetric)
                 .join(ModelVersion, ModelVersion.id == VersionMetric.version_id)
                 .where(ModelVersion.model_id == model.id))
        if ref is not None:
            query = query.where(VersionMetric.version_id == resolve_version_row(session, model, ref).id)
        return [_metric(version, m) for version, m in session.execute(
            query.order_by(VersionMetric.created_at, VersionMetric.id))]
