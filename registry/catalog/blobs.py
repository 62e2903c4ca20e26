"""Which blobs the catalog refers to, for the garbage collector and for cleaning up after a failed conversion."""

from __future__ import annotations

import sqlalchemy as sa

from registry.db import Database
from registry.models import ModelVersion, VersionFile


def referenced_digests(db: Database) -> set[str]:
    """Every blob digest a version refers to (uploaded files and frozen graphs)."""
    with db.transaction() as session:
        found = set(session.scalars(sa.select(VersionFile.sha256).distinct()))
        found.update(session.scalars(
            sa.select(ModelVersion.frozen_sha256).where(ModelVersion.frozen_sha256.is_not(None)).distinct()))
        return found


def is_blob_referenced(db: Database, digest: str) -> bool:
    with db.transaction() as session:
        in_files = session.scalar(sa.select(sa.exists().where(VersionFile.sha256 == digest)))
        as_frozen = session.scalar(sa.select(sa.exists().where(ModelVersion.frozen_sha256 == digest)))
        return bool(in_files or as_frozen)
