"""Shadow traffic's catalog side: which version shadows an alias, and what the shadowing measured.

Setting and clearing an alias's shadow are writes on the model (audited, like alias moves).  The label
service (``registry.serving.shadow``) reads the setting, aggregates primary/shadow agreement per time
window in memory and adds its counts here with :func:`record_shadow`: an UPDATE that adds to the
window's row, or an INSERT when there is none yet, retried as an UPDATE when a concurrent writer
(another server process) inserted it first, so no count is lost or added twice on SQLite or PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.names import validate_alias_name, validate_model_name
from registry.catalog.rows import model_row, model_write, resolve_version_row
from registry.db import Database
from registry.entities import READY
from registry.errors import InvalidRequest, NotFound
from registry.models import Alias, ModelVersion, RegisteredModel, ShadowSample, ShadowWindow, utcnow

MAX_WINDOWS = 10_000  # windows one read answers with (a day of one-minute windows is 1,440)
MAX_SAMPLES_READ = 100


@dataclass(frozen=True)
class ShadowSetting:
    model: str
    alias: str
    version: int  # the alias's version: it answers
    shadow_version: int | None  # the version that gets a copy; None: off


@dataclass
class WindowCounts:
    """What one window of one alias measured (added into its row by :func:`record_shadow`)."""

    model: str
    alias: str
    primary_version: int
    shadow_version: int
    window_start: datetime
    requests: int = 0
    compared: int = 0
    agreed: int = 0
    dropped: int = 0
    errors: int = 0
    values: int = 0
    sum_abs_diff: float = 0.0
    max_abs_diff: float = 0.0

    def add(self, other: "WindowCounts") -> None:
        for name in ("requests", "compared", "agreed", "dropped", "errors", "values", "sum_abs_diff"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_abs_diff = max(self.max_abs_diff, other.max_abs_diff)


@dataclass(frozen=True)
class Sample:
    """An input on which primary and shadow disagreed, with both answers (JSON values)."""

    model: str
    alias: str
    primary_version: int
    shadow_version: int
    inputs: Any
    primary_outputs: Any
    shadow_outputs: Any
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class ShadowReport:
    setting: ShadowSetting
    since: datetime
    until: datetime
    windows: list[WindowCounts]
    samples: list[Sample]


def _alias_row(session: Session, model: RegisteredModel, alias: str) -> Alias:
    row = session.scalar(sa.select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
    if row is None:
        known = session.scalars(sa.select(Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)).all()
        hint = f"its aliases are: {', '.join(known)}" if known else "it has no aliases"
        raise NotFound(f"model {model.name!r} has no alias {alias!r} ({hint}): set it first with "
                       f"PUT /api/v1/models/{model.name}/aliases/{alias}", code="alias_not_found")
    return row


def _number(session: Session, version_id: int | None) -> int | None:
    if version_id is None:
        return None
    return session.scalar(sa.select(ModelVersion.version).where(ModelVersion.id == version_id))


def _setting(session: Session, name: str, row: Alias) -> ShadowSetting:
    return ShadowSetting(name, row.name, _number(session, row.version_id), _number(session, row.shadow_version_id))


def set_shadow(db: Database, name: str, alias: str, version: int, actor: Actor = SYSTEM) -> ShadowSetting:
    """Let ``version`` get a copy of the traffic ``alias`` answers: a ready version of the same model,
    not the alias's own."""
    validate_model_name(name)
    validate_alias_name(alias)
    with model_write(db, name) as (session, model):
        row = _alias_row(session, model, alias)
        shadow = resolve_version_row(session, model, str(version))
        if shadow.id == row.version_id:
            raise InvalidRequest(f"version {shadow.version} is what alias {alias!r} of {name!r} answers with: a "
                                 "shadow must be another version (push one, or pick another number)",
                                 code="shadow_is_primary")
        if shadow.status != READY:
            detail = f" ({shadow.status_message})" if shadow.status_message else ""
            raise InvalidRequest(f"version {shadow.version} of {name!r} is {shadow.status}{detail}: a shadow must "
                                 "be a ready version (wait for it to convert, or pick a ready one)",
                                 code="shadow_not_ready")
        previous = _number(session, row.shadow_version_id)
        row.shadow_version_id = shadow.id
        row.updated_at = utcnow()
        audit.record(session, actor, "alias.shadow.set", f"{name}:{alias}",
                     {"version": _number(session, row.version_id), "shadow": shadow.version, "previous": previous})
        session.flush()
        return _setting(session, name, row)


def delete_shadow(db: Database, name: str, alias: str, actor: Actor = SYSTEM) -> ShadowSetting:
    """Stop shadowing ``alias`` (what it measured stays readable)."""
    validate_model_name(name)
    with model_write(db, name) as (session, model):
        row = _alias_row(session, model, alias)
        if row.shadow_version_id is None:
            raise NotFound(f"alias {alias!r} of {name!r} has no shadow version: there is nothing to stop",
                           code="shadow_not_found")
        shadow = _number(session, row.shadow_version_id)
        row.shadow_version_id = None
        audit.record(session, actor, "alias.shadow.delete", f"{name}:{alias}", {"shadow": shadow})
        return _setting(session, name, row)


def stop_shadow(db: Database, name: str, alias: str, shadow_version: int, reason: str) -> bool:
    """The shadow failed: stop shadowing (audited as the system), unless the setting changed meanwhile."""
    try:
        with model_write(db, name) as (session, model):
            row = session.scalar(sa.select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
            if row is None or _number(session, row.shadow_version_id) != shadow_version:
                return False
            row.shadow_version_id = None
            audit.record(session, SYSTEM, "alias.shadow.stop", f"{name}:{alias}",
                         {"shadow": shadow_version, "reason": reason})
            return True
    except NotFound:
        return False


def stop_shadows_of_version(session: Session, name: str, version: ModelVersion, actor: Actor = SYSTEM) -> list[str]:
    """Inside a write that deletes ``version``: stop every alias shadowing it, each with an audit entry."""
    rows = list(session.scalars(sa.select(Alias).where(Alias.shadow_version_id == version.id).order_by(Alias.name)))
    for row in rows:
        row.shadow_version_id = None
        audit.record(session, actor, "alias.shadow.stop", f"{name}:{row.name}",
                     {"shadow": version.version, "reason": "the shadow version was deleted"})
    session.flush()
    return [row.name for row in rows]


def shadow_route(db: Database, name: str, alias: str) -> tuple[int, int] | None:
    """(the alias's version, its shadow version) when ``alias`` of ``name`` has a shadow, else None:
    what the label service asks (cached there) for a request served through an alias."""
    primary, shadow = aliased(ModelVersion), aliased(ModelVersion)
    with db.transaction() as session:
        found = session.execute(
            sa.select(primary.version, shadow.version)
            .select_from(Alias)
            .join(RegisteredModel, RegisteredModel.id == Alias.model_id)
            .join(primary, primary.id == Alias.version_id)
            .join(shadow, shadow.id == Alias.shadow_version_id)
            .where(RegisteredModel.name == name, RegisteredModel.deleted_at.is_(None), Alias.name == alias)
        ).first()
    return (found[0], found[1]) if found else None


def get_shadow(db: Database, name: str, alias: str, since: datetime, until: datetime,
               samples: int = MAX_SAMPLES_READ) -> ShadowReport:
    """The alias's shadow setting, the windows that started in [since, until) and the newest samples."""
    validate_model_name(name)
    with db.transaction() as session:
        model = model_row(session, name)
        row = _alias_row(session, model, alias)
        windows = session.scalars(
            sa.select(ShadowWindow)
            .where(ShadowWindow.model_id == model.id, ShadowWindow.alias == alias,
                   ShadowWindow.window_start >= since, ShadowWindow.window_start < until)
            .order_by(ShadowWindow.window_start, ShadowWindow.primary_version, ShadowWindow.shadow_version)
            .limit(MAX_WINDOWS)
        ).all()
        kept = session.scalars(
            sa.select(ShadowSample).where(ShadowSample.model_id == model.id, ShadowSample.alias == alias)
            .order_by(ShadowSample.created_at.desc(), ShadowSample.id.desc()).limit(max(0, samples))
        ).all() if samples else []
        return ShadowReport(
            _setting(session, name, row), since, until,
            [WindowCounts(name, alias, w.primary_version, w.shadow_version, w.window_start, w.requests, w.compared,
                          w.agreed, w.dropped, w.errors, w.values, w.sum_abs_diff, w.max_abs_diff) for w in windows],
            [Sample(name, alias, s.primary_version, s.shadow_version, s.inputs, s.primary_outputs, s.shadow_outputs,
                    s.created_at) for s in kept])


def _window_key(model_id: int, counts: WindowCounts):
    return (ShadowWindow.model_id == model_id, ShadowWindow.alias == counts.alias,
            ShadowWindow.primary_version == counts.primary_version,
            ShadowWindow.shadow_version == counts.shadow_version, ShadowWindow.window_start == counts.window_start)


def _add_to_row(session: Session, model_id: int, counts: WindowCounts) -> bool:
    largest = counts.max_abs_diff
    result = session.execute(
        sa.update(ShadowWindow).where(*_window_key(model_id, counts)).values(
            requests=ShadowWindow.requests + counts.requests, compared=ShadowWindow.compared + counts.compared,
            agreed=ShadowWindow.agreed + counts.agreed, dropped=ShadowWindow.dropped + counts.dropped,
            errors=ShadowWindow.errors + counts.errors, values=ShadowWindow.values + counts.values,
            sum_abs_diff=ShadowWindow.sum_abs_diff + counts.sum_abs_diff,
            max_abs_diff=sa.case((ShadowWindow.max_abs_diff < largest, largest), else_=ShadowWindow.max_abs_diff),
        ).execution_options(synchronize_session=False))
    return result.rowcount > 0


def _add_window(session: Session, model_id: int, counts: WindowCounts) -> None:
    if _add_to_row(session, model_id, counts):
        return
    try:
        with session.begin_nested():
            session.add(ShadowWindow(
                model_id=model_id, alias=counts.alias, primary_version=counts.primary_version,
                shadow_version=counts.shadow_version, window_start=counts.window_start, requests=counts.requests,
                compared=counts.compared, agreed=counts.agreed, dropped=counts.dropped, errors=counts.errors,
                values=counts.values, sum_abs_diff=counts.sum_abs_diff, max_abs_diff=counts.max_abs_diff))
    except IntegrityError:  # another process inserted the window between our UPDATE and INSERT
        if not _add_to_row(session, model_id, counts):
            raise


def record_shadow(db: Database, windows: Sequence[WindowCounts], samples: Sequence[Sample] = (),
                  keep: int = 0) -> None:
    """Add windows' counts into their rows, and keep ``samples`` (at most ``keep`` per alias, the oldest
    dropped).  Figures of a model deleted meanwhile are let go."""
    if not windows and not samples:
        return
    with db.transaction(write=True) as session:
        names = {w.model for w in windows} | {s.model for s in samples}
        ids = dict(session.execute(sa.select(RegisteredModel.name, RegisteredModel.id).where(
            RegisteredModel.name.in_(names), RegisteredModel.deleted_at.is_(None))).all())
        for counts in windows:
            if counts.model in ids:
                _add_window(session, ids[counts.model], counts)
        if keep <= 0:
            return
        trimmed = set()
        for sample in samples:
            if sample.model not in ids:
                continue
            session.add(ShadowSample(model_id=ids[sample.model], alias=sample.alias,
                                     primary_version=sample.primary_version, shadow_version=sample.shadow_version,
                                     inputs=sample.inputs, primary_outputs=sample.primary_outputs,
                                     shadow_outputs=sample.shadow_outputs, created_at=sample.created_at))
            trimmed.add((ids[sample.model], sample.alias))
        session.flush()
        for model_id, alias in trimmed:
            newest = (sa.select(ShadowSample.id)
                      .where(ShadowSample.model_id == model_id, ShadowSample.alias == alias)
                      .order_by(ShadowSample.created_at.desc(), ShadowSample.id.desc()).limit(keep))
            session.execute(sa.delete(ShadowSample).where(
                ShadowSample.model_id == model_id, ShadowSample.alias == alias,
                ShadowSample.id.not_in(sa.select(newest.subquery().c.id))).execution_options(synchronize_session=False))


def shadow_overview(db: Database, name: str, since: datetime, until: datetime) -> list[ShadowReport]:
    """Every alias of ``name`` that has a shadow version or windows in [since, until), with those windows."""
    validate_model_name(name)
    with db.transaction() as session:
        model = model_row(session, name)
        measured = set(session.scalars(sa.select(ShadowWindow.alias).distinct().where(
            ShadowWindow.model_id == model.id, ShadowWindow.window_start >= since,
            ShadowWindow.window_start < until)))
        names = [row.name for row in session.scalars(
            sa.select(Alias).where(Alias.model_id == model.id).order_by(Alias.name))
            if row.shadow_version_id is not None or row.name in measured]
    found = []
    for alias in names:
        try:
            found.append(get_shadow(db, name, alias, since, until, samples=0))
        except NotFound:  # the alias was deleted just now
            continue
    return found
