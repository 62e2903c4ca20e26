"""GET /v1/models: every model with its servable versions, which stock TF Serving cannot tell
(tensorflow/serving#795), in the shape of its GetModelStatus answer."""

from __future__ import annotations

from registry.jobs.worker import Worker
from tests.helpers import frozen_form, push


def test_v1_models_lists_every_model_with_its_ready_versions_only(client, registry, models):
    frozen = models["frozen"].frozen_graph
    for name in ("cnn", "cnn", "queued-only"):
        assert push(client, name, frozen_form(frozen)).status_code == 202
    worker = Worker(registry.settings, registry.db, registry.storage)
    assert worker.run_once() and worker.run_once()  # cnn v1 and v2 ready; queued-only v1 still queued
    push(client, "cnn", frozen_form(frozen))  # cnn v3 queued
    answer = client.get("/v1/models")
    assert answer.status_code == 200
    assert answer.get_json() == {"models": [{"name": "cnn", "model_version_status": [
        {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in (2, 1)]}]}
    # the same entries GetModelStatus gives for one version
    one = client.get("/v1/models/cnn/versions/2").get_json()["model_version_status"][0]
    assert one == answer.get_json()["models"][0]["model_version_status"][0]


def test_v1_models_of_an_empty_registry_is_an_empty_list(client):
    assert client.get("/v1/models").get_json() == {"models": []}
