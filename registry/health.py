"""Readiness: can this process do its work right now?

``/healthz`` says the process is up; ``/readyz`` (and ``registry check``, for
processes without HTTP such as workers) says whether the database answers a
``SELECT 1`` and the blob storage answers a cheap call.  Load balancers and
orchestrators stop sending traffic to a process that is not ready.
"""

from __future__ import annotations

import sqlalchemy as sa

from registry.db import Database
from registry.storage import BlobStorage


def readiness(db: Database, storage: BlobStorage) -> dict[str, str]:
    """``{"database": "ok" | "error: ...", "storage": ...}``."""
    checks: dict[str, str] = {}
    try:
        with db.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; say which
        checks["database"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    try:
        storage.check()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {getattr(exc, 'message', None) or exc}"[:300]
    return checks
