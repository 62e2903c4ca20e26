"""A label request whose graph runs past REGISTRY_LABEL_TIMEOUT_SECONDS is stopped
and answered 504 (REST) or DEADLINE_EXCEEDED (gRPC); the server goes on serving."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import requests

from registry.client import RegistryClient
from tests import tfmodels
from tests.conftest import make_settings, start_live_server

pytestmark = pytest.mark.slow
FOREVER = 10**12  # loop steps: hours of work


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("timeout")
    graph = tfmodels.build_slow_frozen(home / "graph")
    server, stop = start_live_server(make_settings(home / "home", embedded_workers=1, label_timeout_seconds=1.0),
                                     workers=True)
    client = RegistryClient(server.url)
    pushed = client.push("slow", [("frozen", graph)], {"output_nodes": "output"})
    record = client.wait("slow", pushed["version"], timeout=180)
    assert record["status"] == "ready", record["status_message"]
    yield server
    stop()


def predict(server, iterations: int) -> requests.Response:
    body = {"inputs": {"input": [[2.0]], "iterations": iterations}}
    return requests.post(f"{server.url}/v1/models/slow:predict", json=body, timeout=60)


def test_a_request_past_the_timeout_is_stopped_with_a_504_and_the_server_goes_on(slow_server):
    assert predict(slow_server, 3).json()["outputs"] == [[6.0]]
    started = time.monotonic()
    answer = predict(slow_server, FOREVER)
    elapsed = time.monotonic() - started
    assert answer.status_code == 504, answer.text
    assert "REGISTRY_LABEL_TIMEOUT_SECONDS" in answer.json()["error"] and "1 s" in answer.json()["error"]
    assert elapsed < 15
    assert predict(slow_server, 5).json()["outputs"] == [[10.0]]  # the version still answers


def test_grpc_predict_past_the_timeout_is_deadline_exceeded(slow_server):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from registry.serving.grpc_server import start_grpc_server

    grpc_server, port = start_grpc_server(slow_server.registry, port=0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "slow"
            request.inputs["input"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
            request.inputs["iterations"].CopyFrom(tf.make_tensor_proto(np.int64(FOREVER)))
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request, timeout=60)
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "REGISTRY_LABEL_TIMEOUT_SECONDS" in error.value.details()
    finally:
        grpc_server.stop(0)
