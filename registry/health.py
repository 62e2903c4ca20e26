"""Readiness: can this process do its work right now?

``/healthz`` says the process is up; ``/readyz`` (and ``registry check``, for
processes without HTTP such as workers) says whether the database answers a
``SELECT 1`` and would take a write, and whether the blob storage answers a
cheap call.  Load balancers and orchestrators stop sending traffic to a process
that is not ready.  The write check writes nothing: PostgreSQL reports
``transaction_read_only`` (a standby, ``default_transaction_read_only``); on
SQLite the database's folder must take a write and the file must be writable
(a disk gone read-only fails this while old connections still look fine; the
file itself is never opened, see ``_file_refusal``) and a connection must be
able to start a write, which is then rolled back.
"""

from __future__ import annotations

import errno
import os
import sqlite3

import sqlalchemy as sa

from registry.db import Database
from registry.storage import BlobStorage

SQLITE_BUSY, SQLITE_LOCKED = 5, 6


def readiness(db: Database, storage: BlobStorage) -> dict[str, str]:
    """``{"database": "ok" | "error: ...", "storage": ...}``."""
    checks: dict[str, str] = {}
    try:
        with db.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
            refusal = _write_refusal(db, connection)
            if refusal:  # opened while writes were refused, it would go on refusing them: replace it
                connection.invalidate()
        checks["database"] = f"error: the database refuses writes: {refusal}"[:300] if refusal else "ok"
    except Exception as exc:  # any failure means not ready; say which
        checks["database"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    try:
        storage.check()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {getattr(exc, 'message', None) or exc}"[:300]
    return checks


def _write_refusal(db: Database, connection: sa.Connection) -> str | None:
    """Why the database would refuse a write now, or None."""
    if db.dialect == "postgresql":
        if connection.execute(sa.text("SELECT current_setting('transaction_read_only')")).scalar() == "on":
            return ("it is read-only (transaction_read_only is on: a standby, or default_transaction_read_only "
                    "is set)")
        return None
    if db.dialect != "sqlite":
        return None
    path = db.engine.url.database
    if path and path != ":memory:" and not path.startswith("file:"):
        refusal = _file_refusal(path)
        if refusal:
            return refusal
    raw = connection.connection.driver_connection
    if raw.in_transaction:
        return None
    cursor = raw.cursor()
    try:
        cursor.execute("BEGIN")
        version = int(cursor.execute("PRAGMA user_version").fetchone()[0])
        cursor.execute(f"PRAGMA user_version = {version}")  # takes the write lock; rolled back below
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (SQLITE_BUSY, SQLITE_LOCKED):  # busy: a writer works
            return str(exc)
    finally:
        if raw.in_transaction:
            cursor.execute("ROLLBACK")
        cursor.close()
    return None


def _file_refusal(path: str) -> str | None:
    """Why the database file could not be written (its file system read-only, no permission), found
    without opening it.  This process must never open the file itself: closing any descriptor of a file
    drops every POSIX lock the process holds on it, SQLite's included.  Another process (a CLI command)
    would then take the database as unused, checkpoint it and delete the -wal and -shm files this
    server still writes to, and its writes from then on would be lost.

    An unnamed file made in the database's folder (``O_TMPFILE``: nothing to see, gone once closed)
    meets the same refusal as the database would: ext4 after a disk error (``errors=remount-ro``) still
    shows the mount as read-write to ``statvfs`` and ``access``, and refuses only actual writes."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.close(os.open(folder, getattr(os, "O_TMPFILE", 0) | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):  # no O_TMPFILE there: go on
            return f"cannot write to {folder}, the database's folder ({exc.strerror})"
    if not os.access(path, os.W_OK):
        return f"cannot open {path} for writing (Permission denied)"
    return None
