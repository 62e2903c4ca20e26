"""TensorFlow Serving's gRPC API over a real channel, in front of a live registry
whose embedded converter froze real checkpoints: Predict, GetModelMetadata,
GetModelStatus, their errors, and concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from registry.client import RegistryClient
from registry.serving.grpc_server import start_grpc_server

pytestmark = pytest.mark.slow
NAME = "grpc-cnn"
OUTPUT_KEY = "predictions_Softmax"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


def checkpoint_files(model) -> list[tuple[str, Path]]:
    return ([("meta", model.meta), ("graph", model.inference_graph), ("index", model.index)]
            + [("data", p) for p in model.data])


@pytest.fixture(scope="module")
def pushed(converting_server, models):
    """NAME v1 from one checkpoint, v2 from another (different weights); 'production' -> 1."""
    client = RegistryClient(converting_server.url)
    output = models["resource_graph"].output
    client.push(NAME, checkpoint_files(models["resource_graph"]), {"output_nodes": output})
    client.push(NAME, checkpoint_files(models["sharded"]), {"output_nodes": output})
    for number in (1, 2):
        record = client.wait(NAME, number, timeout=120)
        assert record["status"] == "ready", record["status_message"]
    client.set_alias(NAME, "production", 1)
    return client


@pytest.fixture(scope="module")
def grpc_server(converting_server):
    server, port = start_grpc_server(converting_server.registry, port=0)
    yield server, port
    server.stop(0)


@pytest.fixture(scope="module")
def channel(grpc_server):
    with grpc.insecure_channel(f"127.0.0.1:{grpc_server[1]}",
                               options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as channel:
        yield channel


@pytest.fixture(scope="module")
def predictions(channel, pushed):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def status(channel, pushed):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(array: np.ndarray, *, name: str = NAME, version: int | None = None, label: str | None = None,
                    key: str = "input", signature: str = "", output_filter: tuple[str, ...] = ()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
    request.output_filter.extend(output_filter)
    return request


def rpc_error(method, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        method(request, timeout=60)
    return info.value


@pytest.mark.parametrize("choice, model_key, version", [
    ({"version": 1}, "resource_graph", 1),
    ({"version": 2}, "sharded", 2),
    ({"label": "production"}, "resource_graph", 1),
    ({}, "sharded", 2),  # latest ready
])
def test_predict_gives_each_versions_checkpoint_outputs(predictions, models, choice, model_key, version):
    model = models[model_key]
    response = predictions.Predict(predict_request(model.test_input, **choice), timeout=60)
    assert list(response.outputs) == [OUTPUT_KEY]
    assert response.outputs[OUTPUT_KEY].dtype == types_pb2.DT_FLOAT
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[OUTPUT_KEY]), model.expected, rtol=0, atol=1e-6)
    assert (response.model_spec.name, response.model_spec.version.value) == (NAME, version)
    assert response.model_spec.signature_name == "serving_default"


def test_the_two_versions_really_differ(models):
    assert not np.allclose(models["resource_graph"].expected, models["sharded"].expected, atol=1e-3)


def test_predict_accepts_the_signature_name_and_honours_output_filter(predictions, models):
    model = models["resource_graph"]
    response = predictions.Predict(predict_request(model.test_input, version=1, signature="serving_default",
                                                   output_filter=(OUTPUT_KEY,)), timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[OUTPUT_KEY]), model.expected, rtol=0, atol=1e-6)
    error = rpc_error(predictions.Predict, predict_request(model.test_input, output_filter=("logits",)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "logits" in error.details() and OUTPUT_KEY in error.details()


def test_predict_of_a_batch_larger_than_grpcs_default_4_mib(predictions, models):
    model = models["sharded"]
    batch = np.tile(model.test_input, (4000, 1, 1, 1))  # 4.6 MiB of float32
    response = predictions.Predict(predict_request(batch, version=2), timeout=120)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[OUTPUT_KEY]), np.tile(model.expected, (4000, 1)),
                               rtol=0, atol=1e-6)


def test_metadata_is_serving_default_as_tf_serving_packs_it(predictions, converting_server):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = NAME
    request.model_spec.version_label = "production"
    response = predictions.GetModelMetadata(request, timeout=60)
    assert (response.model_spec.name, response.model_spec.version.value) == (NAME, 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert list(signatures.signature_def) == ["serving_default"]
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert list(signature.inputs) == ["input"]
    assert signature.inputs["input"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in signature.inputs["input"].tensor_shape.dim] == [-1, 8, 8, 3]
    assert signature.inputs["input"].name == "input:0"
    assert signature.outputs[OUTPUT_KEY].name == "predictions/Softmax:0"
    assert signature.outputs[OUTPUT_KEY].dtype == types_pb2.DT_FLOAT
    rest = requests.get(f"{converting_server.url}/v1/models/{NAME}/labels/production/metadata").json()
    assert json_format.MessageToDict(signatures) == json_format.MessageToDict(json_format.ParseDict(
        rest["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap()))


def test_metadata_needs_the_signature_def_field(predictions):
    for fields in ([], ["signature_def", "tags"]):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
        request.model_spec.name = NAME
        error = rpc_error(predictions.GetModelMetadata, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "signature_def" in error.details()


def test_status_of_one_version_and_of_every_version(status):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = NAME
    request.model_spec.version.value = 2
    answer = status.GetModelStatus(request, timeout=60)
    assert [(s.version, s.state, s.status.error_code) for s in answer.model_version_status] == [(2, AVAILABLE, 0)]

    request.model_spec.version_label = "production"
    answer = status.GetModelStatus(request, timeout=60)
    assert [(s.version, s.state) for s in answer.model_version_status] == [(1, AVAILABLE)]

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = NAME
    answer = status.GetModelStatus(request, timeout=60)
    assert sorted((s.version, s.state) for s in answer.model_version_status) == [(1, AVAILABLE), (2, AVAILABLE)]


@pytest.mark.parametrize("changes, code, words", [
    ({"name": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "no-such-model"),
    ({"version": 42}, grpc.StatusCode.NOT_FOUND, "no version 42"),
    ({"label": "staging"}, grpc.StatusCode.NOT_FOUND, "production"),
    ({"key": "images"}, grpc.StatusCode.INVALID_ARGUMENT, "inputs of serving_default are: input"),
    # TF Serving's Predict answers an unknown signature with FAILED_PRECONDITION
    ({"signature": "classify"}, grpc.StatusCode.FAILED_PRECONDITION, "serving_default (predict)"),
])
def test_predict_errors_have_tf_serving_codes(predictions, models, changes, code, words):
    error = rpc_error(predictions.Predict, predict_request(models["sharded"].test_input, **changes))
    assert error.code() == code
    assert words in error.details()


@pytest.mark.parametrize("array, words", [
    (np.zeros((2, 8, 8, 3), np.float64), "must be DT_FLOAT, got DT_DOUBLE"),
    (np.zeros((2, 8, 8, 3), np.int32), "must be DT_FLOAT, got DT_INT32"),
    (np.zeros((8, 8, 3), np.float32), "must have 4 dimensions (shape [-1, 8, 8, 3]), got 3"),
    # sizes are the graph's to check, as in TF Serving: the convolution refuses 4 channels
    (np.zeros((2, 8, 8, 4), np.float32), "refused the input: input depth must be evenly divisible by filter depth"),
])
def test_wrong_dtype_or_shape_is_invalid_argument(predictions, array, words):
    error = rpc_error(predictions.Predict, predict_request(array))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in error.details()


def test_missing_input_is_invalid_argument_naming_it(predictions):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    error = rpc_error(predictions.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing input(s) input" in error.details()


def test_status_errors(status):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "no-such-model"
    assert rpc_error(status.GetModelStatus, request).code() == grpc.StatusCode.NOT_FOUND
    request.model_spec.name = NAME
    request.model_spec.version.value = 42
    assert rpc_error(status.GetModelStatus, request).code() == grpc.StatusCode.NOT_FOUND


def test_classify_on_a_predict_signature_and_an_empty_reload_config_are_refused(predictions, status):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.input.example_list.examples.add()
    error = rpc_error(predictions.Classify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Was: tensorflow/serving/predict" in error.details() and "call :predict" in error.details()
    error = rpc_error(status.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_config_list" in error.details()


def test_version_that_is_not_ready_then_failed_is_a_failed_precondition(converting_server, models, predictions,
                                                                         status):
    client = RegistryClient(converting_server.url)
    model = models["resource_graph"]
    client.push("grpc-typo", checkpoint_files(model), {"output_nodes": "predictions/Softmx"})
    error = rpc_error(predictions.Predict, predict_request(model.test_input, name="grpc-typo", version=1))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only ready versions can be served" in error.details()

    assert client.wait("grpc-typo", 1, timeout=120)["status"] == "failed"
    error = rpc_error(predictions.Predict, predict_request(model.test_input, name="grpc-typo", version=1))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is failed" in error.details() and "predictions/Softmax" in error.details()
    # No ready version at all: "latest" does not exist.
    assert rpc_error(predictions.Predict, predict_request(model.test_input, name="grpc-typo")).code() == \
        grpc.StatusCode.NOT_FOUND

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "grpc-typo"
    [failed] = status.GetModelStatus(request, timeout=60).model_version_status
    assert failed.state == get_model_status_pb2.ModelVersionStatus.END
    assert failed.status.error_code != 0 and "predictions/Softmax" in failed.status.error_message


def test_many_concurrent_predicts_across_versions_are_all_correct(predictions, models):
    cases = [({"version": 1}, models["resource_graph"]), ({"version": 2}, models["sharded"]),
             ({"label": "production"}, models["resource_graph"]), ({}, models["sharded"])]
    calls = [cases[i % len(cases)] for i in range(32)]

    def call(case):
        choice, model = case
        response = predictions.Predict(predict_request(model.test_input, **choice), timeout=60)
        return tf.make_ndarray(response.outputs[OUTPUT_KEY]), model.expected

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, calls))
    assert len(results) == 32
    for got, expected in results:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_a_port_already_in_use_is_a_clear_error(converting_server, grpc_server):
    with pytest.raises(RuntimeError, match=f"cannot serve gRPC on 127.0.0.1:{grpc_server[1]}"):
        start_grpc_server(converting_server.registry, port=grpc_server[1])


GRPC_SERVER_MADE = """
import os
from registry.serving.grpc_server import new_server  # first, as the label service loads gRPC
import grpc
server = new_server()
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    grpc.channel_ready_future(channel).result(timeout=60)
server.stop(None)
print(os.environ.get("GRPC_EXPERIMENTS"))
"""


@pytest.mark.parametrize("operator, classic", [(None, True), ("", False)])
def test_the_server_takes_connections_on_grpcs_classic_poller_unless_the_operator_says_otherwise(operator, classic):
    """The label service's gRPC server reads connections in the thread that polls for calls (gRPC core's
    classic TCP server, whose accepts gRPC's tcp trace logs), not in the EventEngine listener's pool:
    0.15-0.2 ms a call less back to back.  An operator's own GRPC_EXPERIMENTS is kept as given ("": gRPC's defaults)."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env.update(GRPC_VERBOSITY="debug", GRPC_TRACE="tcp")
    if operator is not None:
        env["GRPC_EXPERIMENTS"] = operator
    done = subprocess.run([sys.executable, "-c", GRPC_SERVER_MADE], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == ("-event_engine_listener" if classic else "")
    assert ("tcp_server_posix" in done.stderr) is classic
    assert "Unknown experiment" not in done.stderr  # a gRPC that dropped the switch would say so
