"""Shared fixtures: real TensorFlow checkpoints (built once per session), a
real SQLite database and blob folder per test, and real HTTP servers.

Databases are migrated once per session: the fixtures and ``start_live_server``
give each registry a copy of a template already at head (a SQLite file copied,
or ``CREATE DATABASE ... TEMPLATE`` on PostgreSQL), so that ``create_app``'s
migration only confirms the head revision.  Tests that call ``create_app``
themselves on a new home, and ``pg_url``, still start from nothing and run
every migration, as a first start in production does."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.config import Settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A live server's thread checks this often whether it was asked to stop (the
# standard library's 0.5 s would add half a second to every server's teardown).
SERVER_POLL_SECONDS = 0.02


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


_sqlite_template: Path | None = None


def sqlite_template() -> Path:
    """A SQLite database file migrated to head, made on first use and kept for the session."""
    global _sqlite_template
    if _sqlite_template is None:
        from registry.db import Database

        folder = Path(tempfile.mkdtemp(prefix="registry-test-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = folder / "registry.db"
        db = Database(f"sqlite:///{path}")
        try:
            db.upgrade()
        finally:
            db.dispose()  # the last connection closes: SQLite folds its WAL into the file
        assert not Path(f"{path}-wal").exists(), "the template's WAL was not checkpointed into the file"
        _sqlite_template = path
    return _sqlite_template


def seed_database(settings: Settings) -> Settings:
    """Give ``settings`` a migrated database if it names a SQLite file that does not exist yet
    (the embedded default): a copy of the session's template, with its owner-only mode."""
    import sqlalchemy as sa

    url = sa.make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:" \
            or url.database.startswith("file:"):
        return settings
    path = Path(url.database)
    if not path.exists():
        settings.ensure_home()
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sqlite_template(), path)
    return settings


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
def settings(tmp_path, database) -> Settings:
    home = tmp_path / "home"
    return make_settings(home, database_url=database) if database else make_settings(home)


@pytest.fixture
def app(settings):
    from registry.app import create_app

    app = create_app(seed_database(settings))
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
    """The app behind a real threaded HTTP server on a free port (on a copy of the migrated
    template when its database is a SQLite file that does not exist yet)."""
    from werkzeug.serving import make_server

    from registry.app import create_app

    app = create_app(seed_database(settings), start_workers=workers)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": SERVER_POLL_SECONDS},
                              daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(timeout=10)
        app.extensions["registry"].stop_workers.set()
        for worker in app.extensions["registry"].workers:
            worker.join(timeout=30)
        app.extensions["registry"].db.dispose()

    return LiveServer(f"http://127.0.0.1:{server.port}", app, settings), stop


@pytest.fixture
def live_server(tmp_path, database):
    """A real HTTP server without converter workers (uploads only)."""
    home = tmp_path / "live"
    settings = make_settings(home, database_url=database) if database else make_settings(home)
    server, stop = start_live_server(settings, workers=False)
    yield server
    stop()


@pytest.fixture(scope="module")
def converting_server(tmp_path_factory, module_database):
    """A real HTTP server with an embedded converter worker, shared by a module."""
    home = tmp_path_factory.mktemp("converting")
    settings = make_settings(home, embedded_workers=1, **({"database_url": module_database} if module_database else {}))
    server, stop = start_live_server(settings, workers=True)
    yield server
    stop()


PG_SKIP = "set REGISTRY_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test to run"
BACKENDS = ("sqlite", "postgresql")
# Database tests and end-to-end tests run on both engines: put this in the module's pytestmark.
BOTH_DATABASES = pytest.mark.parametrize("database", BACKENDS, indirect=True)
BOTH_DATABASES_PER_MODULE = pytest.mark.parametrize("module_database", BACKENDS, indirect=True, scope="module")


@contextmanager
def fresh_postgres_database(template: str | None = None):
    """A new PostgreSQL database, dropped afterwards (skips the test without
    REGISTRY_TEST_DATABASE_URL): empty, or a copy of the database named ``template``."""
    import sqlalchemy as sa

    base = os.environ.get("REGISTRY_TEST_DATABASE_URL")
    if not base:
        pytest.skip(PG_SKIP)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"registry_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    try:
        yield sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_template():
    """The name of a PostgreSQL database migrated to head, made once per session and dropped at
    its end (skips without REGISTRY_TEST_DATABASE_URL); ``database`` and ``module_database`` copy
    it.  Nothing may stay connected to it, or PostgreSQL refuses the copy."""
    import sqlalchemy as sa

    from registry.db import Database

    with fresh_postgres_database() as url:
        db = Database(url)
        try:
            db.upgrade()
        finally:
            db.dispose()
        yield sa.make_url(url).database


def _database(request):
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None  # the embedded default: a SQLite file in the test's home (seeded by the fixtures)
        return
    with fresh_postgres_database(template=request.getfixturevalue("postgres_template")) as url:
        yield url


@pytest.fixture
def database(request):
    """The database URL of a test's registry: None (SQLite, the default: the fixtures put a copy
    of the migrated template in its home) or, where a module asks for BOTH_DATABASES, a fresh
    PostgreSQL database copied from the migrated template."""
    yield from _database(request)


@pytest.fixture(scope="module")
def module_database(request):
    """Like ``database``, shared by a module's ``converting_server``."""
    yield from _database(request)


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test, dropped afterwards
    (needs REGISTRY_TEST_DATABASE_URL, else the test is skipped)."""
    with fresh_postgres_database() as url:
        yield url


S3_BUCKET = "registry-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server over HTTP on a free port, with boto3 pointed at
    it through the standard AWS environment variables; yields a boto3 client."""
    pytest.importorskip("moto", reason="moto[server] is not installed: pip install 'moto[server]>=5'")
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start (exit code {proc.poll()})")
                time.sleep(0.1)
        nowhere = str(tmp_path_factory.mktemp("aws") / "none")
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_CONFIG_FILE", nowhere)
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
            client = boto3.session.Session().client("s3")
            assert client.meta.endpoint_url == endpoint  # boto3 honours AWS_ENDPOINT_URL itself
            client.create_bucket(Bucket=S3_BUCKET)
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
