"""Registered models: one by name, a page of them by name, and editing a model's description."""

from __future__ import annotations

import sqlalchemy as sa

from registry import pagination
from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.mapping import model_entities
from registry.catalog.names import validate_model_name
from registry.catalog.rows import model_row, model_write
from registry.db import Database
from registry.entities import ModelInfo, Page
from registry.errors import InvalidRequest
from registry.models import RegisteredModel, utcnow

MAX_DESCRIPTION = 10_000  # characters of a model's or a version's description


def get_model(db: Database, name: str) -> ModelInfo:
    validate_model_name(name)
    with db.transaction() as session:
        return model_entities(session, [model_row(session, name)])[0]


def update_model(db: Database, name: str, *, description: str, actor: Actor = SYSTEM) -> ModelInfo:
    """Replace the model's description, recorded in the audit log with the one it replaces."""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(f"a description is a text of at most {MAX_DESCRIPTION:,} characters",
                             code="invalid_description")
    with model_write(db, name) as (session, model):
        old = model.description or ""
        if description != old:
            model.description = description
            model.updated_at = utcnow()
            audit.record(session, actor, "model.update", name, {"description": {"old": old, "new": description}})
        session.flush()
        return model_entities(session, [model])[0]


def list_models(
    db: Database, *, page_size: int | None = None, page_token: str | None = None, query: str | None = None
) -> Page:
    """Models by name, by keyset on the name; ``query`` filters by substring."""
    size = pagination.page_size(page_size)
    with db.transaction() as session:
        stmt = sa.select(RegisteredModel).where(RegisteredModel.deleted_at.is_(None))
        if query:
            escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(RegisteredModel.name.ilike(f"%{escaped}%", escape="\\"))
        if page_token:
            after = pagination.decode_token(page_token)
            if not isinstance(after, str):
                raise InvalidRequest("invalid page_token for this listing", code="invalid_page_token")
            stmt = stmt.where(RegisteredModel.name > after)
        rows = session.scalars(stmt.order_by(RegisteredModel.name).limit(size + 1)).all()
        token = pagination.encode_token(rows[size - 1].name) if len(rows) > size else None
        return Page(model_entities(session, rows[:size]), token)
