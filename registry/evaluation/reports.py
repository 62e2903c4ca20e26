"""Comparison reports: every comparison is stored, with a permalink, whether it ran at once or as a job.

A report names the versions it compared (number and sha256, pinned when it was asked for), the set
revision, the signature and its settings; while a job runs it, ``done``/``total`` say how far it got.
Finishing it records its accuracy figures as version metrics (``accuracy@SET``, ``topK_accuracy@SET``,
source ``compare``) for promotion gates.  A version or set deleted since stays named in the report and
is marked ``deleted`` when the report is read (found at read time, never written back).

Each function owns its transaction; creating a report (and its job) is audited.  No TensorFlow here:
the API reads reports without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from registry import pagination
from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.names import validate_model_name
from registry.catalog.rows import model_row
from registry.db import Database
from registry.entities import COMPARE_JOB, QUEUED, Page
from registry.errors import InvalidRequest, NotFound
from registry.models import ComparisonReport, EvalSet, Job, ModelVersion, RegisteredModel, VersionMetric, utcnow

RUNNING, DONE, FAILED = "running", "done", "failed"
STATUSES = (QUEUED, RUNNING, DONE, FAILED)


@dataclass(frozen=True)
class ReportInfo:
    """One stored comparison, as the API shows it."""

    id: int
    model: str
    status: str
    trigger: str
    eval_set: dict[str, Any] | None  # {"name", "revision", "deleted"}
    signature: str
    versions: list[dict[str, Any]]  # [{"version", "sha256", "ref", "deleted"}]
    settings: dict[str, Any]
    done: int
    total: int
    report: dict[str, Any] | None
    error: str | None
    created_by: str
    created_at: datetime
    finished_at: datetime | None

    @property
    def url(self) -> str:
        return f"/api/v1/models/{self.model}/comparisons/{self.id}"


def _info(row: ComparisonReport, model: str, *, deleted_versions: set[int] = frozenset(),
          set_deleted: bool = False, inputs: bool = False) -> ReportInfo:
    settings = dict(row.settings or {})
    if not inputs:
        settings.pop("inputs", None)  # uploaded inputs kept for the job that runs them: not shown
    eval_set = None
    if row.eval_set_name is not None:
        eval_set = {"name": row.eval_set_name, "revision": row.eval_set_revision, "deleted": set_deleted}
    versions = [{**v, "deleted": v["version"] in deleted_versions} for v in row.versions or []]
    return ReportInfo(row.id, model, row.status, row.trigger, eval_set, row.signature, versions, settings, row.done,
                      row.total, row.report, row.error, row.created_by, row.created_at, row.finished_at)


def create(db: Database, name: str, *, versions: list[dict[str, Any]], signature: str, settings: dict[str, Any],
           total: int, eval_set=None, job_version_id: int | None = None, trigger: str = "manual",
           actor: Actor = SYSTEM, max_attempts: int = 3) -> ReportInfo:
    """A new report, queued; with ``job_version_id`` its job too (in the same transaction), else it is
    run now by the caller.  ``versions``: [{"version", "sha256", "ref"}]."""
    with db.transaction() as session:
        model = model_row(session, name)
        row = ComparisonReport(model_id=model.id, status=QUEUED, trigger=trigger, signature=signature or "",
                               versions=versions, settings=settings, done=0, total=total, created_by=actor.name[:128],
                               eval_set_id=getattr(eval_set, "id", None), eval_set_name=getattr(eval_set, "name", None),
                               eval_set_revision=getattr(eval_set, "revision", None))
        session.add(row)
        session.flush()
        if job_version_id is not None:
            session.add(Job(kind=COMPARE_JOB, version_id=job_version_id, report_id=row.id, status=QUEUED,
                            max_attempts=max_attempts))
        audit.record(session, actor, "comparison.create", f"{name}/comparisons/{row.id}",
                     {"versions": [v["version"] for v in versions], "signature": signature or "",
                      "eval_set": eval_set.ref if eval_set is not None else None, "inputs": total,
                      "job": job_version_id is not None})
        return _info(row, name)


def _row(session, report_id: int) -> ComparisonReport:
    row = session.get(ComparisonReport, report_id)
    if row is None:
        raise NotFound(f"no comparison report {report_id} (it went with its model)", code="report_not_found")
    return row


def start(db: Database, report_id: int, total: int | None = None) -> None:
    with db.transaction() as session:
        row = _row(session, report_id)
        row.status = RUNNING
        row.done = 0
        if total is not None:
            row.total = total


def progress(db: Database, report_id: int, done: int, total: int | None = None) -> None:
    """How many inputs every version has run on so far."""
    values: dict[str, Any] = {"done": done}
    if total is not None:
        values["total"] = total
    with db.transaction() as session:
        session.execute(sa.update(ComparisonReport).where(ComparisonReport.id == report_id).values(**values))


def finish(db: Database, report_id: int, report: dict[str, Any], actor: Actor = SYSTEM) -> None:
    """Store the report (done) and record its accuracy figures as version metrics."""
    with db.transaction() as session:
        row = _row(session, report_id)
        row.status = DONE
        row.report = report
        row.error = None
        row.done = row.total = int(report.get("inputs") or row.total)
        row.finished_at = utcnow()
        settings = dict(row.settings or {})
        if settings.pop("inputs", None) is not None:
            row.settings = settings
        if row.eval_set_name is None:
            return
        ids = dict(session.execute(sa.select(ModelVersion.version, ModelVersion.id).where(
            ModelVersion.model_id == row.model_id,
            ModelVersion.version.in_([v["version"] for v in row.versions]))).all())
        for entry in report.get("versions", []):
            p50 = (entry.get("latency") or {}).get("p50_ms")
            if p50 is not None and entry["version"] in ids:  # what a latency gate reads (registry.catalog.gates)
                session.add(VersionMetric(version_id=ids[entry["version"]], name="latency_p50_ms", value=float(p50),
                                          eval_set=row.eval_set_name, source="compare", report_id=row.id,
                                          created_by=actor.name[:128]))
            figures = entry.get("accuracy")
            if not figures or entry["version"] not in ids:
                continue
            k = figures.get("k", 5)
            for metric, value in ((f"accuracy@{row.eval_set_name}", figures["top1"]),
                                  (f"top{k}_accuracy@{row.eval_set_name}", figures.get(f"top{k}"))):
                if value is not None:
                    session.add(VersionMetric(version_id=ids[entry["version"]], name=metric, value=float(value),
                                              eval_set=row.eval_set_name, source="compare", report_id=row.id,
                                              created_by=actor.name[:128]))


def fail(db: Database, report_id: int, error: str) -> None:
    with db.transaction() as session:
        row = session.get(ComparisonReport, report_id)
        if row is None:
            return
        row.status = FAILED
        row.error = error
        row.finished_at = utcnow()
        settings = dict(row.settings or {})
        if settings.pop("inputs", None) is not None:
            row.settings = settings


def _marks(session, model_id: int, rows: list[ComparisonReport]) -> tuple[set[tuple[int, int]], set[int]]:
    """What the reports name that is gone: (report id, version) pairs and report ids whose set is."""
    numbers = {v["version"] for row in rows for v in row.versions or []}
    existing = {(n, sha) for n, sha in session.execute(sa.select(ModelVersion.version, ModelVersion.frozen_sha256)
                                                       .where(ModelVersion.model_id == model_id,
                                                              ModelVersion.version.in_(numbers))).all()}
    by_number = {n for n, _ in existing}
    gone = {(row.id, v["version"]) for row in rows for v in row.versions or []
            if v["version"] not in by_number or (v.get("sha256") and (v["version"], v["sha256"]) not in existing)}
    set_ids = {row.eval_set_id for row in rows if row.eval_set_id is not None}
    live = set(session.scalars(sa.select(EvalSet.id).where(EvalSet.id.in_(set_ids), EvalSet.deleted_at.is_(None))))
    sets_gone = {row.id for row in rows if row.eval_set_name is not None and row.eval_set_id not in live}
    return gone, sets_gone


def _read(session, name: str, model_id: int, rows: list[ComparisonReport]) -> list[ReportInfo]:
    gone, sets_gone = _marks(session, model_id, rows)
    pending = {row.id for row in rows if row.status in (QUEUED, RUNNING)}
    with_job = set(session.scalars(sa.select(Job.report_id).where(Job.report_id.in_(pending)))) if pending else set()
    infos = []
    for row in rows:
        deleted = {v for rid, v in gone if rid == row.id}
        info = _info(row, name, deleted_versions=deleted, set_deleted=row.id in sets_gone)
        if row.id in pending and row.id not in with_job and deleted:
            # its job went with the version it named: it will never run
            info = replace(info, status=FAILED, error="cancelled: a version it compares was deleted before it ran")
        infos.append(info)
    return infos


def get(db: Database, name: str, report_id: int) -> ReportInfo:
    validate_model_name(name)
    with db.transaction() as session:
        model = model_row(session, name)
        row = session.get(ComparisonReport, report_id)
        if row is None or row.model_id != model.id:
            raise NotFound(f"model {name!r} has no comparison report {report_id}: list them with "
                           f"GET /api/v1/models/{name}/comparisons", code="report_not_found")
        return _read(session, name, model.id, [row])[0]


def load_for_run(db: Database, report_id: int) -> ReportInfo:
    """A report with the inputs uploaded for it (for the job that runs it)."""
    with db.transaction() as session:
        row = _row(session, report_id)
        name = session.scalar(sa.select(RegisteredModel.name).where(RegisteredModel.id == row.model_id))
        return _info(row, name, inputs=True)


def list_reports(db: Database, name: str, *, page_size: int | None = None, page_token: str | None = None) -> Page:
    """A model's reports, newest first, in keyset pages."""
    validate_model_name(name)
    size = pagination.page_size(page_size)
    with db.transaction() as session:
        model = model_row(session, name)
        query = (sa.select(ComparisonReport).where(ComparisonReport.model_id == model.id)
                 .order_by(ComparisonReport.id.desc()).limit(size + 1))
        if page_token:
            after = pagination.decode_token(page_token)
            if not isinstance(after, int):
                raise InvalidRequest("invalid page_token: pass the next_page_token of the previous page unchanged",
                                     code="invalid_page_token")
            query = query.where(ComparisonReport.id < after)
        rows = list(session.scalars(query))
        more = len(rows) > size
        rows = rows[:size]
        items = _read(session, name, model.id, rows)
        return Page(items, pagination.encode_token(rows[-1].id) if more else None)


def metrics_of(db: Database, version_id: int) -> list[dict[str, Any]]:
    """A version's recorded metrics, oldest first."""
    with db.transaction() as session:
        rows = session.scalars(sa.select(VersionMetric).where(VersionMetric.version_id == version_id)
                               .order_by(VersionMetric.id))
        return [{"name": r.name, "value": r.value, "eval_set": r.eval_set, "source": r.source,
                 "report_id": r.report_id} for r in rows]
