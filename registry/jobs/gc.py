"""Garbage collection of blob storage: what no version or live evaluation set refers to any more.

Deleting a version (or a failed push, or a killed process) can leave blobs and
temporary uploads nobody needs.  The collector removes

- finished blobs no version refers to (nor an evaluation set revision that is not deleted: one
  only deleted revisions refer to goes), once they are older than the grace
  period (``REGISTRY_GC_GRACE_SECONDS``).  A push publishes its blobs before
  the transaction that records its version commits, and publishing (or
  re-using identical bytes) refreshes a blob's modification time, so the grace
  period is what protects a push in flight.  Just before deleting, each blob's
  age and references are checked again;
- temporary uploads (local staging files, S3 temporary keys, unfinished S3
  multipart uploads) that have received no bytes for the grace period.

Run it as ``registry gc`` or let the workers run it every
``REGISTRY_GC_INTERVAL_SECONDS``.  Several collectors at once are harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from registry import catalog
from registry.db import Database
from registry.models import utcnow
from registry.storage import BlobStorage

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    dry_run: bool
    blobs_deleted: int = 0
    blob_bytes: int = 0
    temporary_deleted: int = 0
    temporary_bytes: int = 0
    kept_young: int = 0  # unreferenced, but within the grace period
    referenced: int = 0
    missing: list[str] = field(default_factory=list)  # referenced by a version, absent from storage

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        text = (f"{verb} {self.blobs_deleted} unreferenced blob(s), {self.blob_bytes:,} bytes, and "
                f"{self.temporary_deleted} stale temporary upload(s), {self.temporary_bytes:,} bytes; "
                f"{self.referenced} blob(s) in use; {self.kept_young} unreferenced blob(s) kept "
                "(younger than the grace period)")
        if self.missing:
            text += f"; {len(self.missing)} referenced blob(s) MISSING from storage: {', '.join(self.missing[:5])}"
        return text


def collect_garbage(db: Database, storage: BlobStorage, *, grace_seconds: float, dry_run: bool = False,
                    now: datetime | None = None) -> GcReport:
    """Remove unreferenced blobs and stale temporary uploads older than ``grace_seconds``."""
    cutoff = (now or utcnow()) - timedelta(seconds=grace_seconds)
    report = GcReport(dry_run=dry_run)
    # Storage first, references second: a blob published after the listing is
    # not a candidate, and one listed before its version committed is young.
    blobs = list(storage.iter_blobs())
    referenced = catalog.referenced_digests(db)
    present = {blob.sha256 for blob in blobs}
    report.referenced = len(referenced & present)
    report.missing = sorted(referenced - present)
    for blob in blobs:
        if blob.sha256 in referenced:
            continue
        if blob.modified > cutoff:
            report.kept_young += 1
            continue
        if not dry_run:
            try:
                fresh = storage.blob_info(blob.sha256)
            except FileNotFoundError:
                continue  # another collector took it
            if fresh.modified > cutoff:
                report.kept_young += 1
                continue
            if catalog.is_blob_referenced(db, blob.sha256):
                continue
            storage.delete(blob.sha256)
        report.blobs_deleted += 1
        report.blob_bytes += blob.size
    for item in list(storage.iter_temporary()):
        if item.modified > cutoff:
            continue
        if not dry_run:
            storage.delete_temporary(item)
        report.temporary_deleted += 1
        report.temporary_bytes += item.size
    log.debug("garbage collection: %s", report.summary())
    return report
