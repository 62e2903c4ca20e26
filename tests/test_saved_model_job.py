"""Ready means frozen and verified: the TF Serving SavedModel follows in its own job, stored as a plain tar."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest
import sqlalchemy as sa

from registry import catalog
from registry.jobs.worker import Worker
from registry.models import ModelVersion
from tests import tfmodels
from tests.helpers import push


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    return tfmodels.build_frozen(tmp_path_factory.mktemp("sm-job")).frozen_graph


def worker(app) -> Worker:
    registry = app.extensions["registry"]
    return Worker(registry.settings, registry.db, registry.storage)


def pushed(app, frozen) -> None:
    answer = push(app.test_client(), "cnn", {"frozen": (io.BytesIO(frozen.read_bytes()), "frozen.pb")})
    assert answer.status_code == 202, answer.get_json()


def test_a_version_is_ready_before_its_saved_model_which_follows_in_its_own_job(app, frozen):
    pushed(app, frozen)
    client = app.test_client()
    assert worker(app).run_once()  # the conversion only
    version = client.get("/api/v1/models/cnn/versions/1").get_json()
    assert version["status"] == "ready"
    assert version["saved_model"] == {"state": "pending", "message": ""}
    pending = client.get("/api/v1/models/cnn/versions/1/saved_model.tar")
    assert pending.status_code == 409 and pending.headers["Retry-After"] == "2"
    assert pending.get_json()["error"]["code"] == "saved_model_pending"

    assert worker(app).run_once()  # the follow-on job
    version = client.get("/api/v1/models/cnn/versions/1").get_json()
    assert version["saved_model"]["state"] == "ready"
    stored = next(f for f in version["files"] if f["role"] == "saved_model")
    assert stored["filename"] == "saved_model.tar"
    tar = client.get("/api/v1/models/cnn/versions/1/saved_model.tar")
    assert tar.status_code == 200 and tar.headers["ETag"] == f'"{stored["sha256"]}"'
    assert hashlib.sha256(tar.get_data()).hexdigest() == stored["sha256"]
    assert tar.get_data()[:2] != b"\x1f\x8b"  # not compressed: float weights do not shrink
    with tarfile.open(fileobj=io.BytesIO(tar.get_data())) as archive:
        assert sorted(archive.getnames()) == ["saved_model.pb", "variables"]
    gz = client.get("/api/v1/models/cnn/versions/1/saved_model.tar.gz")  # the old name, gzipped as it streams
    assert gz.status_code == 200 and gz.headers["X-Source-SHA256"] == stored["sha256"]
    assert gzip.decompress(gz.get_data()) == tar.get_data()
    assert not worker(app).run_once()  # nothing left


def test_a_saved_model_that_cannot_be_built_fails_alone_and_the_version_stays_ready(app, frozen):
    pushed(app, frozen)
    assert worker(app).run_once()
    db = app.extensions["registry"].db
    version = catalog.get_version(db, "cnn", "1")
    broken = {"serving_default": {**version.signatures["serving_default"],
                                  "outputs": {"gone": {"name": "no_such_node:0"}}}}
    with db.transaction() as session:
        session.execute(sa.update(ModelVersion).where(ModelVersion.id == version.id).values(signatures=broken))
    assert worker(app).run_once()
    answer = app.test_client().get("/api/v1/models/cnn/versions/1").get_json()
    assert answer["status"] == "ready"
    assert answer["saved_model"]["state"] == "failed"
    assert "no_such_node" in answer["saved_model"]["message"]
    refused = app.test_client().get("/api/v1/models/cnn/versions/1/saved_model.tar")
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "saved_model_failed"
