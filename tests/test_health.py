"""/healthz says the process is up; /readyz (and `registry check`) says whether the
database and blob storage answer, and which one does not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from registry.db import Database


def test_readyz_answers_ready_when_database_and_storage_answer(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}


def test_readyz_is_503_naming_the_storage_when_the_blob_folder_is_gone(client, registry):
    shutil.rmtree(registry.storage.root)
    answer = client.get("/readyz")
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["status"] == "unavailable" and body["checks"]["database"] == "ok"
    assert body["checks"]["storage"].startswith("error:") and str(registry.storage.root) in body["checks"]["storage"]
    assert client.get("/healthz").status_code == 200  # alive, just not ready


def test_readyz_is_503_naming_the_database_when_it_cannot_be_reached(client, registry, tmp_path):
    registry.db.dispose()
    registry.db = Database(f"sqlite:///{tmp_path / 'no-such-folder' / 'registry.db'}")
    answer = client.get("/readyz")
    assert answer.status_code == 503
    checks = answer.get_json()["checks"]
    assert checks["database"].startswith("error: OperationalError") and checks["storage"] == "ok"


def test_readyz_on_s3_is_503_when_the_bucket_is_gone(s3_server, tmp_path):
    from registry.app import create_app
    from tests.conftest import make_settings

    bucket = f"ready-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(Bucket=bucket)
    app = create_app(make_settings(tmp_path / "home", storage_url=f"s3://{bucket}/blobs"))
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    s3_server.delete_bucket(Bucket=bucket)
    answer = client.get("/readyz")
    assert answer.status_code == 503 and bucket in answer.get_json()["checks"]["storage"]
    app.extensions["registry"].db.dispose()


def test_label_service_alone_has_readyz_too(settings):
    from registry.app import create_app

    app = create_app(settings, serving_only=True)
    assert app.test_client().get("/readyz").get_json()["status"] == "ready"
    app.extensions["registry"].db.dispose()


def test_registry_check_exits_zero_when_ready_and_one_naming_what_failed(tmp_path, s3_server):
    env = dict(os.environ, REGISTRY_HOME=str(tmp_path / "home"))
    env.pop("REGISTRY_STORAGE", None)
    env.pop("REGISTRY_DATABASE_URL", None)
    subprocess.run([sys.executable, "-m", "registry.cli", "migrate"], env=env, check=True, capture_output=True)
    ok = subprocess.run([sys.executable, "-m", "registry.cli", "check"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "database: ok" in ok.stdout and "storage: ok" in ok.stdout
    env["REGISTRY_STORAGE"] = f"s3://missing-{uuid.uuid4().hex[:8]}"
    bad = subprocess.run([sys.executable, "-m", "registry.cli", "check"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "storage: error" in bad.stdout and "does not exist" in bad.stdout


def test_readyz_keeps_sqlites_locks_so_another_process_cannot_pull_the_wal_from_under_the_server(tmp_path):
    """/readyz checks that the SQLite file could be written without opening it: closing a descriptor of
    the file in the server would drop SQLite's locks, and the next CLI command to close the database would
    checkpoint it and delete the -wal file the server still writes to (its writes then lost)."""
    import requests

    from tests.conftest import make_settings, start_live_server
    from tests.helpers import bearer

    home = tmp_path / "home"
    server, stop = start_live_server(make_settings(home), workers=False)
    cli = [str(Path(sys.executable).with_name("registry")), "token", "create", "--scope", "admin"]
    env = {"REGISTRY_HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    try:
        assert requests.get(f"{server.url}/readyz", timeout=30).status_code == 200
        made = subprocess.run(cli + ["--name", "alice"], env=env, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        alice = next(word for word in made.stdout.split() if word.startswith("rgt_"))
        # the server sees what the command wrote, and its own writes go to the files other processes read
        seen = requests.get(f"{server.url}/api/v1/tokens", headers=bearer(alice), timeout=30)
        assert seen.status_code == 200, seen.text
        posted = requests.post(f"{server.url}/api/v1/tokens", json={"name": "bob", "scope": "read"},
                               headers=bearer(alice), timeout=30)
        assert posted.status_code == 201, posted.text
        gone = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.islink(f"/proc/self/fd/{fd}")]
        assert not [link for link in gone if "registry.db" in link and link.endswith("(deleted)")]
    finally:
        stop()
    listed = subprocess.run([cli[0], "token", "ls"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "alice" in listed.stdout and "bob" in listed.stdout  # the server's write outlived it
