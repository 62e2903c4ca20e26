"""ORM rows to the plain entities the catalog hands out, in a few queries per page of rows."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry.catalog.agreements import agreement_with_previous
from registry.entities import READY, FileInfo, ModelInfo, VersionInfo
from registry.models import Alias, ModelVersion, RegisteredModel, VersionFile


def _aliases_by_version(session: Session, version_ids: Sequence[int]) -> dict[int, list[str]]:
    if not version_ids:
        return {}
    rows = session.execute(
        sa.select(Alias.version_id, Alias.name).where(Alias.version_id.in_(version_ids)).order_by(Alias.name)
    )
    out: dict[int, list[str]] = {}
    for version_id, name in rows:
        out.setdefault(version_id, []).append(name)
    return out


def version_entities(
    session: Session, model_name: str, rows: Sequence[ModelVersion], *, summary: bool = False
) -> list[VersionInfo]:
    """The entities of version ``rows`` of ``model_name``; ``summary`` leaves out files and the conversion report."""
    ids = [row.id for row in rows]
    files: dict[int, list[FileInfo]] = {}
    if ids and not summary:
        for f in session.scalars(
            sa.select(VersionFile).where(VersionFile.version_id.in_(ids)).order_by(VersionFile.id)
        ):
            files.setdefault(f.version_id, []).append(FileInfo(f.role, f.filename, f.sha256, f.size))
    aliases = _aliases_by_version(session, ids)
    agreement = agreement_with_previous(session, rows)
    allowed_ops = list(session.scalar(
        sa.select(RegisteredModel.allowed_ops).where(RegisteredModel.name == model_name)) or []) if rows else []
    return [
        VersionInfo(
            id=row.id,
            model=model_name,
            version=row.version,
            status=row.status,
            status_message=row.status_message,
            source=row.source,
            description=row.description,
            requested_output_nodes=row.requested_output_nodes,
            requested_input_nodes=row.requested_input_nodes,
            output_nodes=row.output_nodes,
            output_nodes_detected=row.output_nodes_detected,
            input_nodes=row.input_nodes,
            frozen_sha256=row.frozen_sha256,
            frozen_size=row.frozen_size,
            tf_version=row.tf_version,
            conversion=None if summary else row.conversion,
            created_at=row.created_at,
            updated_at=row.updated_at,
            ready_at=row.ready_at,
            preprocessing_settings=row.preprocessing,
            signature=row.signature,
            files=files.get(row.id, []),
            aliases=aliases.get(row.id, []),
            agreement_with_previous=agreement.get(row.version),
            allowed_ops=allowed_ops,
            signatures=None if summary else row.signatures,
            requested_signatures=row.requested_signatures,
            prediction_output=row.prediction_output,
            saved_model_state=row.saved_model_state,
            saved_model_message=row.saved_model_message or "",
        )
        for row in rows
    ]


def model_entities(session: Session, rows: Sequence[RegisteredModel]) -> list[ModelInfo]:
    """The entities of model ``rows``, with each one's newest ready version and aliases."""
    ids = [row.id for row in rows]
    if not ids:
        return []
    # Newest ready version per model: one index lookup each, however many versions there are.
    newest_ready = (
        sa.select(ModelVersion.version)
        .where(ModelVersion.model_id == RegisteredModel.id, ModelVersion.status == READY)
        .order_by(ModelVersion.version.desc())
        .limit(1)
        .correlate(RegisteredModel)
        .scalar_subquery()
    )
    latest = dict(session.execute(sa.select(RegisteredModel.id, newest_ready).where(RegisteredModel.id.in_(ids))).all())
    aliases: dict[int, dict[str, int]] = {}
    for model_id, alias, number in session.execute(
        sa.select(Alias.model_id, Alias.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == Alias.version_id)
        .where(Alias.model_id.in_(ids))
        .order_by(Alias.name)
    ):
        aliases.setdefault(model_id, {})[alias] = number
    return [
        ModelInfo(
            name=row.name,
            description=row.description,
            version_count=row.version_count,
            latest_version=latest.get(row.id),
            last_version=row.last_version,
            aliases=aliases.get(row.id, {}),
            created_at=row.created_at,
            updated_at=row.updated_at,
            allowed_ops=list(row.allowed_ops or []),
            served_versions=row.served_versions,
        )
        for row in rows
    ]
