"""Faults answer honestly: a full disk, a database that refuses writes and a config reload
naming server paths each get an answer that says what happened, never a 500 or a leak.

The disks are real: a small tmpfs for a full blob folder, an ext4 file system on a
loop device that the kernel turns read-only after an error (``errors=remount-ro``,
as a failing disk does) under a running server's SQLite database, and a fresh
PostgreSQL database set ``default_transaction_read_only``.  These need root; each
test skips saying why where the machine refuses.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from registry import catalog
from registry.models import Job, ModelVersion, utcnow
from registry.jobs.worker import Worker
from tests.conftest import make_settings, start_live_server
from tests.helpers import bearer, issue_tokens

MiB = 1024 * 1024


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


def _unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))  # still busy: detach now, freed once the last file closes


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (skips the test where mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        _unmount(path)


@contextlib.contextmanager
def ext4_on_loop(image: Path, path: Path, size_mb: int = 16):
    """A fresh ext4 file system on a loop device, mounted at ``path`` with errors=remount-ro;
    yields the file that turns it read-only when written (the kernel's own error path)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    with open(image, "wb") as handle:
        handle.truncate(size_mb * MiB)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    path.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {mounted.stderr.strip()}")
    try:
        device = Path(_run("findmnt", "-n", "-o", "SOURCE", str(path)).stdout.strip()).name
        trigger = Path(f"/sys/fs/ext4/{device}/trigger_fs_error")
        if not trigger.exists():
            pytest.skip(f"this kernel has no {trigger} to fail the file system with")
        yield trigger
    finally:
        _unmount(path)
        image.unlink(missing_ok=True)


def fail_disk(trigger: Path, database: Path) -> None:
    """Report an error on the file system, as a failing disk does, and wait until the kernel
    refuses writes there (probed with an unnamed file beside the database: opening the database
    itself here, in the server's process, would drop SQLite's locks when closed)."""
    trigger.write_text("test: the disk failed\n")
    deadline = time.monotonic() + 10
    while True:
        try:
            os.close(os.open(database.parent, os.O_TMPFILE | os.O_WRONLY, 0o600))
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
            return
        assert time.monotonic() < deadline, "the file system did not turn read-only"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def small_frozen(tmp_path_factory):
    from tests import tfmodels

    return tfmodels.build_frozen(tmp_path_factory.mktemp("small")).frozen_graph


def push_frozen(url: str, path: Path, name: str = "cnn", headers: dict | None = None) -> requests.Response:
    return requests.post(f"{url}/api/v1/models/{name}/versions", files={"frozen": (path.name, path.read_bytes())},
                         headers=headers, timeout=60)


def version_count(db) -> int:
    with db.transaction() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(ModelVersion))


def stored_files(root: Path) -> list[str]:
    """Every file under a blob folder: blobs under sha256/ and temporary uploads in .staging/."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_retry_later(response: requests.Response, code: str, *phrases: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers.get("Retry-After") == "30", response.headers
    error = response.json()["error"]
    assert error["code"] == code, error
    for phrase in phrases:
        assert phrase in error["message"], error


# -- a full blob folder ---------------------------------------------------------------------

def test_push_onto_a_full_disk_answers_503_keeps_nothing_and_a_small_push_works_after(tmp_path, small_frozen):
    home = tmp_path / "home"
    with small_tmpfs(home / "blobs", "4m") as blobs:
        server, stop = start_live_server(make_settings(home), workers=False)
        try:
            big = tmp_path / "big.pb"
            big.write_bytes(os.urandom(12 * MiB))  # streams into the blob folder before any check
            answer = push_frozen(server.url, big)
            assert_retry_later(answer, "storage_full", f"the blob folder {blobs} is full",
                               "No space left on device", "Nothing of this push was kept")
            assert stored_files(blobs) == [], "a temporary file or blob was left behind"
            assert version_count(server.registry.db) == 0

            small = push_frozen(server.url, small_frozen)
            assert small.status_code == 202, small.text
            assert small.json()["version"] == 1  # the refused push took no number
            assert len(stored_files(blobs)) == 1 and not list((blobs / ".staging").iterdir())
        finally:
            stop()


# -- a database that refuses writes --------------------------------------------------------

def test_database_on_a_disk_gone_read_only_fails_readyz_and_writes_answer_503(tmp_path, small_frozen):
    disk = tmp_path / "disk"
    with ext4_on_loop(tmp_path / "disk.img", disk) as trigger:
        database = disk / "registry.db"
        settings = make_settings(tmp_path / "home", database_url=f"sqlite:///{database}")
        server, stop = start_live_server(settings, workers=False)
        try:
            tokens = issue_tokens(server.registry.db)
            auth = bearer(tokens["admin"])
            assert push_frozen(server.url, small_frozen, headers=auth).status_code == 202
            assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
            blobs_before = stored_files(tmp_path / "home" / "blobs")

            fail_disk(trigger, database)

            ready = requests.get(f"{server.url}/readyz", timeout=10)
            assert ready.status_code == 503
            checks = ready.json()["checks"]
            assert checks["database"].startswith("error: the database refuses writes"), checks
            assert "Read-only file system" in checks["database"] and checks["storage"] == "ok", checks
            # reads go on, also with a token used for the first time (its last use cannot be recorded)
            assert requests.get(f"{server.url}/api/v1/models/cnn/versions/1", headers=auth,
                                timeout=10).status_code == 200
            first_use = requests.get(f"{server.url}/api/v1/models/cnn/versions/1", headers=bearer(tokens["read"]),
                                     timeout=10)
            assert first_use.status_code == 200, first_use.text

            # Every kind of write: the first ones meet connections opened before the disk failed.
            pushed = push_frozen(server.url, small_frozen, headers=auth)
            assert pushed.status_code == 503, pushed.text
            assert "the database refuses writes" in pushed.json()["error"]["message"]
            for _ in range(2):
                moved = requests.put(f"{server.url}/api/v1/models/cnn/aliases/stable", json={"version": 1},
                                     headers=auth, timeout=10)
                assert moved.status_code == 503, moved.text
                assert moved.json()["error"]["code"] in ("database_read_only", "database_disk_error")
                assert "the database refuses writes" in moved.json()["error"]["message"]
                assert moved.headers["Retry-After"] == "30"
            assert_retry_later(push_frozen(server.url, small_frozen, headers=auth), "database_read_only",
                               "the database refuses writes: it is read-only",
                               "attempt to write a readonly database", "Nothing was changed")
            edited = requests.patch(f"{server.url}/api/v1/models/cnn/versions/1", json={"description": "x"},
                                    headers=auth, timeout=10)
            assert_retry_later(edited, "database_read_only", "the database refuses writes")
            assert stored_files(tmp_path / "home" / "blobs") == blobs_before, "a refused push left a blob"
            assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
        finally:
            stop()


def test_postgres_set_read_only_fails_readyz_and_writes_answer_503_until_it_accepts_writes(
        tmp_path, pg_url, small_frozen):
    name = sa.make_url(pg_url).database
    admin = sa.create_engine(os.environ["REGISTRY_TEST_DATABASE_URL"], isolation_level="AUTOCOMMIT")

    def set_read_only(on: bool) -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = '
                                       + ("on" if on else "off")))
            if on:  # sessions keep the default they started with: end them, as a failover would
                connection.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                           "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})

    server, stop = start_live_server(make_settings(tmp_path / "home", database_url=pg_url), workers=False)
    try:
        tokens = issue_tokens(server.registry.db)
        auth = bearer(tokens["admin"])
        assert push_frozen(server.url, small_frozen, headers=auth).status_code == 202

        set_read_only(True)
        ready = requests.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith(
            "error: the database refuses writes: it is read-only (transaction_read_only is on"), ready.json()
        assert requests.get(f"{server.url}/api/v1/models/cnn", headers=auth, timeout=10).status_code == 200
        assert_retry_later(push_frozen(server.url, small_frozen, headers=auth), "database_read_only",
                           "the database refuses writes: it is read-only", "read-only transaction")
        moved = requests.put(f"{server.url}/api/v1/models/cnn/aliases/stable", json={"version": 1},
                             headers=auth, timeout=10)
        assert_retry_later(moved, "database_read_only", "the database refuses writes")
        assert version_count(server.registry.db) == 1

        # Writable again, with the sessions opened meanwhile still read-only: the server replaces
        # them as they refuse (a probe or a write), with no restart.
        set_read_only(False)
        probes = [requests.get(f"{server.url}/readyz", timeout=10).status_code for _ in range(6)]
        assert probes[-1] == 200, probes
        again = push_frozen(server.url, small_frozen, headers=auth)
        if again.status_code == 503:
            again = push_frozen(server.url, small_frozen, headers=auth)
        assert again.status_code == 202, again.text
        assert again.json()["version"] == 2
    finally:
        stop()
        with admin.connect() as connection:  # let conftest drop it
            connection.execute(sa.text(f'ALTER DATABASE "{name}" RESET default_transaction_read_only'))
        admin.dispose()


# -- a conversion that runs out of disk ----------------------------------------------------

@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
    """A checkpoint whose frozen graph and SavedModel are each about 1.4 MB of random weights."""
    from tests import tfmodels

    return tfmodels.build_checkpoint(tmp_path_factory.mktemp("wide"), resource=True, width=1024)


@contextlib.contextmanager
def pushed_on_small_disk(tmp_path: Path, checkpoint, room_left: float):
    """A registry whose blob folder is a 16 MB tmpfs, ``checkpoint`` pushed to it (not converted),
    then the folder filled until ``room_left`` times the checkpoint's weights are free.  Yields the
    registry, its converter worker, the folder and the files stored before the filler."""
    from registry.app import create_app
    from tests import tfmodels
    from tests.helpers import checkpoint_form, push

    home = tmp_path / "home"
    with small_tmpfs(home / "blobs", "16m") as blobs:
        settings = make_settings(home, job_max_attempts=2)
        app = create_app(settings)
        registry = app.extensions["registry"]
        try:
            pushed = push(app.test_client(), "wide", checkpoint_form(checkpoint, output_nodes=tfmodels.OUTPUT))
            assert pushed.status_code == 202, pushed.get_json()
            uploaded = stored_files(blobs)
            room = os.statvfs(blobs)
            weights = checkpoint.data[0].stat().st_size
            (blobs / "filler").write_bytes(b"\0" * (room.f_bavail * room.f_frsize - int(weights * room_left)))
            yield registry, Worker(settings, registry.db, registry.storage), blobs, uploaded
        finally:
            registry.db.dispose()


def retry_now(registry) -> None:
    """Make the retried job due at once."""
    with registry.db.transaction() as session:
        session.execute(sa.update(Job).values(run_after=utcnow() - timedelta(seconds=1)))


def test_conversion_that_runs_out_of_disk_leaves_no_orphan_blob_and_fails_naming_the_disk(
        tmp_path, wide_checkpoint):
    # No room for the frozen graph.
    with pushed_on_small_disk(tmp_path, wide_checkpoint, room_left=0.5) as (registry, worker, blobs, uploaded):
        uploaded = sorted(uploaded + ["filler"])
        assert worker.run_once() is True
        assert stored_files(blobs) == uploaded, "the stored frozen graph was left behind"
        record = catalog.get_version(registry.db, "wide", "1")
        assert record.status == "queued", record.status_message  # the disk may have room later: retried
        assert f"the blob folder {blobs} is full" in record.status_message

        retry_now(registry)
        assert worker.run_once() is True
        record = catalog.get_version(registry.db, "wide", "1")
        assert record.status == "failed"
        assert record.status_message.startswith("conversion failed 2 times; last error: the blob folder")
        assert f"{blobs} is full (No space left on device)" in record.status_message
        assert record.frozen_sha256 is None and record.file("saved_model") is None
        assert stored_files(blobs) == uploaded
        assert worker.run_once() is False  # not retried forever


def test_a_saved_model_that_runs_out_of_disk_is_retried_then_fails_and_the_version_stays_ready(
        tmp_path, wide_checkpoint):
    # Room for the frozen graph, not for the SavedModel after it.
    with pushed_on_small_disk(tmp_path, wide_checkpoint, room_left=1.5) as (registry, worker, blobs, _):
        assert worker.run_once() is True
        record = catalog.get_version(registry.db, "wide", "1")
        assert record.status == "ready", record.status_message
        stored = stored_files(blobs)
        assert worker.run_once() is True  # the SavedModel: no room
        record = catalog.get_version(registry.db, "wide", "1")
        assert (record.status, record.saved_model_state) == ("ready", "pending")
        assert f"will retry: the blob folder {blobs} is full" in record.saved_model_message
        retry_now(registry)
        assert worker.run_once() is True
        record = catalog.get_version(registry.db, "wide", "1")
        assert (record.status, record.saved_model_state) == ("ready", "failed")
        assert record.saved_model_message.startswith("the SavedModel build failed 2 times; last error: the blob")
        assert stored_files(blobs) == stored and record.file("saved_model") is None  # no orphan blob
        assert worker.run_once() is False


# -- a config reload naming server paths ---------------------------------------------------

@pytest.fixture
def reloading(tmp_path):
    """A ModelService stub on a label service whose export root is ``root`` (seen by TF
    Serving as /models), with a write token; and a folder outside the root holding a version."""
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc

    from registry.serving.grpc_server import start_grpc_server

    root = tmp_path / "serving"
    (root / "cnn" / "1").mkdir(parents=True)
    (root / "cnn" / "1" / "saved_model.pb").write_bytes(b"exported")
    outside = tmp_path / "secret"
    (outside / "1").mkdir(parents=True)
    (outside / "1" / "saved_model.pb").write_bytes(b"not ours")
    settings = make_settings(tmp_path / "home", serving_export_root=str(root), serving_base_path="/models")
    server, stop = start_live_server(settings, workers=False)
    grpc_server, port = start_grpc_server(server.registry, port=0)
    token = issue_tokens(server.registry.db)["write"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        yield stub, (("authorization", f"Bearer {token}"),), root, outside, server
    grpc_server.stop(0)
    stop()


def reload(stub, metadata, base_path: str, labels: dict[str, int] | None = None):
    """(status code name, details) of a reload of one model ``cnn`` at ``base_path``."""
    import grpc
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    model = request.config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = "cnn", base_path, "tensorflow"
    for label, number in (labels or {}).items():
        model.version_labels[label] = number
    try:
        stub.HandleReloadConfigRequest(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        return error.code().name, error.details()
    return "OK", ""


def test_reload_outside_the_export_root_is_refused_alike_whether_the_path_exists_or_not(reloading, tmp_path):
    stub, metadata, root, outside, server = reloading
    (root / "link").symlink_to(outside)
    answers = {}
    for path in (outside, tmp_path / "no-such-folder", Path("/etc"), Path("/no/such/folder"),
                 f"{root}/../secret", root / "link", "relative/path", "s3://bucket/models"):
        code, details = reload(stub, metadata, str(path), {"stable": 1})
        answers[str(path)] = (code, details.replace(repr(str(path)), "<base_path>"))
    assert len(set(answers.values())) == 1, answers  # nothing tells one path from another
    code, details = next(iter(answers.values()))
    assert code == "INVALID_ARGUMENT"
    assert "base_path <base_path> is outside this server's TensorFlow Serving export root" in details
    assert "saved_model.pb" not in details and "not available" not in details
    assert server.registry.serving_config is None  # nothing was taken


def test_reload_inside_the_export_root_checks_its_versions_on_disk(reloading, tmp_path):
    stub, metadata, root, outside, server = reloading
    assert reload(stub, metadata, str(root / "cnn"), {"stable": 1}) == ("OK", "")
    assert reload(stub, metadata, "/models/cnn", {"stable": 1}) == ("OK", "")  # where TF Serving sees the root
    assert reload(stub, metadata, "/models/./cnn/", {"stable": 1}) == ("OK", "")
    code, details = reload(stub, metadata, "/models/cnn", {"stable": 2})
    assert code == "FAILED_PRECONDITION" and "no /models/cnn/2/saved_model.pb" in details
    # a version folder that links out of the root is not a version
    (root / "cnn" / "3").symlink_to(outside / "1")
    code, details = reload(stub, metadata, str(root / "cnn"), {"stable": 3})
    assert code == "FAILED_PRECONDITION" and "is not available" in details
    code, _ = reload(stub, metadata, "/models/../etc", {"stable": 1})
    assert code == "INVALID_ARGUMENT"
