"""Loading a model's row (locked for a write) and resolving a version reference to its row.

Every write on a model runs in :func:`model_write`, which locks the model's row
(``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so
writes on one model happen one after another.  ORM rows never leave the
catalog: :mod:`registry.catalog.mapping` turns them into entities.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from registry.catalog.names import MAX_VERSION, validate_model_name, version_number
from registry.db import Database
from registry.entities import READY
from registry.errors import Conflict, NotFound
from registry.models import Alias, ModelVersion, RegisteredModel


def model_row(session: Session, name: str, *, lock: bool = False) -> RegisteredModel:
    """The model's row (locked when ``lock``); NotFound when it does not exist or was deleted."""
    query = sa.select(RegisteredModel).where(RegisteredModel.name == name, RegisteredModel.deleted_at.is_(None))
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        close = close_model_names(session, name)
        hint = f"did you mean {' or '.join(map(repr, close))}? (or push a version to create {name!r})" if close \
            else "push a version to create it"
        raise NotFound(f"model {name!r} does not exist: {hint}", code="model_not_found")
    return row


def close_model_names(session: Session, name: str, n: int = 3) -> list[str]:
    """Existing model names a typo of ``name`` may have meant (case aside, or a letter or two off)."""
    names = session.scalars(sa.select(RegisteredModel.name).where(RegisteredModel.deleted_at.is_(None))).all()
    same_case = [m for m in names if m.lower() == name.lower() and m != name]
    return same_case or difflib.get_close_matches(name, names, n=n, cutoff=0.75)


@contextmanager
def model_write(db: Database, name: str) -> Iterator[tuple[Session, RegisteredModel]]:
    """A write transaction holding the model's row lock, for a change decided on what it reads.

    The lock makes writes on one model take turns, so the constraint errors a
    race would cause cannot happen; should one still come, it is answered as a
    409 to retry rather than a 500.
    """
    validate_model_name(name)
    try:
        with db.transaction(write=True) as session:
            yield session, model_row(session, name, lock=True)
    except (IntegrityError, StaleDataError) as exc:
        raise Conflict(f"model {name!r} changed while this request ran (another request deleted or moved "
                       "something at the same time): look at it again and retry", code="concurrent_change") from exc


def resolve_version_row(session: Session, model: RegisteredModel, ref: str) -> ModelVersion:
    """The row of version ``ref`` of ``model``: a number, 'latest' or an alias; NotFound says what exists."""
    ref = (ref or "").strip()
    number = version_number(ref)
    if number is not None:
        row = None if number > MAX_VERSION else session.scalar(
            sa.select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == number)
        )
        if row is None:
            raise NotFound(
                f"model {model.name!r} has no version {(ref[1:] if ref[:1] in 'vV' else ref).lstrip('0') or '0'} "
                f"(versions go up to {model.last_version})",
                code="version_not_found",
            )
        return row
    if ref == "latest":
        row = session.scalar(
            sa.select(ModelVersion)
            .where(ModelVersion.model_id == model.id, ModelVersion.status == READY)
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
        if row is None:
            raise NotFound(
                f"model {model.name!r} has no ready version yet: wait for a conversion to finish "
                "or ask for a version number",
                code="version_not_found",
            )
        return row
    row = session.scalar(
        sa.select(ModelVersion)
        .join(Alias, Alias.version_id == ModelVersion.id)
        .where(Alias.model_id == model.id, Alias.name == ref)
    )
    if row is None:
        known = session.scalars(sa.select(Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)).all()
        hint = f"its aliases are: {', '.join(known)}" if known else "it has no aliases"
        raise NotFound(
            f"model {model.name!r} has no version or alias {ref!r}: use a version number, "
            f"'latest' or an alias ({hint})",
            code="version_not_found",
        )
    return row
