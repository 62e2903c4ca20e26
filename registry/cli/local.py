"""The settings, database and blob storage of the commands that run against them directly
(the server roles and the admin commands), set up the same way everywhere."""

from __future__ import annotations

import getpass

from registry.auth.audit import Actor
from registry.config import Settings
from registry.db import Database
from registry.storage import BlobStorage, open_storage


def settings() -> Settings:
    """The settings from the environment (REGISTRY_*), with REGISTRY_HOME made."""
    found = Settings.from_env()
    found.ensure_home()
    return found


def database(settings: Settings) -> Database:
    """The registry's database, migrated to the newest schema."""
    db = Database(settings.database_url)
    db.upgrade()
    return db


def services() -> tuple[Settings, Database, BlobStorage]:
    """Settings, the migrated database and the blob storage, for commands that need all three."""
    found = settings()
    db = database(found)
    return found, db, open_storage(found.storage_url)


def actor() -> Actor:
    """Who the audit log records for a local command: ``cli:<user>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", None, "local")
