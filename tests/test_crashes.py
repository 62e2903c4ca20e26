"""Processes SIGKILLed at the worst moment, several times over: a converter worker
mid-conversion, a server mid-upload, a label service mid-request.  Afterwards a
fresh worker finishes what was left, and the registry is consistent: every
version ready or failed with a reason, no version number repeated or lost, no
partial blob referenced, and `registry gc` leaves storage equal to what the
database refers to (every referenced blob present with its sha256)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from registry.db import Database
from registry.models import ModelVersion, RegisteredModel
from registry.storage import open_storage
from tests.conftest import make_settings
from tests.helpers import checkpoint_form, push

pytestmark = pytest.mark.slow
ROUNDS = 2  # each kill lands somewhere else in the work; two show it is not a one-off
LEASE = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Crashes:
    """A registry home, and `registry` processes started on it and SIGKILLed."""

    def __init__(self, root: Path) -> None:
        self.settings = make_settings(root / "home", job_lease_seconds=float(LEASE))
        self.tmp = root / "tmp"  # the workers' conversion folders (and their children's command lines)
        self.tmp.mkdir()
        self.logs = root / "logs"
        self.logs.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.env.update(REGISTRY_HOME=str(self.settings.home), REGISTRY_DEMO="0", TMPDIR=str(self.tmp),
                        REGISTRY_JOB_LEASE_SECONDS=str(LEASE), REGISTRY_WORKER_POLL_SECONDS="0.2",
                        REGISTRY_GC_INTERVAL_SECONDS="0", REGISTRY_GC_GRACE_SECONDS="0",
                        REGISTRY_CONVERT_MEMORY_MB="8192", TF_CPP_MIN_LOG_LEVEL="2")
        self.processes: list[subprocess.Popen] = []

    def start(self, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{args[0]}-{len(self.processes)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "registry.cli", *args], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.processes.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "registry.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def serve(self, *args: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        proc = self.start(*args, "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return proc, url
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, f"{args[0]} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{args[0]} did not start"
            time.sleep(0.1)

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def converter_children(self) -> list[int]:
        """Converter children still running for this registry: cold ones name their request, which lies
        under our TMPDIR; warm ones (and the process each forks for its job) name the worker they serve."""
        ours = [f"--warm\0{proc.pid}\0" for proc in self.processes]
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "registry.converter.child" in cmdline and (str(self.tmp) in cmdline
                                                          or any(w in cmdline for w in ours)):
                found.append(int(entry.name))
        return found

    def statuses(self, db: Database) -> dict[tuple[str, int], tuple[str, str]]:
        with db.transaction() as session:
            rows = session.execute(
                sa.select(RegisteredModel.name, ModelVersion.version, ModelVersion.status,
                          ModelVersion.status_message).join(RegisteredModel))
            return {(name, number): (status, message) for name, number, status, message in rows}

    def assert_consistent(self, expected: dict[str, list[int]]) -> None:
        """A fresh worker finishes every job; then the database and storage agree."""
        time.sleep(LEASE + 0.5)  # leases of killed workers expire
        done = self.run("worker", "--once")
        assert done.returncode == 0, done.stderr
        db = Database(self.settings.database_url)
        try:
            statuses = self.statuses(db)
            numbers: dict[str, list[int]] = {}
            for (name, number), (status, message) in sorted(statuses.items()):
                numbers.setdefault(name, []).append(number)
                assert status in ("ready", "failed"), f"{name} v{number} is still {status}: {message}"
                assert status == "ready" or message, f"{name} v{number} failed without a reason"
            assert numbers == expected  # none lost, none repeated
            gc = self.run("gc", "--grace", "0")
            assert gc.returncode == 0, gc.stdout + gc.stderr  # exit 1 would mean a referenced blob is missing
            storage = open_storage(self.settings.storage_url)
            from registry.catalog import referenced_digests

            referenced = referenced_digests(db)
            assert set(storage.iter_digests()) == referenced
            for digest in referenced:
                with storage.open(digest) as stream:
                    hasher = hashlib.sha256()
                    while chunk := stream.read(1 << 20):
                        hasher.update(chunk)
                assert hasher.hexdigest() == digest
            assert list(storage.iter_temporary()) == []
            assert [p.name for p in self.tmp.iterdir() if p.name.startswith("registry-convert-")] == []
        finally:
            db.dispose()


@pytest.fixture
def crashes(tmp_path):
    crashes = Crashes(tmp_path)
    yield crashes
    crashes.stop_all()


def in_process_app(crashes: Crashes):
    from registry.app import create_app

    return create_app(crashes.settings)


def test_worker_killed_mid_conversion_again_and_again(crashes, models):
    app = in_process_app(crashes)
    client = app.test_client()
    model = models["resource_graph"]
    for _ in range(ROUNDS):
        assert push(client, "cnn", checkpoint_form(model, graph=True, output_nodes=model.output)).status_code == 202
    for round_ in range(ROUNDS):
        worker = crashes.start("worker")
        deadline = time.monotonic() + 60
        while not any(s == "converting" for s, _ in crashes.statuses(app.extensions["registry"].db).values()):
            assert time.monotonic() < deadline, "the worker never claimed a job"
            time.sleep(0.05)
        time.sleep((0.2, 1.5, 3.0)[round_])  # materialising, then freezing (or importing TensorFlow, if cold)
        crashes.kill(worker)
        deadline = time.monotonic() + 5
        while crashes.converter_children():  # the conversion dies with its worker
            assert time.monotonic() < deadline, "a conversion outlived its killed worker"
            time.sleep(0.1)
    crashes.assert_consistent({"cnn": list(range(1, ROUNDS + 1))})
    assert {s for s, _ in crashes.statuses(app.extensions["registry"].db).values()} == {"ready"}
    app.extensions["registry"].db.dispose()


def slow_checkpoint_push(url: str, model, data_bytes: int, sent: list[int]) -> None:
    """Stream a push whose data shard is big and arrives slowly, counting what was sent."""
    boundary = "crashboundary"

    def part(field: str, filename: str) -> bytes:
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()

    def body():
        yield part("meta", "model.ckpt.meta") + model.meta.read_bytes() + b"\r\n"
        yield part("index", "model.ckpt.index") + model.index.read_bytes() + b"\r\n"
        yield part("data", "model.ckpt.data-00000-of-00001")
        chunk = os.urandom(1 << 20)
        for _ in range(data_bytes >> 20):
            sent[0] += len(chunk)
            yield chunk
            time.sleep(0.02)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        requests.post(f"{url}/api/v1/models/cnn/versions", data=body(), timeout=60,
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    except requests.RequestException:
        pass  # the server died under it: expected


def test_server_killed_mid_upload_again_and_again(crashes, models):
    frozen = models["frozen"].frozen_graph
    staging = crashes.settings.home / "blobs" / ".staging"
    for _ in range(ROUNDS):
        server, url = crashes.serve("serve", "--workers", "0", "--no-demo")
        good = requests.post(f"{url}/api/v1/models/cnn/versions", files={"frozen": ("f.pb", frozen.read_bytes())},
                             timeout=30)
        assert good.status_code == 202, good.text
        sent = [0]
        upload = threading.Thread(target=slow_checkpoint_push, args=(url, models["resource_meta"], 256 << 20, sent))
        upload.start()
        deadline = time.monotonic() + 60
        while sum(p.stat().st_size for p in staging.iterdir()) < 4 << 20:  # a few MiB are in storage
            assert time.monotonic() < deadline and upload.is_alive(), "the upload never got going"
            time.sleep(0.02)
        crashes.kill(server)
        upload.join(timeout=60)
        assert sent[0] < 256 << 20  # it really was cut off mid-way
    assert any(staging.iterdir())  # the killed uploads' temporary files, for gc
    server, url = crashes.serve("serve", "--workers", "0", "--no-demo")
    last = requests.post(f"{url}/api/v1/models/cnn/versions", files={"frozen": ("f.pb", frozen.read_bytes())},
                         timeout=30)
    assert last.json()["version"] == ROUNDS + 1  # killed pushes took no number
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    crashes.assert_consistent({"cnn": list(range(1, ROUNDS + 2))})


def test_label_service_killed_mid_request_again_and_again(crashes, models, tmp_path):
    from registry.jobs.worker import Worker
    from tests import images as test_images

    app = in_process_app(crashes)
    registry = app.extensions["registry"]
    model = models["resource_graph"]
    push(app.test_client(), "cnn", checkpoint_form(model, graph=True, output_nodes=model.output,
                                                    labels=b"cat\ndog\nfox\nowl\nyak\n"))
    Worker(crashes.settings, registry.db, registry.storage).run_once()
    picture = test_images.write_images(tmp_path / "images")["photo.jpg"].read_bytes()

    def label(url: str, answers: list) -> None:
        try:
            answers.append(requests.post(f"{url}/v1/models/cnn:label", data=picture, timeout=120,
                                         headers={"Content-Type": "image/jpeg"}))
        except requests.RequestException as exc:
            answers.append(exc)

    for round_ in range(ROUNDS):
        server, url = crashes.serve("label-serve", "--no-grpc")
        answers: list = []
        request = threading.Thread(target=label, args=(url, answers))
        request.start()
        time.sleep((0.3, 1.0, 2.0)[round_])  # resolving, importing TensorFlow, loading the graph
        crashes.kill(server)
        request.join(timeout=60)
        assert len(answers) == 1 and isinstance(answers[0], requests.RequestException)
    server, url = crashes.serve("label-serve", "--no-grpc")
    answers = []
    label(url, answers)
    assert answers[0].status_code == 200 and answers[0].json()["version"] == 1
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    crashes.assert_consistent({"cnn": [1]})
    registry.db.dispose()


def test_worker_killed_mid_comparison_the_job_is_taken_again_and_finishes(crashes, models, tmp_path):
    """A comparison on a stored set runs as a job; its worker is SIGKILLed while it runs (some inputs
    done); once the lease expires another worker takes the job and the report ends done, every input
    counted once."""
    import dataclasses
    import zipfile

    import tensorflow as tf

    from registry.app import create_app
    from registry.evaluation import sets
    from tests import images as test_images
    from tests import tfmodels

    crashes.settings = dataclasses.replace(crashes.settings, compare_sync_max=4, compare_max_images=1)
    crashes.env.update(REGISTRY_COMPARE_SYNC_MAX="4", REGISTRY_COMPARE_MAX_IMAGES="1")
    app = create_app(crashes.settings)
    client, registry = app.test_client(), app.extensions["registry"]
    try:
        labels = tmp_path / "labels.txt"
        labels.write_text("".join(f"class {i}\n" for i in range(5)))
        for seed in (3, 11):
            frozen = tfmodels.build_frozen(tmp_path / f"cnn{seed}", seed=seed).frozen_graph
            form = {"frozen": (frozen.open("rb"), "frozen.pb"), "labels": (labels.open("rb"), "labels.txt"),
                    "output_nodes": tfmodels.OUTPUT}
            assert push(client, "cnn", form).status_code == 202
        converted = crashes.run("worker", "--once")
        assert converted.returncode == 0, converted.stderr
        count = 300
        archive = tmp_path / "set.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for i in range(count):
                zipped.writestr(f"img{i:03d}.png", tf.io.encode_png(test_images.pixels(i, 9, 9)).numpy())
        sets.add_file(registry.db, registry.storage, "cnn", "holdout", archive)

        for attempt in range(3):  # a kill that lands after the job finished proves nothing: go again
            answer = client.post("/v1/models/cnn:compare", json={"versions": ["1", "2"], "eval_set": "holdout"})
            assert answer.status_code == 202, answer.get_json()
            report_id = answer.get_json()["report"]
            worker = crashes.start("worker")
            deadline = time.monotonic() + 120
            while True:
                state = client.get(f"/api/v1/models/cnn/comparisons/{report_id}").get_json()
                if state["status"] == "running" and 0 < state["done"] < count or state["status"] == "done":
                    break
                assert time.monotonic() < deadline, f"the worker never ran the comparison: {state}"
                time.sleep(0.02)
            crashes.kill(worker)
            killed_at = client.get(f"/api/v1/models/cnn/comparisons/{report_id}").get_json()
            if killed_at["status"] != "done":
                break
        assert killed_at["status"] == "running" and killed_at["done"] < count, killed_at
        time.sleep(LEASE + 0.5)  # the killed worker's lease expires
        finished = crashes.run("worker", "--once")
        assert finished.returncode == 0, finished.stderr
        report = client.get(f"/api/v1/models/cnn/comparisons/{report_id}").get_json()
        assert report["status"] == "done", report
        assert report["done"] == report["total"] == count and report["report"]["inputs"] == count
        pair = report["report"]["agreement"]["pairs"][0]
        assert 0 <= pair["top1_agreement"] <= 1
    finally:
        close(registry)


def close(registry) -> None:
    """Stop what an in-process app started: its label service's inference workers, its database pool."""
    registry.stop_workers.set()
    if registry._labels is not None:
        registry._labels.close()
    registry.db.dispose()
