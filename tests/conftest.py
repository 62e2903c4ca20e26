"""Shared fixtures: real TensorFlow checkpoints (built once per session), a
real SQLite database and blob folder per test, and real HTTP servers."""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.config import Settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_settings(home: Path, **overrides) -> Settings:
    """Embedded-default settings under ``home``, independent of the caller's environment."""
    values = dict(
        home=home,
        database_url=f"sqlite:///{home / 'registry.db'}",
        storage_url=(home / "blobs").as_uri(),
        server_url="http://127.0.0.1:0",
        embedded_workers=0,
        job_lease_seconds=30.0,
        job_max_attempts=3,
        worker_poll_seconds=0.2,
        convert_timeout_seconds=120.0,
        convert_memory_mb=8192,
        verify_tolerance=1e-5,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Checkpoints and graphs of every kind the converter must handle."""
    from tests import tfmodels

    root = tmp_path_factory.mktemp("tfmodels")

    def renamed(variables):
        return {f"renamed/{v.op.name}": v for v in variables}

    return {
        "resource_meta": tfmodels.build_checkpoint(root / "resource_meta", resource=True),
        "legacy_meta": tfmodels.build_checkpoint(root / "legacy_meta", resource=False, seed=2),
        "resource_graph": tfmodels.build_checkpoint(root / "resource_graph", resource=True, seed=3,
                                                    inference_graph="binary", dropout=True),
        "legacy_text": tfmodels.build_checkpoint(root / "legacy_text", resource=False, seed=4,
                                                 inference_graph="text", dropout=True),
        "sharded": tfmodels.build_checkpoint(root / "sharded", resource=True, shards=2, seed=5,
                                             inference_graph="binary"),
        "renamed_keys": tfmodels.build_checkpoint(root / "renamed_keys", resource=True, seed=6,
                                                  saver_names=renamed),
        "wide": tfmodels.build_checkpoint(root / "wide", resource=True, seed=7, width=6,
                                          inference_graph="binary"),
        "dropout_meta": tfmodels.build_checkpoint(root / "dropout_meta", resource=True, dropout=True),
        "frozen": tfmodels.build_frozen(root / "frozen"),
        "embedding": tfmodels.build_embedding(root / "embedding"),
    }


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path / "home")


@pytest.fixture
def app(settings):
    from registry.app import create_app

    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["registry"].stop_workers.set()
    app.extensions["registry"].db.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def registry(app):
    return app.extensions["registry"]


@dataclass
class LiveServer:
    url: str
    app: object
    settings: Settings

    @property
    def registry(self):
        return self.app.extensions["registry"]


def start_live_server(settings: Settings, *, workers: bool) -> tuple[LiveServer, callable]:
    """The app behind a real threaded HTTP server on a free port."""
    from werkzeug.serving import make_server

    from registry.app import create_app

    app = create_app(settings, start_workers=workers)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        app.extensions["registry"].stop_workers.set()
        for worker in app.extensions["registry"].workers:
            worker.join(timeout=30)
        app.extensions["registry"].db.dispose()

    return LiveServer(f"http://127.0.0.1:{server.port}", app, settings), stop


@pytest.fixture
def live_server(tmp_path):
    """A real HTTP server without converter workers (uploads only)."""
    server, stop = start_live_server(make_settings(tmp_path / "live"), workers=False)
    yield server
    stop()


@pytest.fixture(scope="module")
def converting_server(tmp_path_factory):
    """A real HTTP server with an embedded converter worker, shared by a module."""
    settings = make_settings(tmp_path_factory.mktemp("converting"), embedded_workers=1)
    server, stop = start_live_server(settings, workers=True)
    yield server
    stop()


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test, dropped afterwards
    (needs REGISTRY_TEST_DATABASE_URL, else the test is skipped)."""
    import sqlalchemy as sa

    base = os.environ.get("REGISTRY_TEST_DATABASE_URL")
    if not base:
        pytest.skip("set REGISTRY_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test to run")
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"registry_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()
