"""How often two versions of a model agree: what a comparison measured, remembered per pair."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from registry.catalog.rows import model_write
from registry.db import Database
from registry.models import Agreement, ModelVersion, utcnow


def agreement_with_previous(session: Session, rows: Sequence[ModelVersion]) -> dict[int, dict]:
    """Top-1 agreement of each version with the existing version before it (deleted
    ones are skipped), where a comparison measured it."""
    if not rows:
        return {}
    model_id = rows[0].model_id
    numbers = [row.version for row in rows]
    before = aliased(ModelVersion)
    previous = (
        sa.select(sa.func.max(before.version))
        .where(before.model_id == model_id, before.version < Agreement.newer)
        .correlate(Agreement)
        .scalar_subquery()
    )
    found = session.execute(
        sa.select(Agreement.newer, Agreement.older, Agreement.top1_agreement, Agreement.images)
        .where(Agreement.model_id == model_id, Agreement.newer.in_(numbers), Agreement.older == previous)
    )
    return {newer: {"version": older, "top1_agreement": rate, "images": images}
            for newer, older, rate, images in found}


def record_agreements(db: Database, name: str, pairs: Sequence[tuple[int, int, float, float | None, int]]) -> None:
    """Remember what a comparison found: (version, version, top-1 agreement, mean |diff|, images)."""
    if not pairs:
        return
    with model_write(db, name) as (session, model):
        for a, b, rate, diff, images in pairs:
            newer, older = max(a, b), min(a, b)
            row = session.scalar(sa.select(Agreement).where(
                Agreement.model_id == model.id, Agreement.newer == newer, Agreement.older == older))
            if row is None:
                session.add(Agreement(model_id=model.id, newer=newer, older=older, top1_agreement=rate,
                                      mean_abs_score_diff=diff, images=images))
            else:
                row.top1_agreement, row.mean_abs_score_diff, row.images = rate, diff, images
                row.updated_at = utcnow()
