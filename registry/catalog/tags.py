"""Key/value tags on models and on versions: set, changed and deleted in one audited write.

A key is 1-250 letters, digits, ``_``, ``-``, ``.``, ``/`` or ``:``, starting with a letter, digit or
``_`` (so that a filter names it as ``tags.KEY`` without quotes); a value is any text of at most
5,000 characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import sqlalchemy as sa

from registry.auth import audit
from registry.auth.audit import SYSTEM, Actor
from registry.catalog.rows import model_write, resolve_version_row
from registry.db import Database
from registry.errors import InvalidRequest
from registry.models import ModelTag, VersionTag, utcnow
from registry.webhooks import events as webhooks

TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/:]{0,249}$")
MAX_TAG_VALUE = 5000
MAX_TAGS_PER_WRITE = 100
TAG_ACTION = "tag.changed"


def validate_tags(changes: object) -> dict[str, str | None]:
    """``{key: value, key: None}`` (None deletes), checked: keys by the pattern, values by length."""
    if not isinstance(changes, Mapping) or not changes:
        raise InvalidRequest('send a JSON object of tags, e.g. {"team": "vision", "old": null} (null deletes a tag)',
                             code="invalid_tags")
    if len(changes) > MAX_TAGS_PER_WRITE:
        raise InvalidRequest(f"at most {MAX_TAGS_PER_WRITE} tags in one write, not {len(changes)}", code="invalid_tags")
    for key, value in changes.items():
        if not isinstance(key, str) or not TAG_KEY_RE.match(key):
            raise InvalidRequest(f"invalid tag key {key!r}: use 1-250 letters, digits, '_', '-', '.', '/' or ':', "
                                 "starting with a letter, digit or '_'", code="invalid_tag_key")
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"the value of tag {key!r} must be text (or null to delete it), not "
                                 f"{type(value).__name__}", code="invalid_tag_value")
        if value is not None and len(value) > MAX_TAG_VALUE:
            raise InvalidRequest(f"the value of tag {key!r} has {len(value)} characters: at most {MAX_TAG_VALUE}",
                                 code="invalid_tag_value")
    return dict(changes)


def set_tags(db: Database, name: str, changes: object, ref: str | None = None,
             actor: Actor = SYSTEM) -> dict[str, str]:
    """Set, change or delete (a None value) tags of model ``name``, or of its version ``ref``; the
    tags after the write.  One audit event lists what changed (old and new values)."""
    changes = validate_tags(changes)
    with model_write(db, name) as (session, model):
        if ref is None:
            table, owner, owner_id, target = ModelTag, ModelTag.model_id, model.id, name
            number = None
        else:
            row = resolve_version_row(session, model, ref)
            table, owner, owner_id, target = VersionTag, VersionTag.version_id, row.id, f"{name}:{row.version}"
            number = row.version
        current = dict(session.execute(sa.select(table.key, table.value).where(owner == owner_id)).all())
        changed = {k: {"old": current.get(k), "new": v} for k, v in changes.items() if current.get(k) != v}
        for key, change in changed.items():
            if change["new"] is None:
                session.execute(sa.delete(table).where(owner == owner_id, table.key == key))
                del current[key]
            elif change["old"] is None:
                session.add(table(**{owner.key: owner_id}, key=key, value=change["new"], updated_by=actor.name))
                current[key] = change["new"]
            else:
                session.execute(sa.update(table).where(owner == owner_id, table.key == key)
                                .values(value=change["new"], updated_by=actor.name, updated_at=utcnow()))
                current[key] = change["new"]
        if changed:
            audit.record(session, actor, TAG_ACTION, target, {"tags": changed})
            webhooks.emit(session, webhooks.TAG_CHANGED, name, {"version": number, "tags": changed,
                                                                "actor": actor.name})
            model.updated_at = utcnow()
        return dict(sorted(current.items()))
