"""Deleting versions and models: numbers never come back, aliases go with their
version, a conversion in progress is cancelled, and pages keep working."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from registry import catalog, jobs
from registry.models import Agreement, Job, VersionFile
from registry.jobs.worker import Worker
from tests.helpers import bearer, checkpoint_form, frozen_form, issue_tokens, push


def push_frozen(client, models, name="cnn", **fields) -> dict:
    response = push(client, name, frozen_form(models["frozen"].frozen_graph, **fields))
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def test_deleting_the_newest_version_never_gives_its_number_again(client, models):
    for _ in range(3):
        push_frozen(client, models)
    answer = client.delete("/api/v1/models/cnn/versions/3")
    assert answer.status_code == 200
    assert answer.get_json() == {"model": "cnn", "version": 3, "status": "queued",
                                 "aliases_removed": [], "job_cancelled": True}
    assert client.get("/api/v1/models/cnn/versions/3").status_code == 404
    assert push_frozen(client, models)["version"] == 4
    model = client.get("/api/v1/models/cnn").get_json()
    assert (model["version_count"], model["last_version"]) == (3, 4)
    listed = [v["version"] for v in client.get("/api/v1/models/cnn/versions").get_json()["versions"]]
    assert listed == [4, 2, 1]


def test_deleting_a_version_removes_the_aliases_pointing_at_it_and_says_which(client, registry, models):
    push_frozen(client, models)
    push_frozen(client, models)
    Worker(registry.settings, registry.db, registry.storage).run_once()
    for alias, number in (("production", 1), ("canary", 1), ("staging", 2)):
        assert client.put(f"/api/v1/models/cnn/aliases/{alias}", json={"version": number}).status_code == 200
    answer = client.delete("/api/v1/models/cnn/versions/1").get_json()
    assert answer["aliases_removed"] == ["canary", "production"]
    assert answer["status"] == "ready" and answer["job_cancelled"] is False
    assert client.get("/api/v1/models/cnn").get_json()["aliases"] == {"staging": 2}
    assert client.get("/api/v1/models/cnn/versions/production").status_code == 404
    with registry.db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(VersionFile)) == 1  # version 2's only


def test_deletes_need_a_write_token_once_tokens_exist_and_are_in_the_audit_log(client, registry, models):
    push_frozen(client, models)
    push_frozen(client, models, name="other")
    tokens = issue_tokens(registry.db)  # from now on the embedded registry wants tokens for writes
    assert client.delete("/api/v1/models/cnn/versions/1").status_code == 401
    assert client.delete("/api/v1/models/cnn/versions/1", headers=bearer(tokens["read"])).status_code == 403
    assert client.delete("/api/v1/models/cnn/versions/1", headers=bearer(tokens["write"])).status_code == 200
    assert client.delete("/api/v1/models/other", headers=bearer(tokens["write"])).status_code == 200
    events = client.get("/api/v1/audit", headers=bearer(tokens["admin"])).get_json()["events"]
    deletes = [(e["action"], e["target"], e["actor"]) for e in events if e["action"].endswith(".delete")]
    assert deletes == [("model.delete", "other", "write-token"), ("version.delete", "cnn/1", "write-token")]
    assert events[0]["details"]["versions_deleted"] == 1


def test_a_model_pushed_again_after_deletion_does_not_inherit_its_allowed_ops(client, registry, models):
    push_frozen(client, models)
    tokens = issue_tokens(registry.db)
    admin = bearer(tokens["admin"])
    answer = client.put("/api/v1/models/cnn/allowed-ops", json={"ops": ["ReadFile"], "reason": "reads its vocab"},
                        headers=admin)
    assert answer.status_code == 200, answer.get_json()
    assert client.delete("/api/v1/models/cnn", headers=admin).status_code == 200
    assert push(client, "cnn", frozen_form(models["frozen"].frozen_graph), headers=admin).status_code == 202
    assert client.get("/api/v1/models/cnn/allowed-ops", headers=admin).get_json()["ops"] == []


def test_deleting_by_alias_is_refused_with_the_number_to_use(client, models):
    push_frozen(client, models)
    client.put("/api/v1/models/cnn/aliases/production", json={"version": 1})
    answer = client.delete("/api/v1/models/cnn/versions/production")
    assert answer.status_code == 400
    assert "DELETE /api/v1/models/cnn/versions/1" in answer.get_json()["error"]["message"]
    assert client.get("/api/v1/models/cnn/versions/1").status_code == 200


def test_deleting_an_unknown_version_or_model_is_a_404(client, models):
    push_frozen(client, models)
    assert client.delete("/api/v1/models/cnn/versions/7").status_code == 404
    assert client.delete("/api/v1/models/nope").get_json()["error"]["code"] == "model_not_found"


def test_deleted_model_is_gone_and_a_new_push_goes_on_from_its_last_number(client, models):
    for _ in range(2):
        push_frozen(client, models)
    client.put("/api/v1/models/cnn/aliases/production", json={"version": 2})
    push_frozen(client, models, name="other")
    answer = client.delete("/api/v1/models/cnn").get_json()
    assert answer == {"model": "cnn", "versions_deleted": 2, "aliases_removed": ["production"],
                      "jobs_cancelled": 2, "last_version": 2}
    assert client.get("/api/v1/models/cnn").status_code == 404
    assert client.get("/api/v1/models/cnn/versions/1").status_code == 404
    assert [m["name"] for m in client.get("/api/v1/models").get_json()["models"]] == ["other"]
    assert client.get("/").status_code == 200 and b"cnn" not in client.get("/").data
    again = push_frozen(client, models)
    assert again["version"] == 3
    model = client.get("/api/v1/models/cnn").get_json()
    assert (model["version_count"], model["aliases"]) == (1, {})


def test_worker_never_resurrects_a_version_deleted_mid_conversion(client, registry, models):
    uploaded = {f["sha256"] for f in push(client, "cnn", checkpoint_form(models["resource_meta"])).get_json()["files"]}
    worker = Worker(registry.settings, registry.db, registry.storage)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run_once()
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while client.get("/api/v1/models/cnn/versions/1").get_json()["status"] != "converting":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    answer = client.delete("/api/v1/models/cnn/versions/1").get_json()
    assert answer["job_cancelled"] is True and answer["status"] == "converting"
    thread.join(timeout=120)
    assert not thread.is_alive() and errors == []
    assert client.get("/api/v1/models/cnn/versions/1").status_code == 404
    with registry.db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
    # The frozen graph the worker produced was not kept; the uploads wait for `registry gc`.
    assert set(registry.storage.iter_digests()) == uploaded
    assert worker.run_once() is False


def test_a_lost_job_cannot_be_finished_after_its_version_is_deleted(client, registry, models):
    push_frozen(client, models)
    job = jobs.claim(registry.db, "w", 60)
    catalog.delete_version(registry.db, "cnn", "1")
    assert jobs.heartbeat(registry.db, job, 60) is False
    assert jobs.finish(registry.db, job, ready=True, message="done", fields={}) is False
    assert jobs.retry_later(registry.db, job, "boom") is False
    assert client.get("/api/v1/models/cnn/versions/1").status_code == 404


def test_agreement_on_the_model_page_compares_with_the_previous_existing_version(client, registry, models):
    for _ in range(3):
        push_frozen(client, models)
    catalog.record_agreements(registry.db, "cnn", [(1, 3, 0.75, 0.1, 4), (2, 3, 0.5, 0.2, 4)])
    assert client.get("/api/v1/models/cnn/versions/3").get_json()["agreement_with_previous"]["version"] == 2
    catalog.delete_version(registry.db, "cnn", "2")
    agreement = client.get("/api/v1/models/cnn/versions/3").get_json()["agreement_with_previous"]
    assert agreement == {"version": 1, "top1_agreement": 0.75, "images": 4}
    with registry.db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Agreement)) == 1
    page = client.get("/models/cnn")
    assert page.status_code == 200 and b"75%" in page.data


@pytest.mark.slow
def test_cli_deletes_a_version_and_asks_before_deleting_a_model(live_server, models, tmp_path):
    import os
    import subprocess
    import sys

    client = live_server.app.test_client()
    push_frozen(client, models)
    push_frozen(client, models)
    client.put("/api/v1/models/cnn/aliases/production", json={"version": 2})
    env = dict(os.environ, REGISTRY_URL=live_server.url)

    def cli(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "registry.cli", "delete", *args], env=env,
                              input=stdin, capture_output=True, text=True, timeout=60)

    done = cli("cnn:2")
    assert done.returncode == 0, done.stderr
    assert "version 2 deleted" in done.stdout and "aliases removed: production" in done.stdout
    refused = cli("cnn", "--model", stdin="n\n")
    assert refused.returncode != 0 and client.get("/api/v1/models/cnn").status_code == 200
    usage = cli("cnn")
    assert usage.returncode != 0 and "NAME:VERSION" in usage.stderr
    gone = cli("cnn", "--model", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert "starts at version 3" in gone.stdout
    assert client.get("/api/v1/models/cnn").status_code == 404
