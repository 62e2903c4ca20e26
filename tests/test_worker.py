"""The job queue and converter worker: leases, retries, crashes and limits."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from registry import jobs
from registry.models import Job, utcnow
from registry.jobs.worker import Worker
from tests.conftest import BOTH_DATABASES
from tests.helpers import checkpoint_form, frozen_form, push

pytestmark = [pytest.mark.slow, BOTH_DATABASES]


def version(client, name: str, number: int = 1) -> dict:
    return client.get(f"/api/v1/models/{name}/versions/{number}").get_json()


def expire_leases(registry) -> None:
    with registry.db.transaction() as session:
        session.execute(sa.update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_worker_converts_a_queued_version(client, registry, models):
    push(client, "cnn", checkpoint_form(models["resource_meta"]))
    assert Worker(registry.settings, registry.db, registry.storage).run_once() is True
    record = version(client, "cnn")
    assert record["status"] == "ready", record["status_message"]
    assert "verified" in record["status_message"]
    assert client.get("/api/v1/models/cnn/versions/latest").get_json()["version"] == 1


def test_two_workers_never_claim_the_same_job(client, registry, models):
    for _ in range(2):
        push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
    first = jobs.claim(registry.db, "worker-a", 60)
    second = jobs.claim(registry.db, "worker-b", 60)
    third = jobs.claim(registry.db, "worker-c", 60)
    assert first.version_id != second.version_id
    assert third is None
    assert version(client, "cnn", 1)["status"] == "converting"


def test_expired_lease_makes_the_job_claimable_again_and_the_old_owner_cannot_finish(client, registry, models):
    push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
    lost = jobs.claim(registry.db, "dead-worker", 60)
    assert jobs.claim(registry.db, "other", 60) is None
    expire_leases(registry)
    taken = jobs.claim(registry.db, "other", 60)
    assert (taken.version_id, taken.attempt) == (lost.version_id, 2)
    assert jobs.heartbeat(registry.db, lost, 60) is False
    assert jobs.finish(registry.db, lost, ready=False, message="stale", fields={}) is False
    assert version(client, "cnn")["status"] == "converting"


def test_job_interrupted_on_every_attempt_fails_with_its_reason(client, registry, models):
    push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
    for _ in range(registry.settings.job_max_attempts):
        assert jobs.claim(registry.db, "crashy", 60) is not None
        expire_leases(registry)
    assert jobs.claim(registry.db, "crashy", 60) is None
    record = version(client, "cnn")
    assert record["status"] == "failed"
    assert "interrupted 3 times" in record["status_message"]


def test_retryable_failure_is_retried_then_recorded(client, registry, models):
    push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
    job = jobs.claim(registry.db, "w", 60)
    assert jobs.retry_later(registry.db, job, "storage unreachable", backoff=lambda attempt: 0) is True
    assert version(client, "cnn")["status"] == "queued"
    assert "storage unreachable" in version(client, "cnn")["status_message"]
    for _ in range(registry.settings.job_max_attempts - 1):
        job = jobs.claim(registry.db, "w", 60)
        jobs.retry_later(registry.db, job, "storage unreachable", backoff=lambda attempt: 0)
    record = version(client, "cnn")
    assert record["status"] == "failed"
    assert "failed 3 times; last error: storage unreachable" in record["status_message"]


def test_queued_job_survives_a_restart_of_the_server(settings, models):
    from registry.app import create_app

    first = create_app(settings)
    push(first.test_client(), "cnn", frozen_form(models["frozen"].frozen_graph))
    first.extensions["registry"].db.dispose()
    second = create_app(settings)  # a new process would see the same database
    registry = second.extensions["registry"]
    assert Worker(settings, registry.db, registry.storage).run_once() is True
    assert version(second.test_client(), "cnn")["status"] == "ready"


def test_worker_killed_mid_job_loses_its_lease_and_the_job_is_done_by_another(settings, models):
    """A real `registry worker` process is SIGKILLed while converting."""
    from registry.app import create_app

    settings = dataclasses.replace(settings, job_lease_seconds=3.0)
    app = create_app(settings)
    client = app.test_client()
    push(client, "cnn", checkpoint_form(models["resource_meta"]))
    env = dict(os.environ, REGISTRY_HOME=str(settings.home), REGISTRY_DATABASE_URL=settings.database_url,
               REGISTRY_JOB_LEASE_SECONDS="3",
               REGISTRY_WORKER_POLL_SECONDS="0.2")
    doomed = subprocess.Popen([sys.executable, "-m", "registry.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while version(client, "cnn")["status"] != "converting":
            assert time.monotonic() < deadline, "the worker never claimed the job"
            time.sleep(0.1)
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
    finally:
        if doomed.poll() is None:
            os.killpg(doomed.pid, signal.SIGKILL)
    registry = app.extensions["registry"]
    rescuer = Worker(settings, registry.db, registry.storage)
    assert rescuer.run_once() is False  # the dead worker's lease has not expired yet
    time.sleep(3.5)
    assert rescuer.run_once() is True
    record = version(client, "cnn")
    assert record["status"] == "ready", record["status_message"]
    with registry.db.transaction() as session:
        assert session.scalar(sa.select(Job.attempts)) == 2


def convert_once_with(settings, models, **overrides) -> dict:
    """Push a checkpoint to a registry with these settings, run one worker pass, return the version."""
    from registry.app import create_app

    settings = dataclasses.replace(settings, **overrides)
    app = create_app(settings)
    push(app.test_client(), "cnn", checkpoint_form(models["resource_meta"]))
    registry = app.extensions["registry"]
    Worker(settings, registry.db, registry.storage).run_once()
    return version(app.test_client(), "cnn")


def test_conversion_over_its_memory_limit_fails_the_version_saying_so(settings, models):
    record = convert_once_with(settings, models, convert_memory_mb=400)
    assert record["status"] == "failed"
    assert "ran out of memory" in record["status_message"]
    assert "REGISTRY_CONVERT_MEMORY_MB" in record["status_message"]


def test_conversion_over_its_time_limit_fails_the_version_saying_so(settings, models):
    record = convert_once_with(settings, models, convert_timeout_seconds=0.05)  # a warm job freezes this in 0.5 s
    assert record["status"] == "failed"
    assert "longer than 0.05 s" in record["status_message"]


def test_blob_missing_from_storage_is_retried_not_lost(client, registry, models):
    response = push(client, "cnn", frozen_form(models["frozen"].frozen_graph)).get_json()
    registry.storage.delete(response["files"][0]["sha256"])
    Worker(registry.settings, registry.db, registry.storage).run_once()
    record = version(client, "cnn")
    assert record["status"] == "queued"
    assert "will retry" in record["status_message"] and "missing" in record["status_message"]


def test_conversion_over_its_file_size_limit_fails_the_version_saying_so(tmp_path, settings):
    from registry.app import create_app
    from tests import tfmodels

    large = tfmodels.build_large_frozen(tmp_path / "graph", megabytes=3)
    settings = dataclasses.replace(settings, convert_max_output_mb=1)
    app = create_app(settings)
    assert push(app.test_client(), "big", frozen_form(large, output_nodes="output")).status_code == 202
    registry = app.extensions["registry"]
    Worker(settings, registry.db, registry.storage).run_once()
    record = version(app.test_client(), "big")
    assert record["status"] == "failed", record["status_message"]
    assert "file-size limit (1 MB, REGISTRY_CONVERT_MAX_OUTPUT_MB)" in record["status_message"]
    with registry.db.transaction() as session:
        assert session.scalar(sa.select(Job.attempts)) == 1  # the same graph would fail again: not retried


def test_a_warm_converter_template_that_died_is_replaced_and_the_job_still_converts(client, registry, models):
    from registry.converter import runner, warm

    runner.warm_up()
    dead = warm._local.template
    dead.proc.kill()
    dead.proc.wait()
    push(client, "cnn", checkpoint_form(models["resource_meta"]))
    assert Worker(registry.settings, registry.db, registry.storage).run_once()
    assert version(client, "cnn")["status"] == "ready"
    assert warm._local.template is not dead and warm._local.template.alive()  # the next jobs' template


def test_a_warm_template_forks_each_job_and_freezes_the_same_bytes_as_a_cold_child(client, registry, models):
    from registry.converter import runner, warm

    frozen = []
    for start in ("cold", "warm", "warm"):
        push(client, "cnn", checkpoint_form(models["resource_meta"]))
        settings = dataclasses.replace(registry.settings, convert_warm=start == "warm")
        if start == "warm":
            runner.warm_up()
            template = warm._local.template.proc.pid
        assert Worker(settings, registry.db, registry.storage).run_once()
        record = client.get(f"/api/v1/models/cnn/versions/{len(frozen) + 1}").get_json()
        assert record["status"] == "ready", record["status_message"]
        assert record["verification"]["status"] == "passed"
        frozen.append(record["frozen"]["sha256"])
        if start == "warm":
            assert warm._local.template.proc.pid == template  # one template, a fresh process per job
    assert len(set(frozen)) == 1
