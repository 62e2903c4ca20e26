"""TensorFlow Serving's REST and gRPC APIs over every signature of a version.

A half_plus_two SavedModel built as TF Serving's own test model is (five signatures: predict,
classify, three regress) is pushed once, and answers every REST and gRPC call of TF Serving's
``tensorflow_model_server_test.py`` with the answers that test expects; each refusal is a 4xx (or
its gRPC code) that says what to send instead.  A model with several named inputs and string
outputs, and an Estimator-style classifier whose vocabularies are files, are served too.
"""

from __future__ import annotations

import base64
import json

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from registry.client import RegistryClient
from registry.converter.saved_model import write_archive
from registry.serving.grpc_server import start_grpc_server
from tests import tfmodels
from tests.conftest import make_settings, start_live_server
from tests.tfmodels import example

pytestmark = pytest.mark.slow
NAME = "default"  # as TF Serving's test names its model
RPC_TIMEOUT = 60


def sorted_object(value):
    """TF Serving's SortedObject: JSON with every list sorted, for order-free comparison."""
    if isinstance(value, dict):
        return sorted((k, sorted_object(v)) for k, v in value.items())
    if isinstance(value, list):
        return sorted(sorted_object(v) for v in value)
    return value


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def push(client: RegistryClient, name: str, export, archive) -> dict:
    write_archive(export, archive)
    record = client.wait(name, client.push(name, [("saved_model", archive)], {})["version"], timeout=300)
    assert record["status"] == "ready", record["status_message"]
    return record


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf-serving-api")
    export = tfmodels.build_half_plus_two(root / "half_plus_two")
    multi = tfmodels.build_multi_io(root / "multi_io")
    server, stop = start_live_server(make_settings(root / "home", embedded_workers=1), workers=True)
    client = RegistryClient(server.url)
    record = push(client, NAME, export, root / "half_plus_two.tar.gz")
    push(client, "multi", multi, root / "multi_io.tar.gz")
    grpc_server, port = start_grpc_server(server.registry, port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield {"url": server.url, "client": client, "export": export, "record": record, "root": root,
           "predictions": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "models": model_service_pb2_grpc.ModelServiceStub(channel)}
    channel.close()
    grpc_server.stop(0)
    stop()


def post(served, path: str, body) -> requests.Response:
    return requests.post(f"{served['url']}/v1/models/{path}", data=json.dumps(body), timeout=60)


def refused(response: requests.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    return response.json()["error"]


def rpc_error(method, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        method(request, timeout=RPC_TIMEOUT)
    return info.value


# -- TF Serving's own calls, over REST -------------------------------------------------------------

def test_half_plus_two_keeps_all_five_signatures(served):
    signatures = served["record"]["signatures"]
    assert {name: s["method"] for name, s in signatures.items()} == {
        "serving_default": "tensorflow/serving/predict", "classify_x_to_y": "tensorflow/serving/classify",
        "regress_x_to_y": "tensorflow/serving/regress", "regress_x_to_y2": "tensorflow/serving/regress",
        "regress_x2_to_y3": "tensorflow/serving/regress"}


def test_rest_predict_in_row_and_columnar_format_answers_as_tf_serving(served):
    # x has shape [-1, 1]; TF Serving feeds [3] as it is, and so do we
    assert post(served, f"{NAME}:predict", {"instances": [2.0, 3.0, 4.0]}).json() == {"predictions": [3.0, 3.5, 4.0]}
    assert post(served, f"{NAME}:predict", {"inputs": [2.0, 3.0, 4.0]}).json() == {"outputs": [3.0, 3.5, 4.0]}


def test_rest_classify_and_regress_answer_as_tf_serving(served):
    classify = post(served, f"{NAME}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert classify.json() == {"results": [[["", 3.0]]]}
    regress = post(served, f"{NAME}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert regress.json() == {"results": [3.0]}


def test_rest_regress_runs_each_regress_signature_on_every_example(served):
    examples = [{"x": 2.0}, {"x": -4.0, "x2": 8.0}, {"x": [1.5]}]
    answer = post(served, f"{NAME}/versions/1:regress", {"signature_name": "regress_x_to_y2", "examples": examples})
    assert answer.json() == {"results": [4.0, 1.0, 3.75]}  # 0.5 x + 3


def test_rest_context_is_shared_by_every_example(served):
    body = {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{"x2": 1.0}, {"x2": 7.0}]}
    assert post(served, f"{NAME}:regress", body).json() == {"results": [3.0, 3.0]}


def test_rest_predict_runs_any_signature_by_name(served):
    examples = [b64(example(x=2.0)), b64(example(x=6.0))]
    answer = post(served, f"{NAME}:predict", {"signature_name": "regress_x_to_y2", "instances": examples})
    assert answer.json() == {"predictions": [[4.0], [6.0]]}


def test_rest_status_is_tf_servings_json(served):
    answer = requests.get(f"{served['url']}/v1/models/{NAME}", timeout=30)
    assert answer.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_rest_metadata_is_every_signature_as_the_saved_model_declares_it(served):
    answer = requests.get(f"{served['url']}/v1/models/{NAME}/metadata", timeout=30).json()
    expected = {"model_spec": {"name": NAME, "signature_name": "", "version": "1"},
                "metadata": {"signature_def": {"signature_def": tfmodels.saved_model_signature_defs(served["export"])}}}
    assert sorted_object(answer) == sorted_object(expected)
    by_version = requests.get(f"{served['url']}/v1/models/{NAME}/versions/1/metadata", timeout=30).json()
    assert sorted_object(by_version) == sorted_object(expected)


def test_prometheus_metrics_count_requests_per_signature(served):
    post(served, f"{NAME}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    text = requests.get(f"{served['url']}/monitoring/prometheus/metrics", timeout=30).text
    assert "# TYPE" in text
    counted = {(s.labels["method"], s.labels["signature"], s.labels["status"])
               for family in text_string_to_metric_families(text) if family.name == "registry_serving_requests"
               for s in family.samples if s.name.endswith("_total") and s.labels["model"] == NAME}
    assert ("classify", "classify_x_to_y", "OK") in counted


# -- TF Serving's own calls, over gRPC -------------------------------------------------------------

def predict_request(specify_output: bool, signature: str = "", *, model_name: str = NAME,
                    batch_input: bool = False) -> predict_pb2.PredictRequest:
    """TF Serving's VerifyPredictRequest: x = [2.0] (shape [1], or [1, 1] for a batch), output_filter y
    when asked."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    return request


def assert_model_spec(spec, signature: str) -> None:
    assert (spec.name, spec.signature_name, spec.version.value) == (NAME, signature, 1)


@pytest.mark.parametrize("specify_output", [True, False])
def test_grpc_predict_answers_y_in_float_val_and_echoes_the_model_spec(served, specify_output):
    result = served["predictions"].Predict(predict_request(specify_output), timeout=RPC_TIMEOUT)
    assert list(result.outputs) == ["y"]
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [3.0]
    assert_model_spec(result.model_spec, "serving_default")  # an empty signature_name ran serving_default


def test_grpc_classify_regress_and_multi_inference_answer_as_tf_serving(served):
    stub = served["predictions"]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    result = stub.Classify(request, timeout=RPC_TIMEOUT)
    assert [[(c.label, c.score) for c in cs.classes] for cs in result.result.classifications] == [[("", 3.0)]]
    assert_model_spec(result.model_spec, "classify_x_to_y")

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    result = stub.Regress(request, timeout=RPC_TIMEOUT)
    assert [r.value for r in result.result.regressions] == [3.0]
    assert_model_spec(result.model_spec, "regress_x_to_y")

    request = multi_request([("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")])
    result = stub.MultiInference(request, timeout=RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i, signature in enumerate(["regress_x_to_y", "classify_x_to_y"]):
        assert_model_spec(result.results[i].model_spec, signature)


def examples_request(kind, signature: str, *, model_name: str = NAME, x: float = 2.0):
    """A ClassificationRequest or RegressionRequest (``kind``) of one example x = ``x``, as TF Serving's test."""
    request = kind()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([x])
    return request


def multi_request(tasks, *, model_name: str = NAME, **features) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = model_name
        task.model_spec.signature_name = signature
        task.method_name = f"tensorflow/serving/{method}"
    values = features or {"x": 2.0}
    example = request.input.example_list.examples.add()
    for key, value in values.items():
        example.features.feature[key].float_list.value.append(value)
    return request


def test_grpc_multi_inference_answers_in_task_order_from_one_run(served):
    tasks = [("regress_x_to_y2", "regress"), ("classify_x_to_y", "classify"), ("regress_x_to_y", "regress")]
    request = multi_request(tasks)
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(4.0)
    result = served["predictions"].MultiInference(request, timeout=RPC_TIMEOUT)
    assert [r.regression_result.regressions[1].value for r in (result.results[0], result.results[2])] == [5.0, 4.0]
    assert result.results[1].classification_result.classifications[1].classes[0].score == 4.0
    assert [r.model_spec.signature_name for r in result.results] == [t[0] for t in tasks]


def test_grpc_regress_takes_examples_with_context(served):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "regress_x_to_y"
    listed = request.input.example_list_with_context
    listed.context.features.feature["x"].float_list.value.append(4.0)
    for value in (1.0, 2.0):
        listed.examples.add().features.feature["x2"].float_list.value.append(value)
    result = served["predictions"].Regress(request, timeout=RPC_TIMEOUT)
    assert [r.value for r in result.result.regressions] == [4.0, 4.0]


def test_grpc_metadata_has_every_signature_and_status_the_version(served):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = NAME
    result = served["predictions"].GetModelMetadata(request, timeout=RPC_TIMEOUT)
    assert_model_spec(result.model_spec, "")
    assert list(result.metadata) == ["signature_def"]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert result.metadata["signature_def"].Unpack(signatures)
    as_json = {name: json_format.MessageToDict(sig, preserving_proto_field_name=True,
                                               always_print_fields_with_no_presence=True)
               for name, sig in signatures.signature_def.items()}
    assert as_json == tfmodels.saved_model_signature_defs(served["export"])

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = NAME
    result = served["models"].GetModelStatus(status, timeout=RPC_TIMEOUT)
    assert [(s.version, s.status.error_code) for s in result.model_version_status] == [(1, 0)]


# -- several named inputs and outputs, strings -----------------------------------------------------

def test_predict_with_named_inputs_and_outputs_in_both_formats(served):
    rows = post(served, "multi:predict", {"instances": [{"a": [1.0, 2.0], "b": 0.5, "text": "hi"},
                                                       {"a": [3.0, 4.0], "b": -1.0, "text": b64(b"\x00yo")}]})
    assert rows.json() == {"predictions": [
        {"total": 3.5, "echo": "hi!", "raw_bytes": b64(b"hi\xff")},
        {"total": 6.0, "echo": "\u0000yo!", "raw_bytes": b64(b"\x00yo\xff")}]}
    columns = post(served, "multi:predict", {"inputs": {"a": [[1.0, 2.0]], "b": [0.5], "text": ["hi"]}})
    assert columns.json() == {"outputs": {"total": [3.5], "echo": ["hi!"], "raw_bytes": [b64(b"hi\xff")]}}
    single = post(served, "multi:predict", {"signature_name": "sum_only", "inputs": {"a": [[1.0, 2.0]], "b": [1.0]}})
    assert single.json() == {"outputs": [4.0]}  # one output: answered without its name


def test_grpc_predict_on_a_named_signature_with_output_filter(served):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "multi"
    request.model_spec.signature_name = "serving_default"
    request.inputs["a"].CopyFrom(tf.make_tensor_proto(np.array([[1.0, 2.0]], np.float32)))
    request.inputs["b"].CopyFrom(tf.make_tensor_proto(np.array([0.5], np.float32)))
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array([b"hi"], object)))
    request.output_filter.extend(["raw_bytes", "total"])
    result = served["predictions"].Predict(request, timeout=RPC_TIMEOUT)
    assert sorted(result.outputs) == ["raw_bytes", "total"]
    assert list(result.outputs["raw_bytes"].string_val) == [b"hi\xff"]
    assert list(result.outputs["total"].float_val) == [3.5]
    assert result.model_spec.signature_name == "serving_default"


# -- refusals over REST ----------------------------------------------------------------------------

@pytest.mark.parametrize("body, words", [
    ({"signature_name": "nope", "instances": [2.0]},
     ['Serving signature key "nope" not found', "classify_x_to_y (classify)", "serving_default (predict)"]),
    ({"signature_name": 7, "instances": [2.0]}, ["'signature_name' key must be a string"]),
    ({"instances": [2.0], "inputs": [2.0]}, ["only one of 'inputs' or 'instances'", "not both"]),
    ({"instances": [[2.0], [3.0, 4.0]]}, ["ragged"]),
    ({"instances": ["two"]}, ["expected numbers for x"]),
    ({"inputs": {"z": [2.0]}}, ["unknown input(s) z", "inputs are x"]),
    ({"signature_name": "regress_x_to_y", "instances": [{"b64": "not base64!"}]}, ["base64"]),
    ({"signature_name": "regress_x_to_y", "instances": [["a"], ["b", "c"]]}, ["ragged"]),
])
def test_malformed_predict_requests_are_400s_saying_what_to_send(served, body, words):
    error = refused(post(served, f"{NAME}:predict", body))
    for word in words:
        assert word in error


@pytest.mark.parametrize("verb, body, words", [
    ("classify", {"examples": [{"x": 2.0}]},
     ["method_name to be tensorflow/serving/classify. Was: tensorflow/serving/predict", "call :predict",
      "classify_x_to_y"]),
    ("regress", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
     ["call :classify", "regress_x2_to_y3, regress_x_to_y, regress_x_to_y2"]),
    ("regress", {"signature_name": "nope", "examples": [{"x": 2.0}]},
     ["No signature was found with the name: nope", "regress_x_to_y (regress)"]),
    ("regress", {"signature_name": "regress_x_to_y"}, ["'examples' is expected", '{"examples": [{"feature"']),
    ("regress", {"signature_name": "regress_x_to_y", "examples": []}, ["empty array", "at least one example"]),
    ("regress", {"signature_name": "regress_x_to_y", "examples": {"x": 2.0}}, ["list/array"]),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [[2.0]]}, ["Example must be JSON object"]),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": None}]}, ["unexpected JSON type: Null"]),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": [[2.0]]}]}, ["unexpected JSON type: Array"]),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": [1, 2.5]}]},
     ["Unexpected element type in feature: x expecting type: int64", "write 2.0"]),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2**64 - 1}]}, ["Only int64 is supported"]),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": {"b64": "%%%"}}]}, ["base64"]),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 1e300}]}, ["without loss of precision"]),
    ("regress", {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{"x": 3.0}]},
     ["x are in the context and in example 0", "must not appear in the examples"]),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x2": 2.0}]},
     ["refused the input", "x", "is required"]),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2}]}, ["refused the input", "x"]),
    ("regress", {"signature_name": "regress_x2_to_y3", "examples": [{"x2": 2.0}]},
     ["takes x2:0 (float32) as its input, not serialized tf.Examples", "call :predict"]),
])
def test_malformed_classify_and_regress_requests_are_400s_saying_what_to_send(served, verb, body, words):
    error = refused(post(served, f"{NAME}:{verb}", body))
    for word in words:
        assert word in error, error


def test_classify_on_an_unknown_model_or_version_is_a_404(served):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert "nothing-here" in refused(post(served, "nothing-here:classify", body), 404)
    refused(post(served, f"{NAME}/versions/9:classify", body), 404)
    refused(requests.get(f"{served['url']}/v1/models/{NAME}/versions/9/metadata", timeout=30), 404)


# -- refusals over gRPC ----------------------------------------------------------------------------

def test_grpc_predict_refusals_have_tf_servings_codes(served):
    stub = served["predictions"]
    error = rpc_error(stub.Predict, predict_request(False, signature="nope"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "nope" not found' in error.details()
    assert "regress_x_to_y (regress)" in error.details()
    request = predict_request(False)
    request.output_filter.append("z")
    error = rpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: z" in error.details() and "{y}" in error.details()
    request = predict_request(False)
    request.output_filter.extend(["y", "y"])
    assert "duplicate output tensor alias: y" in rpc_error(stub.Predict, request).details()
    request = predict_request(False)
    request.inputs["x"].dtype = types_pb2.DT_DOUBLE
    error = rpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "must be DT_FLOAT, got DT_DOUBLE" in error.details()


def test_grpc_classify_and_regress_refusals(served):
    stub = served["predictions"]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    error = rpc_error(stub.Classify, request)  # serving_default is a predict signature
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Was: tensorflow/serving/predict" in error.details() and "classify_x_to_y" in error.details()

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "regress_x_to_y"
    error = rpc_error(stub.Regress, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "Input is empty" in error.details()

    listed = request.input.example_list_with_context
    listed.context.features.feature["x"].float_list.value.append(1.0)
    listed.examples.add().features.feature["x"].float_list.value.append(2.0)
    error = rpc_error(stub.Regress, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "must not appear in the examples" in error.details()


@pytest.mark.parametrize("tasks, code, words", [
    ([("regress_x_to_y", "regress"), ("regress_x_to_y", "regress")], grpc.StatusCode.INVALID_ARGUMENT,
     "Duplicate evaluation of signature: regress_x_to_y"),
    ([("regress_x_to_y", "classify")], grpc.StatusCode.INVALID_ARGUMENT,
     "Expected classification signature method_name to be tensorflow/serving/classify"),
    ([("regress_x_to_y", "regress"), ("regress_x2_to_y3", "regress")], grpc.StatusCode.INVALID_ARGUMENT,
     "Input tensor must be the same for all Signatures"),
    ([("nope", "regress")], grpc.StatusCode.INVALID_ARGUMENT, "Requested signature not found in model graph: nope"),
    ([("serving_default", "predict")], grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name"),
])
def test_grpc_multi_inference_refusals(served, tasks, code, words):
    error = rpc_error(served["predictions"].MultiInference, multi_request(tasks))
    assert error.code() == code
    assert words in error.details()


def test_grpc_multi_inference_runs_one_model(served):
    request = multi_request([("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")])
    request.tasks[1].model_spec.name = "multi"
    error = rpc_error(served["predictions"].MultiInference, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "same model name" in error.details()


# -- a classifier whose vocabularies are files -----------------------------------------------------

def test_a_vocabulary_file_classifier_classifies_as_the_saved_model_does(served):
    root = served["root"] / "vocabulary"
    root.mkdir()
    export = tfmodels.build_vocabulary_classifier(root)
    record = push(served["client"], "words", export, root / "vocabulary.tar.gz")
    assert set(record["signatures"]) == {"classification", "serving_default"}
    words = ["cherry", "apple", "durian", "banana"]  # durian: out of vocabulary
    expected = tfmodels.run_signature(export, "classification", {"inputs": [example(word=w) for w in words]})
    labels = [[c.decode() for c in row] for row in expected["classes"]]
    assert labels[0] == tfmodels.VOCABULARY_CLASSES

    answer = post(served, "words:classify", {"signature_name": "classification",
                                             "examples": [{"word": w} for w in words]})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [[label for label, _ in row] for row in results] == labels
    # the frozen graph's kernels may round a softmax differently in the last bit (oneDNN, batching)
    np.testing.assert_allclose(np.array([[score for _, score in row] for row in results], np.float32),
                               expected["scores"], rtol=0, atol=1e-6)

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "words"
    request.model_spec.signature_name = "classification"
    for word in words:
        request.input.example_list.examples.add().features.feature["word"].bytes_list.value.append(word.encode())
    result = served["predictions"].Classify(request, timeout=RPC_TIMEOUT)
    assert [[c.label for c in row.classes] for row in result.result.classifications] == labels
    np.testing.assert_allclose(
        np.array([[c.score for c in row.classes] for row in result.result.classifications], np.float32),
        expected["scores"], rtol=0, atol=1e-6)


# -- the conversions themselves ----------------------------------------------------------------------

def test_json_features_become_the_tf_example_tf_serving_builds():
    from registry.serving.examples import example_from_json

    built = example_from_json({"count": 3, "weight": 2.5, "name": "ab", "raw": b64(b"\x00\xff"), "flag": True,
                               "floats": [1.0, -2.0], "ids": [1, 2, 3], "none": []}, "examples[0]")
    expected = tf.train.Example()
    feature = expected.features.feature
    feature["count"].int64_list.value.append(3)
    feature["weight"].float_list.value.append(2.5)
    feature["name"].bytes_list.value.append(b"ab")
    feature["raw"].bytes_list.value.append(b"\x00\xff")
    feature["flag"].int64_list.value.append(1)
    feature["floats"].float_list.value.extend([1.0, -2.0])
    feature["ids"].int64_list.value.extend([1, 2, 3])
    feature["none"].SetInParent()
    assert built == expected


def test_classification_results_follow_classifier_cc():
    from registry.serving.examples import classifications
    from registry.serving.loader import TensorSpec

    classes = TensorSpec("classes", "classes:0", tf.string, [None, 2])
    scores = TensorSpec("scores", "scores:0", tf.float32, [None, 2])
    outputs = {"classes:0": np.array([[b"a", b"b"]], object), "scores:0": np.array([[0.25, 0.75]], np.float32)}
    assert classifications(classes, scores, outputs, 1) == [[("a", 0.25), ("b", 0.75)]]
    assert classifications(None, scores, outputs, 1) == [[("", 0.25), ("", 0.75)]]  # scores only: no label
    assert classifications(classes, None, outputs, 1) == [[("a", 0.0), ("b", 0.0)]]  # classes only: score 0
    outputs["scores:0"] = np.array([[0.25, 0.5, 0.25]], np.float32)
    with pytest.raises(Exception, match="should match in dim_size"):
        classifications(classes, scores, outputs, 1)
    with pytest.raises(Exception, match="batch size of 2"):
        classifications(None, scores, outputs, 2)
