"""The settings, database and blob storage of the commands that run against them directly
(the server roles and the admin commands), set up the same way everywhere.

Only the commands that may create a registry (``init``, ``migrate``, and the server roles through
``create_app``) pass ``create=True``; every other one refuses a registry that is not there
(:func:`require_registry`), so a command run from the wrong folder never makes an empty one there.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sqlite3

import click
import sqlalchemy as sa

from registry.auth.audit import Actor
from registry.config import Settings
from registry.db import Database
from registry.errors import database_fault
from registry.storage import BlobStorage, open_storage


def settings(*, create: bool = False) -> Settings:
    """The settings from the environment (REGISTRY_*); with ``create``, REGISTRY_HOME made."""
    found = Settings.from_env()
    if create:
        found.ensure_home()
    return found


def database(settings: Settings, *, create: bool = False) -> Database:
    """The registry's database, migrated to the newest schema; without ``create``, only one
    that already holds a registry (else a one-line refusal naming where it looked)."""
    if not create:
        require_registry(settings)
    db = Database(settings.database_url)
    db.upgrade()
    return db


def services() -> tuple[Settings, Database, BlobStorage]:
    """Settings, the migrated database and the blob storage of an existing registry."""
    found = settings()
    db = database(found)
    return found, db, open_storage(found.storage_url)


def where(settings: Settings) -> str:
    """Where the registry's database is: the SQLite file, or the database URL without its password."""
    url = sa.engine.make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return url.database or settings.database_url
    return sa.engine.URL.create(url.drivername, url.username, None, url.host, url.port, url.database,
                                url.query).render_as_string(hide_password=False)


def registry_exists(settings: Settings) -> bool:
    """Whether the database holds a registry (its schema's ``alembic_version`` table), looked at
    without creating anything: no SQLite file is made, no table written."""
    url = sa.engine.make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        path = url.database
        if path and path != ":memory:" and not path.startswith("file:"):
            if not os.path.isfile(path):
                return False
            try:  # the file exists: connecting creates nothing
                with contextlib.closing(sqlite3.connect(path)) as connection:
                    return connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                              "AND name = 'alembic_version'").fetchone() is not None
            except sqlite3.DatabaseError as exc:
                raise click.ClickException(f"{path} cannot be read as the registry's database: {exc}") from None
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return sa.inspect(connection).has_table("alembic_version")
    except sa.exc.DBAPIError as exc:
        fault = database_fault(exc)
        if fault is None:
            raise
        raise click.ClickException(f"{where(settings)}: {fault.message}") from None
    finally:
        engine.dispose()


def require_registry(settings: Settings) -> None:
    """Refuse, in one line, a registry that is not there: where it looked and how to look elsewhere."""
    if registry_exists(settings):
        return
    if settings.embedded:
        raise click.ClickException(
            f"no registry at {where(settings)} (REGISTRY_HOME={settings.home}): point to yours with "
            "REGISTRY_HOME=/path/to/registry-data or REGISTRY_DATABASE_URL=..., or run 'registry init' "
            "to create one here")
    raise click.ClickException(
        f"no registry in the database {where(settings)} (it has no registry tables): point to yours with "
        "REGISTRY_DATABASE_URL=..., or run 'registry init' to create one there")


def actor() -> Actor:
    """Who the audit log records for a local command: ``cli:<user>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", None, "local", "admin")  # it holds the database itself
