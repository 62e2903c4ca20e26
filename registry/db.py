"""Engine, sessions and migrations.

Services own their transactions through :meth:`Database.transaction`, the one
place that commits or rolls back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.orm import Session, sessionmaker

from registry.config import owner_only
from registry.errors import database_fault

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _recycle_connections_on_write_faults(engine: sa.Engine) -> None:
    """A connection opened while the database refused writes (a read-only disk, a standby) keeps
    refusing them after the database recovers: such errors count as disconnects, so the pool
    replaces its connections instead of failing every write until a restart."""

    @sa.event.listens_for(engine, "handle_error")
    def _recycle(context) -> None:
        fault = database_fault(context.original_exception)
        if fault is not None and fault.code in ("database_read_only", "database_disk_error"):
            context.is_disconnect = True


def _private_sqlite_file(url: str) -> None:
    """Create the SQLite file readable by its owner only (SQLite gives its -wal, -shm and
    -journal files the same mode), and tighten an existing one and its companions."""
    path = sa.engine.make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:  # O_EXCL: never open an existing database here, closing would drop SQLite's locks
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError:  # it exists, or SQLite will say what is wrong with the folder
        pass
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        owner_only(Path(name))


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _recycle_connections_on_write_faults(engine)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            # WAL lets readers go on while a push or the worker writes.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA case_sensitive_like=ON")  # LIKE as on PostgreSQL (registry.search)
            cursor.close()

        return engine
    engine = sa.create_engine(url, pool_pre_ping=True)
    _recycle_connections_on_write_faults(engine)
    return engine


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on error.

        ``write`` is for a service that reads and then writes on what it read:
        on SQLite the transaction takes the database's write lock before its
        first read (``BEGIN IMMEDIATE``; other writers wait up to the busy
        timeout), so no other write lands in between.  SQLite's default would
        read outside any transaction and lock only at the first write.  On
        PostgreSQL the service locks the rows it decides on (``SELECT ... FOR
        UPDATE``) instead.
        """
        session = self._sessions()
        try:
            if write and self.dialect == "sqlite":
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session
            session.commit()
        except sa.exc.DBAPIError as exc:
            session.rollback()
            # The database's own faults (read-only, full, unreachable) become one domain error,
            # answered 503 over REST and UNAVAILABLE over gRPC; anything else is a bug or a race.
            fault = database_fault(exc)
            if fault is None:
                raise
            raise fault from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def upgrade(self) -> None:
        """Apply Alembic migrations up to head."""
        migrate(self.engine, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(engine: sa.Engine):
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    config.attributes["engine"] = engine
    return config


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)
