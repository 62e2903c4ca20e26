"""Webhooks (issue 17): admins register URLs for catalog events; each event is written to an outbox in
the transaction of the change it reports (``events``) and sent after commit by the workers, signed,
retried with backoff and in order per model (``delivery``); ``hooks`` is the admin service.

Only the event names live here, so that the CLI lists them without loading the database layer.
"""

VERSION_CREATED = "version.created"
VERSION_READY = "version.ready"
VERSION_FAILED = "version.failed"
VERSION_DELETED = "version.deleted"
ALIAS_MOVED = "alias.moved"
TAG_CHANGED = "tag.changed"
EVENTS = (VERSION_CREATED, VERSION_READY, VERSION_FAILED, VERSION_DELETED, ALIAS_MOVED, TAG_CHANGED)

__all__ = ["ALIAS_MOVED", "EVENTS", "TAG_CHANGED", "VERSION_CREATED", "VERSION_DELETED", "VERSION_FAILED",
           "VERSION_READY"]
