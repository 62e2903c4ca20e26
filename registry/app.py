"""The Flask application factory.  Importing this never loads TensorFlow."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from threading import Event
from typing import IO

from flask import Flask, Request, g

from registry.config import Settings
from registry.db import Database
from registry.storage import BlobStorage, open_storage
from registry.uploads import UploadSink

log = logging.getLogger(__name__)


@dataclass
class Registry:
    """What the request handlers need: settings, database and blob storage."""

    settings: Settings
    db: Database
    storage: BlobStorage
    work_available: Event = field(default_factory=Event)
    stop_workers: Event = field(default_factory=Event)
    workers: list = field(default_factory=list)

    def notify_workers(self) -> None:
        self.work_available.set()


class RegistryRequest(Request):
    """Streams uploaded files straight into blob storage while hashing them.

    A view opts in by setting ``g.upload_storage`` before touching
    ``request.files``; every file part then lands in an :class:`UploadSink`
    rather than werkzeug's temporary file.
    """

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None) -> IO[bytes]:
        storage: BlobStorage | None = g.get("upload_storage")
        if storage is None:
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        sink = UploadSink(storage.writer())
        g.setdefault("upload_sinks", []).append(sink)
        return sink  # type: ignore[return-value]


def create_app(settings: Settings | None = None, *, migrate: bool = True, start_workers: bool = False) -> Flask:
    settings = settings or Settings.from_env()
    settings.ensure_home()
    app = Flask(__name__)
    app.request_class = RegistryRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    app.json.sort_keys = False

    db = Database(settings.database_url)
    if migrate:
        db.upgrade()
    registry = Registry(settings=settings, db=db, storage=open_storage(settings.storage_url))
    app.extensions["registry"] = registry

    from registry.api import bp as api_bp
    from registry.api.errors import register_error_handlers

    app.register_blueprint(api_bp)
    register_error_handlers(app)

    @app.teardown_request
    def _abort_unfinished_uploads(_exc: BaseException | None) -> None:
        for sink in g.pop("upload_sinks", []):
            sink.abort()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    if start_workers and settings.embedded_workers > 0:
        from registry.worker import start_embedded_workers

        start_embedded_workers(registry, settings.embedded_workers)
    return app


def get_registry() -> Registry:
    from flask import current_app

    return current_app.extensions["registry"]
