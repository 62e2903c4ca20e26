"""Pushing: every bad upload gets a 4xx that says what to fix, and leaves nothing behind."""

from __future__ import annotations

import dataclasses
import io
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from tests.conftest import BOTH_DATABASES
from tests.helpers import blob_files, checkpoint_form, frozen_form, push

pytestmark = BOTH_DATABASES


def assert_nothing_left(client, settings, model="cnn"):
    assert blob_files(settings.home) == [], "a rejected upload left blobs or temporary files behind"
    assert client.get(f"/api/v1/models/{model}").status_code == 404


def error_of(response) -> dict:
    return response.get_json()["error"]


def test_checkpoint_push_is_accepted_and_stores_every_file_once(client, settings, models):
    model = models["sharded"]
    response = push(client, "cnn", checkpoint_form(model, graph=True, labels=b"cat\ndog\n",
                                                   output_nodes="predictions/Softmax"))
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["source"] == "checkpoint+graph"
    assert body["requested_output_nodes"] == ["predictions/Softmax"]
    roles = [f["role"] for f in body["files"]]
    assert roles == ["meta", "graph", "index", "data", "data", "labels"]
    stored = {p.name for p in blob_files(settings.home)}
    assert {f["sha256"] for f in body["files"]} == stored


def test_identical_files_are_stored_once(client, settings, models):
    push(client, "cnn", checkpoint_form(models["resource_meta"]))
    before = blob_files(settings.home)
    push(client, "cnn", checkpoint_form(models["resource_meta"]))
    assert blob_files(settings.home) == before


def test_missing_index_is_refused(client, settings, models):
    form = checkpoint_form(models["resource_meta"])
    del form["index"]
    response = push(client, "cnn", form)
    assert response.status_code == 400
    assert "missing index" in error_of(response)["message"]
    assert_nothing_left(client, settings)


def test_push_without_files_is_refused(client, settings):
    response = push(client, "cnn", {"description": "nothing"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "missing_files"
    assert_nothing_left(client, settings)


def test_empty_file_is_refused(client, settings, models):
    form = checkpoint_form(models["resource_meta"])
    form["index"] = (io.BytesIO(b""), "model.ckpt.index")
    response = push(client, "cnn", form)
    assert response.status_code == 400
    assert error_of(response)["code"] == "empty_file"
    assert "'index'" in error_of(response)["message"]
    assert_nothing_left(client, settings)


def test_meta_that_is_not_a_meta_graph_is_refused(client, settings, models):
    form = checkpoint_form(models["resource_meta"])
    form["meta"] = (io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40), "model.ckpt.meta")
    response = push(client, "cnn", form)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_meta_graph"
    assert "tf.compat.v1.train.Saver" in error_of(response)["message"]
    assert_nothing_left(client, settings)


def test_graph_def_sent_as_meta_is_refused_with_the_right_field_to_use(client, settings, models):
    form = checkpoint_form(models["resource_graph"])
    form["meta"] = (io.BytesIO(models["resource_graph"].inference_graph.read_bytes()), "model.ckpt.meta")
    response = push(client, "cnn", form)
    assert response.status_code == 400
    assert "send that as 'graph'" in error_of(response)["message"]


@pytest.mark.parametrize("content", [b"just some text, not a graph\n" * 20, b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" * 50])
def test_frozen_file_that_is_not_a_graph_def_is_refused(client, settings, content):
    response = push(client, "cnn", {"frozen": (io.BytesIO(content), "frozen.pb")})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_graph"
    assert_nothing_left(client, settings)


def test_meta_graph_sent_as_frozen_is_refused_with_the_right_field_to_use(client, settings, models):
    response = push(client, "cnn", {"frozen": (io.BytesIO(models["resource_meta"].meta.read_bytes()), "x.pb")})
    assert response.status_code == 400
    assert "send it as 'meta'" in error_of(response)["message"]


def test_truncated_frozen_graph_is_refused(client, settings, models):
    data = models["frozen"].frozen_graph.read_bytes()
    response = push(client, "cnn", {"frozen": (io.BytesIO(data[: len(data) // 2]), "frozen.pb")})
    assert response.status_code == 400
    assert "truncated" in error_of(response)["message"]
    assert_nothing_left(client, settings)


def test_truncated_index_is_refused(client, settings, models):
    form = checkpoint_form(models["resource_meta"])
    index = models["resource_meta"].index.read_bytes()
    form["index"] = (io.BytesIO(index[:-10]), "model.ckpt.index")
    response = push(client, "cnn", form)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_checkpoint_index"
    assert_nothing_left(client, settings)


def test_missing_data_shard_is_refused_naming_it(client, settings, models):
    form = checkpoint_form(models["sharded"])
    form["data"] = form["data"][:1]
    response = push(client, "cnn", form)
    assert response.status_code == 400
    assert "missing shard(s) 00001" in error_of(response)["message"]
    assert_nothing_left(client, settings)


def test_data_file_with_a_foreign_name_is_refused(client, settings, models):
    form = checkpoint_form(models["resource_meta"])
    form["data"] = [(io.BytesIO(models["resource_meta"].data[0].read_bytes()), "weights.bin")]
    response = push(client, "cnn", form)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_data_shard"


def test_frozen_graph_with_a_checkpoint_is_refused(client, settings, models):
    form = {**checkpoint_form(models["resource_meta"]), **frozen_form(models["frozen"].frozen_graph)}
    response = push(client, "cnn", form)
    assert response.status_code == 400
    assert error_of(response)["code"] == "conflicting_files"
    assert_nothing_left(client, settings)


def test_unknown_file_field_is_refused(client, settings, models):
    form = frozen_form(models["frozen"].frozen_graph)
    form["weights"] = (io.BytesIO(b"abc"), "w.bin")
    response = push(client, "cnn", form)
    assert response.status_code == 400
    assert error_of(response)["code"] == "unknown_field"
    assert_nothing_left(client, settings)


def test_invalid_output_node_name_is_refused(client, settings, models):
    response = push(client, "cnn", frozen_form(models["frozen"].frozen_graph, output_nodes="ok/name, bad name!"))
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_node_name"
    assert_nothing_left(client, settings)


def test_json_body_instead_of_files_is_refused(client, settings):
    response = client.post("/api/v1/models/cnn/versions", json={"meta": "x"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_content_type"


def test_rejected_push_does_not_use_up_a_version_number_or_touch_other_versions(client, settings, models):
    push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
    before = client.get("/api/v1/models/cnn/versions/1").get_json()
    bad = push(client, "cnn", {"frozen": (io.BytesIO(b"not a graph" * 10), "f.pb")})
    assert bad.status_code == 400
    assert client.get("/api/v1/models/cnn/versions/1").get_json() == before
    assert push(client, "cnn", frozen_form(models["frozen"].frozen_graph)).get_json()["version"] == 2


def test_interrupted_upload_leaves_no_version_and_no_partial_blob(live_server, models):
    """The client sends half of a multipart body over a real socket and hangs up."""
    data = models["resource_meta"].data[0].read_bytes() * 200
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"frozen\"; filename=\"f.pb\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    length = len(head) + len(data) + len(f"\r\n--{boundary}--\r\n")
    url = urlparse(live_server.url)
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall((f"POST /api/v1/models/cnn/versions HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {length}\r\n\r\n").encode() + head + data[: len(data) // 2])
        time.sleep(0.3)
    home = live_server.settings.home
    deadline = time.monotonic() + 10
    while blob_files(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert blob_files(home) == []
    assert requests.get(f"{live_server.url}/api/v1/models/cnn").status_code == 404


def test_concurrent_pushes_get_distinct_consecutive_version_numbers(live_server, models):
    frozen = models["frozen"].frozen_graph.read_bytes()
    numbers: list[int] = []
    errors: list[str] = []

    def one_push() -> None:
        response = requests.post(f"{live_server.url}/api/v1/models/busy/versions",
                                 files={"frozen": ("f.pb", frozen)}, timeout=60)
        if response.status_code == 202:
            numbers.append(response.json()["version"])
        else:
            errors.append(response.text)

    threads = [threading.Thread(target=one_push) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(numbers) == list(range(1, 25))
    listed = requests.get(f"{live_server.url}/api/v1/models/busy/versions").json()["versions"]
    assert [v["version"] for v in listed] == list(range(24, 0, -1))


def test_upload_larger_than_the_limit_is_a_413(settings, models):
    from registry.app import create_app

    settings = dataclasses.replace(settings, max_upload_bytes=1000)
    client = create_app(settings).test_client()
    response = push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
    assert response.status_code == 413
    assert "REGISTRY_MAX_UPLOAD_BYTES" in error_of(response)["message"]
    assert blob_files(Path(settings.home)) == []


def test_malformed_multipart_body_is_a_400_not_a_server_error(client):
    """Found by schemathesis: a part without headers made the decoder raise."""
    boundary = "b0undary"
    response = client.post("/api/v1/models/cnn/versions", data=f"--{boundary}\r\n[]--{boundary}--\r\n".encode(),
                           content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_multipart"
    assert "Content-Disposition" in response.get_json()["error"]["message"]
