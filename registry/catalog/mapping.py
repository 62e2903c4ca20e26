"""ORM rows to the plain entities the catalog hands out, in a few queries per page of rows."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry.catalog.agreements import agreement_with_previous
from registry.entities import READY, FileInfo, ModelInfo, VersionInfo
from registry.models import Alias, ModelTag, ModelVersion, RegisteredModel, VersionFile, VersionTag


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


LINEAGE = ("global_step", "source_commit", "run_url", "dataset")


def _tags(session: Session, table, owner, ids: Sequence[int]) -> dict[int, dict[str, str]]:
    """The tags of each of ``ids`` (versions or models), in one query."""
    out: dict[int, dict[str, str]] = {}
    if ids:
        for owner_id, key, value in session.execute(
                sa.select(owner, table.key, table.value).where(owner.in_(ids)).order_by(table.key)):
            out.setdefault(owner_id, {})[key] = value
    return out


def version_entities_across(session: Session, rows: Sequence[tuple[ModelVersion, str]]) -> list[VersionInfo]:
    """Summary entities of versions of several models ((row, model name) pairs), in a fixed number of
    queries however many models they come from: what a search answers (no agreement figures)."""
    model_ids = sorted({row.model_id for row, _ in rows})
    allowed = dict(session.execute(sa.select(RegisteredModel.id, RegisteredModel.allowed_ops)
                                   .where(RegisteredModel.id.in_(model_ids))).all()) if model_ids else {}
    return _entities(session, [row for row, _ in rows], {row.id: name for row, name in rows},
                     {row.id: list(allowed.get(row.model_id) or []) for row, _ in rows}, {}, summary=True)


def version_entities(
    session: Session, model_name: str, rows: Sequence[ModelVersion], *, summary: bool = False
) -> list[VersionInfo]:
    """The entities of version ``rows`` of ``model_name``; ``summary`` leaves out files and the conversion report."""
    agreement = agreement_with_previous(session, rows)
    allowed_ops = list(session.scalar(
        sa.select(RegisteredModel.allowed_ops).where(RegisteredModel.name == model_name)) or []) if rows else []
    return _entities(session, rows, {row.id: model_name for row in rows}, {row.id: allowed_ops for row in rows},
                     {row.id: agreement.get(row.version) for row in rows}, summary=summary)


def _entities(session: Session, rows: Sequence[ModelVersion], names: dict[int, str], allowed: dict[int, list[str]],
              agreement: dict[int, dict | None], *, summary: bool) -> list[VersionInfo]:
    ids = [row.id for row in rows]
    files: dict[int, list[FileInfo]] = {}
    if ids and not summary:
        for f in session.scalars(
            sa.select(VersionFile).where(VersionFile.version_id.in_(ids)).order_by(VersionFile.id)
        ):
            files.setdefault(f.version_id, []).append(FileInfo(f.role, f.filename, f.sha256, f.size))
    aliases = _aliases_by_version(session, ids)
    tags = _tags(session, VersionTag, VersionTag.version_id, ids)
    return [
        VersionInfo(
            id=row.id,
            model=names[row.id],
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
            agreement_with_previous=agreement.get(row.id),
            allowed_ops=allowed[row.id],
            signatures=None if summary else row.signatures,
            requested_signatures=row.requested_signatures,
            prediction_output=row.prediction_output,
            saved_model_state=row.saved_model_state,
            saved_model_message=row.saved_model_message or "",
            tags=tags.get(row.id, {}),
            lineage={k: v for k in LINEAGE if (v := getattr(row, k)) is not None},
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
    tags = _tags(session, ModelTag, ModelTag.model_id, ids)
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
            tags=tags.get(row.id, {}),
        )
        for row in rows
    ]
