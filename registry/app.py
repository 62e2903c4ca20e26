"""The Flask application factory.  Importing this never loads TensorFlow."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from threading import Event, Lock
from flask import Flask, g

from registry.config import Settings
from registry.db import Database
from registry.storage import BlobStorage, open_storage

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
    _labels: Any = None
    _labels_lock: Lock = field(default_factory=Lock)
    _exporter: Any = None
    serving_config: Any = None  # the last ModelServerConfig a gRPC HandleReloadConfigRequest accepted

    def notify_workers(self) -> None:
        self.work_available.set()

    @property
    def exporter(self):
        """The background TF Serving export sync, when ``REGISTRY_SERVING_EXPORT_ROOT`` is set."""
        if not self.settings.serving_export_root:
            return None
        with self._labels_lock:
            if self._exporter is None:
                from registry.serving_export import ExportSyncer

                self._exporter = ExportSyncer(self.settings, self.db, self.storage)
            return self._exporter

    def serving_changed(self) -> None:
        """A version became ready, an alias moved or what is served changed: sync the export."""
        if self.exporter is not None:
            self.exporter.request()

    def label_service(self):
        """The LabelService, made on the first request that needs it (it is what
        loads TensorFlow and numpy)."""
        with self._labels_lock:
            if self._labels is None:
                from registry.serving.service import LabelService

                self._labels = LabelService(self.settings, self.db, self.storage, stop=self.stop_workers)
            return self._labels


def create_app(settings: Settings | None = None, *, migrate: bool = True, start_workers: bool = False,
               serving_only: bool = False) -> Flask:
    """The registry's WSGI app; ``serving_only`` leaves out the registry API (for ``label-serve``)."""
    settings = settings or Settings.from_env()
    settings.ensure_home()
    app = Flask(__name__, static_folder=None)  # assets come from the web blueprint
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False

    db = Database(settings.database_url)
    if migrate:
        db.upgrade()
    registry = Registry(settings=settings, db=db, storage=open_storage(settings.storage_url))
    app.extensions["registry"] = registry

    from registry.api import bp as api_bp
    from registry.api.errors import register_error_handlers

    from registry.serving.rest import bp as serving_bp

    if not serving_only:
        from registry.web import bp as web_bp

        app.register_blueprint(api_bp)
        app.register_blueprint(web_bp)
    app.register_blueprint(serving_bp)
    register_error_handlers(app)
    from registry import access

    access.install(app, settings)

    @app.teardown_request
    def _abort_unfinished_uploads(_exc: BaseException | None) -> None:
        for sink in g.pop("upload_sinks", []):
            sink.abort()

    @app.get("/healthz")
    def healthz():
        """The process is up (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        """The database and blob storage answer (readiness); 503 names what failed."""
        from registry.health import readiness

        checks = readiness(registry.db, registry.storage)
        ready = all(value == "ok" for value in checks.values())
        return {"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503

    from registry.limits import install as install_rate_limits

    install_rate_limits(app, settings)  # last: after the access check identified the caller

    if start_workers and settings.embedded_workers > 0:
        from registry.worker import start_embedded_workers

        start_embedded_workers(registry, settings.embedded_workers)
    return app


def get_registry() -> Registry:
    from flask import current_app

    return current_app.extensions["registry"]
