"""Which blobs the catalog refers to, for the garbage collector and for cleaning up after a failed conversion:
version files, frozen graphs, and the live (not deleted) revisions of evaluation sets."""

from __future__ import annotations

import sqlalchemy as sa

from registry.db import Database
from registry.models import EvalSet, ModelVersion, VersionFile


def referenced_digests(db: Database) -> set[str]:
    """Every blob digest a version (uploaded files and frozen graphs) or a live evaluation set refers to."""
    with db.transaction() as session:
        found = set(session.scalars(sa.select(VersionFile.sha256).distinct()))
        found.update(session.scalars(
            sa.select(ModelVersion.frozen_sha256).where(ModelVersion.frozen_sha256.is_not(None)).distinct()))
        found.update(session.scalars(sa.select(EvalSet.sha256).where(EvalSet.deleted_at.is_(None)).distinct()))
        return found


def is_blob_referenced(db: Database, digest: str) -> bool:
    with db.transaction() as session:
        in_files = session.scalar(sa.select(sa.exists().where(VersionFile.sha256 == digest)))
        as_frozen = session.scalar(sa.select(sa.exists().where(ModelVersion.frozen_sha256 == digest)))
        in_sets = session.scalar(sa.select(sa.exists().where(EvalSet.sha256 == digest,
                                                             EvalSet.deleted_at.is_(None))))
        return bool(in_files or as_frozen or in_sets)
