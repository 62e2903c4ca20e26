"""A parsed filter (registry.search.grammar) as a SQLAlchemy expression, and the searches it serves:
versions across every model, and models.  SQL is built from expressions only, never from text.

LIKE is case-sensitive on both engines (SQLite connections set ``case_sensitive_like``), ILIKE is
not.  ``tags.KEY = 'v'`` uses the (key, value prefix) index of the tag tables.  Pages are keyset
pages on the sort column and the row id.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from registry import pagination
from registry.catalog.mapping import model_entities, version_entities_across
from registry.db import Database
from registry.entities import Page
from registry.errors import InvalidRequest
from registry.models import TAG_VALUE_INDEXED, Alias, ModelTag, ModelVersion, RegisteredModel, VersionTag
from registry.search.grammar import BoolOp, Comparison, FilterError, Not, parse

VERSION_FIELDS = ("name", "version", "status", "source", "alias", "created_at", "tags.KEY")
MODEL_FIELDS = ("name", "alias", "created_at", "tags.KEY")
ORDERS = {"versions": ("created_at", "version", "name"), "models": ("name", "created_at")}


def invalid(exc: FilterError) -> InvalidRequest:
    return InvalidRequest(f"invalid filter: {exc.message} at column {exc.column}", code="invalid_filter")


def _compare(column, op: str, value):
    if op == "IN":
        return column.in_(value)
    if op == "NOT IN":
        return column.not_in(value)
    if op == "LIKE":
        return column.like(value)
    if op == "ILIKE":
        return column.ilike(value)
    return {"=": column.__eq__, "!=": column.__ne__, "<": column.__lt__, "<=": column.__le__,
            ">": column.__gt__, ">=": column.__ge__}[op](value)


def _typed(c: Comparison, kind: type) -> object:
    values = c.value if isinstance(c.value, tuple) else (c.value,)
    if kind is int and not all(isinstance(v, int) for v in values):
        raise FilterError(f"{c.field} compares with whole numbers, e.g. {c.field} >= 3", c.column)
    if kind is str and not all(isinstance(v, str) for v in values):
        raise FilterError(f"{c.field} compares with text in quotes, e.g. {c.field} = 'ready'", c.column)
    if kind is int and c.op in ("LIKE", "ILIKE"):
        raise FilterError(f"{c.op} compares text: {c.field} is a number", c.column)
    if kind is datetime:
        if c.op in ("LIKE", "ILIKE"):
            raise FilterError(f"{c.op} compares text: created_at is a time, e.g. created_at >= '2026-11-24'",
                              c.column)
        try:
            parsed = tuple(_when(v) for v in values)
        except (TypeError, ValueError):
            raise FilterError("created_at compares with a time in quotes, e.g. created_at >= "
                              "'2026-11-24T10:00Z'", c.column) from None
        return parsed if isinstance(c.value, tuple) else parsed[0]
    return c.value


def _when(text: object) -> datetime:
    if not isinstance(text, str):
        raise TypeError(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _tag(c: Comparison, table, owner, owner_id):
    key = c.field[len("tags."):]
    if key.startswith('"') and key.endswith('"') and len(key) >= 2:
        key = key[1:-1].replace('""', '"')
    value = _typed(c, str)
    found = [table.key == key, owner == owner_id]
    if c.op == "=":  # the (key, value prefix) index finds it; the whole value decides
        found.append(sa.func.substr(table.value, 1, TAG_VALUE_INDEXED) == value[:TAG_VALUE_INDEXED])
    found.append(_compare(table.value, c.op, value))
    return sa.exists().where(*found)


def _alias(c: Comparison, owner_clause):
    value = _typed(c, str)
    if c.op in ("!=", "NOT IN"):  # no alias of that name points here
        return ~sa.exists().where(owner_clause, _compare(Alias.name, "=" if c.op == "!=" else "IN", value))
    return sa.exists().where(owner_clause, _compare(Alias.name, c.op, value))


def _version_condition(c: Comparison):
    if c.field.startswith("tags."):
        return _tag(c, VersionTag, VersionTag.version_id, ModelVersion.id)
    columns = {"name": (RegisteredModel.name, str), "version": (ModelVersion.version, int),
               "status": (ModelVersion.status, str), "source": (ModelVersion.source, str),
               "created_at": (ModelVersion.created_at, datetime)}
    if c.field == "alias":
        return _alias(c, Alias.version_id == ModelVersion.id)
    if c.field not in columns:
        raise FilterError(f"unknown field {c.field!r}: use {', '.join(VERSION_FIELDS)}", c.column)
    column, kind = columns[c.field]
    return _compare(column, c.op, _typed(c, kind))


def _model_condition(c: Comparison):
    if c.field.startswith("tags."):
        return _tag(c, ModelTag, ModelTag.model_id, RegisteredModel.id)
    if c.field == "alias":
        return _alias(c, Alias.model_id == RegisteredModel.id)
    if c.field == "name":
        return _compare(RegisteredModel.name, c.op, _typed(c, str))
    if c.field == "created_at":
        return _compare(RegisteredModel.created_at, c.op, _typed(c, datetime))
    hint = " (a field of versions: search versions instead)" if c.field in VERSION_FIELDS else ""
    raise FilterError(f"unknown field {c.field!r} for models{hint}: use {', '.join(MODEL_FIELDS)}", c.column)


def compile_filter(text: str, condition) -> sa.ColumnElement[bool]:
    """The SQL condition of filter ``text``; InvalidRequest (400) pointing at the column of a mistake."""

    def build(node):
        if isinstance(node, BoolOp):
            return (sa.and_ if node.op == "AND" else sa.or_)(*(build(p) for p in node.parts))
        if isinstance(node, Not):
            return sa.not_(build(node.part))
        return condition(node)

    try:
        return build(parse(text))
    except FilterError as exc:
        raise invalid(exc) from None


def _order(kind: str, order_by: str | None):
    words = (order_by or ("created_at DESC" if kind == "versions" else "name ASC")).split()
    field = words[0] if words else ""
    direction = words[1].upper() if len(words) > 1 else "ASC"
    if field not in ORDERS[kind] or direction not in ("ASC", "DESC") or len(words) > 2:
        raise InvalidRequest(f"invalid order_by {order_by!r}: use one of {', '.join(ORDERS[kind])}, then ASC or "
                             "DESC, e.g. created_at DESC", code="invalid_order_by")
    return field, direction == "DESC"


def _page(stmt, column, row_id, descending: bool, page_token: str | None, size: int, kind: str):
    if page_token:
        after = pagination.decode_token(page_token)
        if not (isinstance(after, list) and len(after) == 3 and after[0] == kind):
            raise InvalidRequest("invalid page_token for this search", code="invalid_page_token")
        value = _when(after[1]) if isinstance(column.type, sa.DateTime) or column.key == "created_at" else after[1]
        key = sa.tuple_(column, row_id)
        stmt = stmt.where(key < sa.tuple_(sa.literal(value), sa.literal(after[2])) if descending
                          else key > sa.tuple_(sa.literal(value), sa.literal(after[2])))
    order = (column.desc(), row_id.desc()) if descending else (column.asc(), row_id.asc())
    return stmt.order_by(*order).limit(size + 1)


def _token(kind: str, value, row_id: int) -> str:
    return pagination.encode_token([kind, value.isoformat() if isinstance(value, datetime) else value, row_id])


def search_versions(db: Database, filter_text: str | None = None, *, order_by: str | None = None,
                    page_size: int | None = None, page_token: str | None = None) -> Page:
    """Versions of every model that match the filter, with their aliases and tags."""
    size = pagination.page_size(page_size)
    field, descending = _order("versions", order_by)
    column = {"created_at": ModelVersion.created_at, "version": ModelVersion.version,
              "name": RegisteredModel.name}[field]
    stmt = (sa.select(ModelVersion, RegisteredModel.name, column)
            .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
            .where(RegisteredModel.deleted_at.is_(None)))
    if filter_text and filter_text.strip():
        stmt = stmt.where(compile_filter(filter_text, _version_condition))
    with db.transaction() as session:
        rows = session.execute(_page(stmt, column, ModelVersion.id, descending, page_token, size,
                                     "versions")).all()
        token = _token("versions", rows[size - 1][2], rows[size - 1][0].id) if len(rows) > size else None
        return Page(version_entities_across(session, [(version, name) for version, name, _ in rows[:size]]), token)


def search_models(db: Database, filter_text: str | None = None, *, order_by: str | None = None,
                  page_size: int | None = None, page_token: str | None = None) -> Page:
    """Models that match the filter, with their aliases and tags."""
    size = pagination.page_size(page_size)
    field, descending = _order("models", order_by)
    column = {"name": RegisteredModel.name, "created_at": RegisteredModel.created_at}[field]
    stmt = sa.select(RegisteredModel, column).where(RegisteredModel.deleted_at.is_(None))
    if filter_text and filter_text.strip():
        stmt = stmt.where(compile_filter(filter_text, _model_condition))
    with db.transaction() as session:
        rows = session.execute(_page(stmt, column, RegisteredModel.id, descending, page_token, size, "models")).all()
        token = _token("models", rows[size - 1][1], rows[size - 1][0].id) if len(rows) > size else None
        return Page(model_entities(session, [model for model, _ in rows[:size]]), token)
