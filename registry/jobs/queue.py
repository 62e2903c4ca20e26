"""The job queue, kept in the database so that it survives restarts.

A worker claims a job by taking a lease (``lease_owner`` + ``lease_expires_at``)
and renews it while it works.  A job whose lease has expired, because its worker
died or hung, is claimable again; each claim counts as an attempt and a job that
has used up its attempts is failed with its last error.  Claims use
``SELECT ... FOR UPDATE SKIP LOCKED`` where the database has it (PostgreSQL),
and a conditional ``UPDATE`` everywhere, so two workers never both win a job.

The job of a pushed version is added by ``registry.catalog.create_version`` in
the push's own transaction, so it exists if and only if the version does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry.db import Database
from registry.entities import (COMPARE_JOB, CONVERT, CONVERTING, FAILED, QUEUED, READY, RUNNING, SAVED_MODEL,
                               SAVED_MODEL_FAILED, SAVED_MODEL_JOB, SAVED_MODEL_PENDING, SUCCEEDED, NewFile)
from registry.models import ComparisonReport, Job, ModelVersion, VersionFile, utcnow
from registry.webhooks import events as webhooks

__all__ = ["COMPARE_JOB", "CONVERT", "RUNNING", "SAVED_MODEL_JOB", "SUCCEEDED", "ClaimedJob", "claim", "depth",
           "finish", "finish_compare", "finish_saved_model", "heartbeat", "retry_later"]


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    version_id: int
    attempt: int
    max_attempts: int
    owner: str
    report_id: int | None = None  # a comparison job's report


def _claimable(now):
    return sa.or_(
        sa.and_(Job.status == QUEUED, Job.run_after <= now),
        sa.and_(Job.status == RUNNING, Job.lease_expires_at < now),
    )


def claim(db: Database, owner: str, lease_seconds: float) -> ClaimedJob | None:
    """Take the oldest claimable job, or return None when there is none."""
    while True:
        with db.transaction() as session:
            now = utcnow()
            job = session.scalar(
                sa.select(Job)
                .where(_claimable(now))
                # conversions first (they make versions ready); SavedModel builds follow, then comparisons
                .order_by(sa.case((Job.kind == CONVERT, 0), (Job.kind == COMPARE_JOB, 2), else_=1), Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job is None:
                return None
            if job.attempts >= job.max_attempts:
                # Its last worker died or lost the lease on the final attempt.
                reason = (
                    f"{_what(job.kind)} was interrupted "
                    f"{job.attempts} times (worker died or lost its lease)"
                    + (f"; last error: {job.last_error}" if job.last_error else "")
                )
                _fail(session, job, reason)
                continue
            won = session.execute(
                sa.update(Job)
                .where(Job.id == job.id, Job.status == job.status, Job.attempts == job.attempts)
                .values(
                    status=RUNNING,
                    attempts=Job.attempts + 1,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            ).rowcount
            if not won:
                continue  # somebody else took it between our read and write
            if job.kind == CONVERT:
                session.execute(
                    sa.update(ModelVersion)
                    .where(ModelVersion.id == job.version_id)
                    .values(status=CONVERTING, status_message=f"converting (attempt {job.attempts + 1})",
                            updated_at=now)
                )
            return ClaimedJob(job.id, job.kind, job.version_id, job.attempts + 1, job.max_attempts, owner,
                              job.report_id)


def _what(kind: str) -> str:
    return {CONVERT: "conversion", COMPARE_JOB: "the comparison"}.get(kind, "the SavedModel build")


def finish_compare(db: Database, job: ClaimedJob, error: str | None = None) -> bool:
    """Close a comparison job (its report is recorded by registry.evaluation.reports); False when the
    lease was lost meanwhile."""
    with db.transaction() as session:
        row = _owned(session, job)
        if row is None:
            return False
        row.status = FAILED if error else SUCCEEDED
        row.lease_owner = None
        row.lease_expires_at = None
        row.last_error = error
        return True


def depth(db: Database) -> dict[str, int]:
    """Jobs queued (waiting, or backing off before a retry) and running: one COUNT over the
    (status, run_after) index, cheap enough for every metrics scrape."""
    with db.transaction() as session:
        rows = session.execute(
            sa.select(Job.status, sa.func.count()).where(Job.status.in_((QUEUED, RUNNING))).group_by(Job.status)
        ).all()
    return {QUEUED: 0, RUNNING: 0, **{status: count for status, count in rows}}


def heartbeat(db: Database, job: ClaimedJob, lease_seconds: float) -> bool:
    """Renew the lease; False means the job is no longer ours and work must stop."""
    with db.transaction() as session:
        now = utcnow()
        return bool(
            session.execute(
                sa.update(Job)
                .where(Job.id == job.id, Job.status == RUNNING, Job.lease_owner == job.owner)
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
            ).rowcount
        )


def _owned(session: Session, job: ClaimedJob) -> Job | None:
    row = session.get(Job, job.id, with_for_update=True)
    if row is None or row.status != RUNNING or row.lease_owner != job.owner:
        return None
    return row


def finish(db: Database, job: ClaimedJob, *, ready: bool, message: str, fields: dict[str, Any],
           files: Sequence[NewFile] = (), follow_on: str | None = None) -> bool:
    """Record the outcome of a conversion on the version (with the artifacts it
    made) and close the job; a ready version's ``follow_on`` job (the SavedModel
    build) is queued in the same transaction.

    Returns False (and changes nothing) if the lease was lost meanwhile.
    """
    with db.transaction() as session:
        row = _owned(session, job)
        if row is None:
            return False
        now = utcnow()
        row.status = SUCCEEDED if ready else FAILED
        row.lease_owner = None
        row.lease_expires_at = None
        row.last_error = None if ready else message
        values = dict(fields, status=READY if ready else FAILED, status_message=message, updated_at=now)
        if ready:
            values["ready_at"] = now
        if ready and follow_on == SAVED_MODEL_JOB:
            values.update(saved_model_state=SAVED_MODEL_PENDING, saved_model_message="")
            session.add(Job(kind=follow_on, version_id=job.version_id, status=QUEUED, max_attempts=row.max_attempts))
        session.execute(sa.update(ModelVersion).where(ModelVersion.id == job.version_id).values(**values))
        session.add_all(VersionFile(version_id=job.version_id, role=f.role, filename=f.filename, sha256=f.sha256,
                                    size=f.size) for f in files)
        webhooks.emit_for_version(session, webhooks.VERSION_READY if ready else webhooks.VERSION_FAILED,
                                  job.version_id, status=READY if ready else FAILED, status_message=message)
        return True


def finish_saved_model(db: Database, job: ClaimedJob, *, built: NewFile | None, message: str = "") -> bool:
    """Record a SavedModel build: its file and state ready, or the state failed with ``message``.
    Returns False (and changes nothing) if the lease was lost meanwhile."""
    with db.transaction() as session:
        row = _owned(session, job)
        if row is None:
            return False
        row.status = SUCCEEDED if built else FAILED
        row.lease_owner = None
        row.lease_expires_at = None
        row.last_error = None if built else message
        _saved_model_state(session, job.version_id, READY if built else SAVED_MODEL_FAILED, message)
        exists = session.scalar(sa.select(VersionFile.id).where(VersionFile.version_id == job.version_id,
                                                                VersionFile.role == SAVED_MODEL))
        if built is not None and exists is None:
            session.add(VersionFile(version_id=job.version_id, role=built.role, filename=built.filename,
                                    sha256=built.sha256, size=built.size))
        return True


def _saved_model_state(session: Session, version_id: int, state: str, message: str = "") -> None:
    session.execute(sa.update(ModelVersion).where(ModelVersion.id == version_id)
                    .values(saved_model_state=state, saved_model_message=message))


def retry_later(db: Database, job: ClaimedJob, error: str, backoff: Callable[[int], float] | None = None) -> bool:
    """Give the job back after an infrastructure failure, or fail it for good
    once it has used its attempts.  Returns True when it will be retried."""
    delay = (backoff or (lambda attempt: min(60.0, 2.0**attempt)))(job.attempt)
    with db.transaction() as session:
        row = _owned(session, job)
        if row is None:
            return False
        if row.attempts >= row.max_attempts:
            _fail(session, row, f"{_what(row.kind)} failed {row.attempts} times; last error: {error}")
            return False
        now = utcnow()
        row.status = QUEUED
        row.lease_owner = None
        row.lease_expires_at = None
        row.last_error = error
        row.run_after = now + timedelta(seconds=delay)
        if row.kind == CONVERT:
            session.execute(
                sa.update(ModelVersion)
                .where(ModelVersion.id == job.version_id)
                .values(status=QUEUED, status_message=f"will retry: {error}", updated_at=now)
            )
        elif row.kind == COMPARE_JOB:
            session.execute(sa.update(ComparisonReport).where(ComparisonReport.id == row.report_id)
                            .values(status=QUEUED, error=f"will retry: {error}"))
        else:
            _saved_model_state(session, job.version_id, SAVED_MODEL_PENDING, f"will retry: {error}")
        return True


def _fail(session: Session, job: Job, reason: str) -> None:
    now = utcnow()
    job.status = FAILED
    job.lease_owner = None
    job.lease_expires_at = None
    job.last_error = reason
    if job.kind == COMPARE_JOB:  # the versions stay as they are: only the comparison failed
        session.execute(sa.update(ComparisonReport).where(ComparisonReport.id == job.report_id)
                        .values(status=FAILED, error=reason, finished_at=now))
        return
    if job.kind != CONVERT:  # the version stays ready: only its SavedModel failed
        _saved_model_state(session, job.version_id, SAVED_MODEL_FAILED, reason)
        return
    session.execute(
        sa.update(ModelVersion)
        .where(ModelVersion.id == job.version_id)
        .values(status=FAILED, status_message=reason, updated_at=now)
    )
    webhooks.emit_for_version(session, webhooks.VERSION_FAILED, job.version_id, status=FAILED, status_message=reason)
