"""Garbage collection: unreferenced blobs and stale temporary uploads go, after a
grace period; nothing a version refers to (or a push in flight) is ever taken."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import pytest

from registry import catalog
from registry.jobs.gc import collect_garbage
from registry.models import utcnow
from tests.helpers import frozen_form, push


def push_frozen(client, models, labels: bytes | None = None) -> dict:
    form = frozen_form(models["frozen"].frozen_graph)
    if labels is not None:
        form["labels"] = (io.BytesIO(labels), "labels.txt")
    response = push(client, "cnn", form)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def test_gc_frees_the_blobs_of_a_deleted_version_and_keeps_the_rest(client, registry, models):
    kept = push_frozen(client, models)
    gone = push_frozen(client, models, labels=b"cat\ndog\n")
    labels = gone["files"][1]
    catalog.delete_version(registry.db, "cnn", "2")
    dry = collect_garbage(registry.db, registry.storage, grace_seconds=0, dry_run=True)
    assert (dry.blobs_deleted, dry.blob_bytes) == (1, labels["size"])
    assert registry.storage.exists(labels["sha256"])
    report = collect_garbage(registry.db, registry.storage, grace_seconds=0)
    assert (report.blobs_deleted, report.blob_bytes, report.missing) == (1, labels["size"], [])
    assert not registry.storage.exists(labels["sha256"])
    assert registry.storage.exists(kept["files"][0]["sha256"])  # the frozen graph both versions shared
    assert collect_garbage(registry.db, registry.storage, grace_seconds=0).blobs_deleted == 0


def test_an_unreferenced_blob_younger_than_the_grace_period_is_kept(registry):
    # What a push looks like between publishing its blobs and committing its version.
    ref = registry.storage.put_stream(io.BytesIO(b"published, version not committed yet"))
    report = collect_garbage(registry.db, registry.storage, grace_seconds=3600)
    assert (report.blobs_deleted, report.kept_young) == (0, 1)
    assert registry.storage.exists(ref.sha256)
    later = collect_garbage(registry.db, registry.storage, grace_seconds=3600, now=utcnow() + timedelta(hours=2))
    assert later.blobs_deleted == 1 and not registry.storage.exists(ref.sha256)


def test_re_pushing_bytes_of_a_deleted_version_makes_them_young_again(client, registry, models):
    first = push_frozen(client, models)
    catalog.delete_version(registry.db, "cnn", "1")
    digest = first["files"][0]["sha256"]
    path = registry.storage.path(digest)
    os.utime(path, (time.time() - 7200, time.time() - 7200))  # deleted long ago
    registry.storage.put_stream(io.BytesIO(models["frozen"].frozen_graph.read_bytes()))  # a new push publishes
    report = collect_garbage(registry.db, registry.storage, grace_seconds=3600)
    assert report.blobs_deleted == 0 and registry.storage.exists(digest)


def test_stale_temporary_uploads_are_removed_and_fresh_ones_kept(registry):
    stale = registry.storage.writer()
    stale.write(b"killed mid-upload" * 100)
    fresh = registry.storage.writer()
    fresh.write(b"still arriving")
    (stale_file,) = [p for p in registry.storage.staging.iterdir() if p.name == stale._tmp_path.name]
    os.utime(stale_file, (time.time() - 7200, time.time() - 7200))
    report = collect_garbage(registry.db, registry.storage, grace_seconds=3600)
    assert report.temporary_deleted == 1
    assert not stale_file.exists() and fresh._tmp_path.exists()
    fresh.write(b" and finishes")
    assert registry.storage.exists(fresh.finish().sha256)
    stale.abort()


def test_gc_on_s3_frees_deleted_blobs_and_aborts_abandoned_multipart_uploads(s3_server, tmp_path, models):
    from registry.app import create_app
    from registry.storage.s3 import PART_SIZE
    from tests.conftest import S3_BUCKET, make_settings

    app = create_app(make_settings(tmp_path / "home", storage_url=f"s3://{S3_BUCKET}/gc-{uuid.uuid4().hex[:8]}"))
    registry = app.extensions["registry"]
    client = app.test_client()
    gone = push_frozen(client, models, labels=b"a\nb\n")
    catalog.delete_version(registry.db, "cnn", "1")
    killed = registry.storage.writer()
    killed.write(b"k" * (PART_SIZE + 1))  # a push whose server died after the first part
    report = collect_garbage(registry.db, registry.storage, grace_seconds=0)
    assert report.blobs_deleted == 2 and report.temporary_deleted == 1
    assert [f for f in gone["files"] if registry.storage.exists(f["sha256"])] == []
    assert list(registry.storage.iter_temporary()) == []
    app.extensions["registry"].db.dispose()


@pytest.mark.slow
def test_registry_gc_command_reports_what_it_freed_and_dry_run_removes_nothing(tmp_path, models):
    from registry.app import create_app
    from tests.conftest import make_settings

    settings = make_settings(tmp_path / "home")
    app = create_app(settings)
    client = app.test_client()
    push_frozen(client, models, labels=b"x\ny\n")
    catalog.delete_version(app.extensions["registry"].db, "cnn", "1")
    env = dict(os.environ, REGISTRY_HOME=str(settings.home), REGISTRY_GC_GRACE_SECONDS="0")

    def gc(*args):
        return subprocess.run([sys.executable, "-m", "registry.cli", "gc", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    size = models["frozen"].frozen_graph.stat().st_size + 4
    dry = gc("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would free 2 unreferenced blob(s), {size:,} bytes" in dry.stdout
    assert len(list(app.extensions["registry"].storage.iter_blobs())) == 2
    done = gc()
    assert f"freed 2 unreferenced blob(s), {size:,} bytes" in done.stdout
    assert list(app.extensions["registry"].storage.iter_blobs()) == []
    assert "freed 0 unreferenced blob(s)" in gc("--grace", "0").stdout


def test_workers_collect_garbage_periodically(tmp_path, models):
    from registry.app import create_app
    from registry.jobs.worker import Worker
    from tests.conftest import make_settings

    settings = make_settings(tmp_path / "home", gc_interval_seconds=0.2, gc_grace_seconds=0)
    app = create_app(settings)
    registry = app.extensions["registry"]
    orphan = registry.storage.put_stream(io.BytesIO(b"left by a deleted version"))
    stop = threading.Event()
    thread = threading.Thread(target=Worker(settings, registry.db, registry.storage).run_forever, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while registry.storage.exists(orphan.sha256):
            assert time.monotonic() < deadline, "the worker never collected the orphan blob"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
