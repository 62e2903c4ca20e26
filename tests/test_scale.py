"""The scale path as it runs in production: several `registry worker` processes
against PostgreSQL and an S3 server, and S3 going away in the middle of a push.

The PostgreSQL tests need REGISTRY_TEST_DATABASE_URL (else they skip); S3 is
moto's standalone server over HTTP (the session's ``s3_server``).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests
import sqlalchemy as sa

from registry.db import Database
from registry.models import Job, ModelVersion
from registry.storage import blob_key
from tests.conftest import S3_BUCKET, _free_port, make_settings, start_live_server
from tests.helpers import frozen_form, push

pytestmark = pytest.mark.slow

WORKERS = 4
VERSIONS = 16  # four per worker: enough to share the queue and lose one mid-conversion
LEASE_SECONDS = 10


def _worker_env(pg_url: str, storage_url: str, home) -> dict:
    return dict(os.environ, REGISTRY_DATABASE_URL=pg_url, REGISTRY_STORAGE=storage_url, REGISTRY_HOME=str(home),
                REGISTRY_JOB_LEASE_SECONDS=str(LEASE_SECONDS), REGISTRY_WORKER_POLL_SECONDS="0.2",
                REGISTRY_CONVERT_MEMORY_MB="8192", TF_CPP_MIN_LOG_LEVEL="2")


def _statuses(db: Database) -> collections.Counter:
    with db.transaction() as session:
        return collections.Counter(session.scalars(sa.select(ModelVersion.status)))


def test_four_worker_processes_convert_sixteen_versions_exactly_once_and_survive_a_sigkill(
        tmp_path, pg_url, s3_server, models):
    """Four `registry migrate` processes create the registry together on an empty PostgreSQL
    database (concurrently: workers refuse a database without one), then four `registry worker`
    processes start together, convert 16 versions kept in S3, and one of them is SIGKILLed in the
    middle of a conversion."""
    storage_url = f"s3://{S3_BUCKET}/scale-{uuid.uuid4().hex[:8]}"
    env = _worker_env(pg_url, storage_url, tmp_path / "workers")
    migrations = [subprocess.Popen([sys.executable, "-m", "registry.cli", "migrate"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                  for _ in range(WORKERS)]
    for migration in migrations:
        _, err = migration.communicate(timeout=120)
        assert migration.returncode == 0, err[-2000:]
    logs = [tmp_path / f"worker-{i}.log" for i in range(WORKERS)]
    procs = [subprocess.Popen([sys.executable, "-m", "registry.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
             for log in logs]
    db = Database(pg_url)
    try:
        deadline = time.monotonic() + 120
        while sum("registry.jobs.worker: worker" in log.read_text(errors="replace") for log in logs) < WORKERS:
            dead = [p.returncode for p in procs if p.poll() is not None]
            assert not dead, f"a worker exited at start: {logs[0].read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the workers did not all start"
            time.sleep(0.2)

        from registry.app import create_app

        app = create_app(make_settings(tmp_path / "home", database_url=pg_url, storage_url=storage_url))
        client = app.test_client()
        for _ in range(VERSIONS):
            response = push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
            assert response.status_code == 202, response.get_json()

        victim_pid, victim_version = _wait_for_a_running_job(db, procs)
        os.killpg(victim_pid, signal.SIGKILL)
        killed = next(p for p in procs if p.pid == victim_pid)
        killed.wait()

        deadline = time.monotonic() + 600
        while (counts := _statuses(db))["ready"] + counts["failed"] < VERSIONS:
            assert time.monotonic() < deadline, f"conversions did not finish: {dict(counts)}"
            time.sleep(0.5)
        assert counts == {"ready": VERSIONS}, counts
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    # Every conversion that ran to the end was recorded once: the workers' logs
    # name each version exactly once, the killed one included (finished by another).
    finished = collections.Counter()
    for log in logs:
        for number in re.findall(r"\bcnn v(\d+): frozen", log.read_text(errors="replace")):
            finished[int(number)] += 1
    assert finished == {n: 1 for n in range(1, VERSIONS + 1)}
    with db.transaction() as session:
        attempts = dict(session.execute(
            sa.select(ModelVersion.version, Job.attempts).join(Job, Job.version_id == ModelVersion.id)
            .where(Job.kind == "convert")).all())
        owners = {row for row in session.scalars(sa.select(Job.lease_owner).where(Job.kind == "convert"))}
        digests = set(session.scalars(sa.select(ModelVersion.frozen_sha256)))
    assert attempts[victim_version] == 2  # the killed worker's claim, then the rescuer's
    assert all(a == 1 for v, a in attempts.items() if v != victim_version), attempts
    assert not any(f":{victim_pid}:" in (owner or "") for owner in owners)
    per_worker = [len(re.findall(r"\bcnn v\d+: frozen", log.read_text(errors="replace"))) for log in logs]
    assert sum(1 for n in per_worker if n) >= 3, per_worker  # the queue was shared, not drained by one
    for digest in digests:  # the frozen graphs live in S3 under their content keys
        s3_server.head_object(Bucket=S3_BUCKET, Key=f"{storage_url.split('/', 3)[3]}/{blob_key(digest)}")
    db.dispose()


def _wait_for_a_running_job(db: Database, procs: list[subprocess.Popen]) -> tuple[int, int]:
    """The pid of a worker that is converting right now, and the version it converts."""
    pids = {p.pid for p in procs}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with db.transaction() as session:
            rows = session.execute(
                sa.select(Job.lease_owner, ModelVersion.version)
                .join(ModelVersion, ModelVersion.id == Job.version_id)
                .where(Job.status == "running", Job.kind == "convert")).all()
        for owner, version in rows:
            pid = int(owner.split(":")[1])
            if pid in pids:
                time.sleep(0.5)  # let its converter child get going
                return pid, version
        time.sleep(0.05)
    pytest.fail("no worker claimed a job")


class TcpProxy:
    """A plain TCP relay in front of the S3 server that can be cut and restored,
    as when the object store becomes unreachable and comes back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = _free_port()
        self.forwarded = 0
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones.  Closing a socket another thread waits
        on does not wake that thread (it would go on accepting or relaying for a minute), so each is
        shut down first, then closed with a zero linger (a reset)."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    conn.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
                conn.close()
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, a is client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                if count:
                    self.forwarded += len(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_s3_going_away_mid_push_is_a_503_with_nothing_left_and_the_push_works_once_it_is_back(
        tmp_path, s3_server, monkeypatch, models):
    moto_port = int(s3_server.meta.endpoint_url.rsplit(":", 1)[1])
    proxy = TcpProxy(moto_port)
    proxy.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # fail fast once the store is gone
    prefix = f"fault-{uuid.uuid4().hex[:8]}"
    server, stop = start_live_server(make_settings(tmp_path / "home", storage_url=f"s3://{S3_BUCKET}/{prefix}"),
                                     workers=False)
    model = models["resource_meta"]
    checkpoint = {"meta": ("model.ckpt.meta", model.meta.read_bytes()),
                  "index": ("model.ckpt.index", model.index.read_bytes())}
    big_shard = ("model.ckpt.data-00000-of-00001", os.urandom(48 * 1024 * 1024))
    try:
        result: dict = {}

        def send() -> None:
            try:
                result["response"] = requests.post(f"{server.url}/api/v1/models/cnn/versions", timeout=120,
                                                   files={**checkpoint, "data": big_shard})
            except requests.RequestException as exc:
                result["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 60
        while proxy.forwarded < 12 * 1024 * 1024:  # at least one 8 MiB part is in S3's hands
            assert time.monotonic() < deadline and sender.is_alive(), result
            time.sleep(0.01)
        proxy.cut()
        sender.join(120)
        assert "error" not in result, f"the client got no answer: {result.get('error')}"
        response = result["response"]
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "storage_error", error
        assert "cannot reach the S3 endpoint" in error["message"], error
        assert "try again" in error["message"] and response.headers["Retry-After"] == "30", error

        with server.registry.db.transaction() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(ModelVersion)) == 0
        listed = s3_server.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}/sha256/")
        assert listed.get("KeyCount", 0) == 0, "a blob appeared under its final key"

        proxy.start()  # the store is back
        again = requests.post(f"{server.url}/api/v1/models/cnn/versions", timeout=120,
                              files={**checkpoint, "data": (model.data[0].name, model.data[0].read_bytes())})
        assert again.status_code == 202, again.text
        assert again.json()["version"] == 1  # the failed push gave its number back
    finally:
        stop()
        proxy.cut()
