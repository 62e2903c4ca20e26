"""Limits: upload size and image size (413), per-client rate limits (429 with
Retry-After), each with a message saying what to do."""

from __future__ import annotations


import pytest
import requests

from registry.errors import InvalidRequest
from registry.auth.limits import Rate, parse_rate
from tests.conftest import make_settings, start_live_server
from tests.helpers import blob_files, frozen_form


def test_rates_are_read_as_requests_per_unit_and_off_means_no_limit():
    assert parse_rate("30/minute") == Rate(30, 60)
    assert parse_rate("5/s") == Rate(5, 1)
    assert parse_rate(" 100 / hours ") == Rate(100, 3600)
    assert parse_rate("off") is None and parse_rate("") is None and parse_rate("0") is None
    with pytest.raises(InvalidRequest, match="REGISTRY_RATE_LIMIT_PUSH='30 per minute' is not a rate.*N/minute"):
        parse_rate("30 per minute", "REGISTRY_RATE_LIMIT_PUSH")
    with pytest.raises(InvalidRequest, match="whole number"):
        parse_rate("0.5/second", "REGISTRY_RATE_LIMIT_PUSH")


def test_an_invalid_rate_setting_stops_the_app_from_starting(tmp_path):
    from registry.app import create_app

    with pytest.raises(InvalidRequest, match="REGISTRY_RATE_LIMIT_LABEL"):
        create_app(make_settings(tmp_path / "home", rate_limit_label="lots"))
    with pytest.raises(InvalidRequest, match="REGISTRY_RATELIMIT_STORAGE"):
        create_app(make_settings(tmp_path / "other", rate_limit_label="3/minute", ratelimit_storage="carrier-pigeon://"))


@pytest.fixture
def limited_server(tmp_path):
    server, stop = start_live_server(
        make_settings(tmp_path / "home", rate_limit_push="2/minute", rate_limit_label="3/minute",
                      max_upload_bytes=1024 * 1024), workers=False)
    yield server
    stop()


def http_push(url: str, name: str, payload: bytes, **kwargs) -> requests.Response:
    return requests.post(f"{url}/api/v1/models/{name}/versions",
                         files={"frozen": ("frozen.pb", payload)}, timeout=30, **kwargs)


def test_pushes_over_the_rate_limit_get_429_with_retry_after_over_http(limited_server, models):
    graph = models["frozen"].frozen_graph.read_bytes()
    assert [http_push(limited_server.url, "cnn", graph).status_code for _ in range(2)] == [202, 202]
    refused = http_push(limited_server.url, "cnn", graph)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60  # until the oldest push leaves the minute
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert "2/minute per client (REGISTRY_RATE_LIMIT_PUSH)" in error["message"] and "retry in" in error["message"]
    assert requests.get(f"{limited_server.url}/api/v1/models/cnn/versions", timeout=10).status_code == 200
    assert len(requests.get(f"{limited_server.url}/api/v1/models/cnn/versions", timeout=10).json()["versions"]) == 2


def test_label_requests_over_the_limit_get_429_in_tf_serving_shape(limited_server):
    url = f"{limited_server.url}/v1/models/cnn:label"
    answers = [requests.post(url, data=b"\x89PNG", headers={"Content-Type": "image/png"}, timeout=10)
               for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [404, 404, 404]
    assert answers[3].status_code == 429 and "Retry-After" in answers[3].headers
    assert "REGISTRY_RATE_LIMIT_LABEL" in answers[3].json()["error"]  # TF Serving's {"error": "..."}
    assert requests.get(f"{limited_server.url}/v1/models/cnn", timeout=10).status_code == 404  # GETs are free


def test_rate_limits_apply_per_token_when_the_caller_sends_one(tmp_path, models):
    from registry import auth
    from registry.app import create_app
    from registry.auth.audit import SYSTEM

    app = create_app(make_settings(tmp_path / "home", rate_limit_push="1/hour"))
    db = app.extensions["registry"].db
    tokens = {who: auth.create_token(db, who, "write", SYSTEM)[1] for who in ("alice", "bob")}
    client = app.test_client()

    def push_as(who: str) -> int:
        return client.post("/api/v1/models/cnn/versions", data=frozen_form(models["frozen"].frozen_graph),
                           content_type="multipart/form-data",
                           headers={"Authorization": f"Bearer {tokens[who]}"}).status_code

    # Same address, different tokens: each token has its own bucket.
    assert [push_as("alice"), push_as("bob"), push_as("alice")] == [202, 202, 429]
    db.dispose()


def test_upload_over_the_size_limit_is_413_with_content_length(limited_server):
    answer = http_push(limited_server.url, "big", b"\x0a" * (2 * 1024 * 1024))
    assert answer.status_code == 413
    error = answer.json()["error"]
    assert error["code"] == "payload_too_large" and "REGISTRY_MAX_UPLOAD_BYTES" in error["message"]
    assert blob_files(limited_server.settings.home) == []


def test_streamed_upload_without_content_length_over_the_limit_is_413(limited_server):
    boundary = "b0undary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"frozen\"; filename=\"f.pb\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(64):  # 4 MiB in 64 KiB chunks, sent chunked
            yield b"\x0a" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        answer = requests.post(f"{limited_server.url}/api/v1/models/big/versions", data=body(), timeout=30,
                               headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    except requests.ConnectionError as exc:  # pragma: no cover - the assertion explains
        pytest.fail(f"the server dropped the connection instead of answering 413: {exc}")
    assert "Content-Length" not in answer.request.headers
    assert answer.status_code == 413, answer.text
    assert "REGISTRY_MAX_UPLOAD_BYTES" in answer.json()["error"]["message"]
    assert [p for p in blob_files(limited_server.settings.home)] == []
    assert requests.get(f"{limited_server.url}/api/v1/models/big", timeout=10).status_code == 404
