"""The Flask application factory.  Importing this never loads TensorFlow."""

from __future__ import annotations

import logging

from flask import Flask, g

from registry.api import bp as api_bp
from registry.auth import access, limits
from registry.config import Settings
from registry.context import Registry
from registry.db import Database
from registry.health import readiness
from registry.http_errors import register_error_handlers
from registry.jobs.worker import start_embedded_workers
from registry.serving.rest import bp as serving_bp
from registry.storage import open_storage
from registry.tfserving import ExportSyncer
from registry.web import bp as web_bp
from registry.webhooks.delivery import start_sender_thread

log = logging.getLogger(__name__)


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
    registry.new_exporter = lambda: ExportSyncer(registry.settings, registry.db, registry.storage)
    registry.new_label_service = lambda: _label_service(registry)
    app.extensions["registry"] = registry

    if not serving_only:
        app.register_blueprint(api_bp)
        app.register_blueprint(web_bp)
    app.register_blueprint(serving_bp)  # with TF Serving's /monitoring/prometheus/metrics
    register_error_handlers(app)
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
        checks = readiness(registry.db, registry.storage)
        ready = all(value == "ok" for value in checks.values())
        return {"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503

    limits.install(app, settings)  # last: after the access check identified the caller

    if start_workers and settings.embedded_workers > 0:
        start_embedded_workers(registry, settings.embedded_workers)
        start_sender_thread(registry)  # webhook deliveries, sent after commit like the jobs
    return app


def _label_service(registry: Registry):
    """The label service, made on the first label, predict or metadata request."""
    from registry.serving.service import LabelService  # numpy and TensorFlow's helpers: not in the web process

    return LabelService(registry.settings, registry.db, registry.storage, stop=registry.stop_workers)
