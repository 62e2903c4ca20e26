"""``tensorflow_model_server`` (``registry model-server``): TF Serving's command line, served by the registry.

The servers here are started the way TF Serving's own ``tensorflow_model_server_test.py`` starts
the real one (the same flags, version folders named ``00000123``, a model config file polled for
changes, a monitoring config, a Unix socket, gRPC channel arguments), waited for as that test waits
(a ``Predict`` of a missing model until its error names a ``Servable``), and asked what that test
asks, with the answers it expects.  Real processes, real exports built here, real gRPC and HTTP.
"""

from __future__ import annotations

import re
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from registry import catalog
from registry.db import Database
from tests import tfmodels
from tests.helpers import free_port, stop_server
from tests.test_tf_serving_api import examples_request, multi_request, predict_request, sorted_object

SERVER = Path(sys.executable).with_name("tensorflow_model_server")
RPC_TIMEOUT = 5.0
START_TIMEOUT = 240.0


# -- exports, built once -------------------------------------------------------------------------

def _tf2_export(path: Path, build) -> None:
    root, signatures = build()
    tf.saved_model.save(root, str(path), signatures=signatures)


def _half_plus_three():
    root = tf.Module()
    root.a, root.b = tf.Variable(0.5), tf.Variable(3.0)
    root.f = tf.function(lambda x: {"y": root.a * x + root.b}, input_signature=[tf.TensorSpec(None, tf.float32)])
    return root, {"serving_default": root.f}


def _v1_times_v2():
    """TF Serving's test_tf_saved_model_save: y = v1 * v2 * x with v1 = 3, v2 = 2, any shape."""
    root = tf.Module()
    root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x}, input_signature=[tf.TensorSpec(None, tf.float32)])
    return root, {"serving_default": root.f}


def _two_signatures():
    """TF Serving's test_tf_saved_model_save_multiple_signatures: outputs that do not depend on x."""
    root = tf.Module()
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    return root, {"serving_default": root.f, "custom_signature_key": root.g}


class _Tf2HalfPlusTwo(tf.Module):
    """A TF2 half_plus_two as TF Serving's saved_model_half_plus_two_tf2_cpu: classify and regress signatures
    that parse serialized tf.Examples inside their functions, saved (as TF2 saves every signature) as
    predict signatures shaped for the call."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = tf.Variable(0.5), tf.Variable(2.0), tf.Variable(3.0)

    def _x(self, serialized):
        return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_x_to_y(self, inputs):
        return {"scores": self.a * self._x(inputs) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_x_to_y2(self, inputs):
        return {"outputs": self.a * self._x(inputs) + self.c}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def predict(self, x):
        return {"y": self.a * x + self.b}


def _tf2_examples():
    root = _Tf2HalfPlusTwo()
    return root, {"serving_default": root.predict, "classify_x_to_y": root.classify_x_to_y,
                  "regress_x_to_y2": root.regress_x_to_y2}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Model base paths, each with a version folder 00000123, as TF Serving's testdata lays them out."""
    top = tmp_path_factory.mktemp("tfs-models")
    bases = {name: top / name for name in ("half_plus_two", "half_plus_three", "tf2_module", "two_signatures",
                                            "tf2_examples")}
    tfmodels.build_half_plus_two(bases["half_plus_two"] / "00000123")
    _tf2_export(bases["half_plus_three"] / "00000123", _half_plus_three)
    _tf2_export(bases["tf2_module"] / "00000123", _v1_times_v2)
    _tf2_export(bases["two_signatures"] / "00000123", _two_signatures)
    _tf2_export(bases["tf2_examples"] / "00000123", _tf2_examples)
    (top / "lite" / "00000001").mkdir(parents=True)
    (top / "lite" / "00000001" / "model.tflite").write_bytes(b"TFL3")
    (top / "monitoring_config.txt").write_text(
        'prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n')
    return {**bases, "top": top}


# -- servers started as TF Serving's test starts one ---------------------------------------------

class ModelServer:
    def __init__(self, *flags: str, env: dict | None = None) -> None:
        self.port, self.rest_port = free_port(), free_port()
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"model-server-{self.port}.log"
        self.log = open(self.log_path, "w+")
        command = [str(SERVER), f"--port={self.port}", f"--rest_api_port={self.rest_port}",
                   "--rest_api_timeout_in_ms=5000", *flags]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env={**environment,
                                                                                             **(env or {})})
        self.address = f"localhost:{self.port}"
        self.rest = f"http://localhost:{self.rest_port}"

    def wait_ready(self) -> None:
        """TF Serving's WaitForServerReady: a Predict of a missing model until its error names a Servable."""
        deadline = time.monotonic() + START_TIMEOUT
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "intentionally_missing_model"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited:\n{self.output()}"
            with grpc.insecure_channel(self.address) as channel:
                try:
                    prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, RPC_TIMEOUT)
                except grpc.RpcError as error:
                    if "Servable" in (error.details() or ""):
                        return
            time.sleep(0.5)
        raise AssertionError(f"not ready within {START_TIMEOUT:g} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            stop_server(self.proc)
        self.log.close()
        return self.proc.returncode

    def home(self) -> Path:
        """The registry folder it says it keeps its versions in."""
        found = re.search(r"registry: sqlite:///(\S+)/registry\.db", self.output())
        assert found, self.output()
        return Path(found.group(1))


@pytest.fixture(scope="module")
def single(exports, tmp_path_factory):
    """``--model_name=default --model_base_path=...`` with a monitoring config, a Unix socket and channel
    arguments, as TF Serving's test runs its server for half_plus_two."""
    socket_path = tmp_path_factory.mktemp("uds") / "tf-serving.sock"
    stale = Path(tempfile.gettempdir()) / "registry-model-server-999999999-killed"  # a server SIGKILL left behind
    stale.mkdir(exist_ok=True)
    server = ModelServer(f"--grpc_socket_path={socket_path}", "--model_name=default",
                         f"--model_base_path={exports['half_plus_two']}",
                         f"--monitoring_config_file={exports['top'] / 'monitoring_config.txt'}",
                         "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
                         "--prefer_tflite_model=true", "--enable_batching")  # preferences: SavedModels served
    try:
        server.wait_ready()
        server.socket = socket_path
        server.stale = stale
        yield server
    finally:
        home = server.home()
        assert server.stop() == 0
        assert not home.exists(), "its temporary registry outlived it"


def verify_predict(address: str, expected_output: float, expected_version: int, model_name: str = "default",
                   specify_output: bool = True, batch_input: bool = False,
                   signature_name: str = "serving_default") -> None:
    """TF Serving's VerifyPredictRequest: x = [2.0] (or [[2.0]]) in, y's one float and the model_spec out."""
    request = predict_request(specify_output, signature_name, model_name=model_name, batch_input=batch_input)
    with grpc.insecure_channel(address) as channel:
        result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, RPC_TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected_output]
    assert (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value) == (
        model_name, signature_name, expected_version)


def rest(server: ModelServer, path: str, body=None) -> dict:
    answer = requests.post(f"{server.rest}{path}", json=body, timeout=30) if body is not None \
        else requests.get(f"{server.rest}{path}", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


# -- the calls of TF Serving's model-server test --------------------------------------------------

def test_get_model_status_names_the_folder_version(single):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    with grpc.insecure_channel(single.address) as channel:
        result = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, RPC_TIMEOUT)
    assert [(s.version, s.status.error_code) for s in result.model_version_status] == [(123, 0)]


def test_classify_regress_and_multi_inference(single):
    with grpc.insecure_channel(single.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        classify = examples_request(classification_pb2.ClassificationRequest, "classify_x_to_y", model_name="default")
        result = stub.Classify(classify, RPC_TIMEOUT)
        assert [[c.score for c in cls.classes] for cls in result.result.classifications] == [[3.0]]
        assert (result.model_spec.signature_name, result.model_spec.version.value) == ("classify_x_to_y", 123)

        regress = examples_request(regression_pb2.RegressionRequest, "regress_x_to_y", model_name="default")
        result = stub.Regress(regress, RPC_TIMEOUT)
        assert [r.value for r in result.result.regressions] == [3.0]
        assert result.model_spec.version.value == 123

        multi = multi_request([("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")], model_name="default")
        result = stub.MultiInference(multi, RPC_TIMEOUT)
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [(r.model_spec.name, r.model_spec.signature_name, r.model_spec.version.value) for r in result.results] == [
        ("default", "regress_x_to_y", 123), ("default", "classify_x_to_y", 123)]


def test_predict_with_and_without_output_filter_and_over_the_unix_socket(single):
    verify_predict(single.address, 3.0, 123)
    verify_predict(single.address, 3.0, 123, specify_output=False)
    verify_predict(f"unix:{single.socket}", 3.0, 123, specify_output=False)


def test_rest_answers_as_tf_servings_test_expects(single, exports):
    assert rest(single, "/v1/models/default:classify",
                {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) == {"results": [[["", 3.0]]]}
    assert rest(single, "/v1/models/default:regress",
                {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}) == {"results": [3.0]}
    assert rest(single, "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]}) == {
        "predictions": [3.0, 3.5, 4.0]}
    assert rest(single, "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]}) == {"outputs": [3.0, 3.5, 4.0]}
    assert rest(single, "/v1/models/default") == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    expected = {"model_spec": {"name": "default", "signature_name": "", "version": "123"},
                "metadata": {"signature_def": {"signature_def": tfmodels.saved_model_signature_defs(
                    exports["half_plus_two"] / "00000123")}}}
    assert sorted_object(rest(single, "/v1/models/default/metadata")) == sorted_object(expected)
    metrics = requests.get(f"{single.rest}/monitoring/prometheus/metrics", timeout=30)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def test_the_temporary_registry_of_a_killed_server_is_removed(single):
    assert not single.stale.exists()


def test_a_version_not_served_is_tf_servings_not_found(single):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.model_spec.version.value = 7
    with grpc.insecure_channel(single.address) as channel, pytest.raises(grpc.RpcError) as error:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, RPC_TIMEOUT)
    assert error.value.code() is grpc.StatusCode.NOT_FOUND
    assert error.value.details().startswith("Servable not found for request: Specific(default, 7)")


# -- a model config file, polled ------------------------------------------------------------------

def _config(entries: dict[str, Path], labels: dict[str, dict[str, int]] | None = None) -> str:
    blocks = []
    for name, base in entries.items():
        label_lines = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n'
                              for k, v in (labels or {}).get(name, {}).items())
        blocks.append(f'  config {{\n    name: "{name}",\n    base_path: "{base}",\n'
                      f'    model_platform: "tensorflow"\n{label_lines}  }}\n')
    return "model_config_list {\n" + "".join(blocks) + "}\n"


@pytest.fixture(scope="module")
def configured(exports, tmp_path_factory):
    folder = tmp_path_factory.mktemp("config")
    config = folder / "model_config.txt"
    config.write_text(_config({**{name: exports[name] for name in (
        "half_plus_two", "half_plus_three", "tf2_module", "two_signatures", "tf2_examples")},
        "misplaced": exports["half_plus_three"] / "00000123",  # a SavedModel where version folders belong
        "lite": exports["top"] / "lite"}))
    server = ModelServer(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                         "--file_system_poll_wait_seconds=1")
    try:
        server.wait_ready()
        server.config = config
        yield server
    finally:
        server.stop()


def test_good_model_config_serves_every_model(configured):
    for specify_output in (True, False):
        verify_predict(configured.address, 3.0, 123, model_name="half_plus_two", specify_output=specify_output)
        verify_predict(configured.address, 4.0, 123, model_name="half_plus_three", specify_output=specify_output)


def test_tf2_saved_models_as_tf_servings_test_saves_them(configured):
    verify_predict(configured.address, 12.0, 123, model_name="tf2_module", specify_output=False)
    verify_predict(configured.address, 2.0, 123, model_name="two_signatures", signature_name="custom_signature_key")
    verify_predict(configured.address, 1.0, 123, model_name="two_signatures")


def test_tf2_classify_and_regress_signatures_answer_as_tf_serving_does(configured):
    """TF Serving's testClassifyTf2 / testRegressTf2 / testMultiInferenceTf2: TF2 writes every signature as
    predict; one shaped for classify (regress) answers Classify (Regress), its examples parsed in its function."""
    assert "tf2_examples v123: frozen and verified (3 signatures" in configured.output()
    with grpc.insecure_channel(configured.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        classify = examples_request(classification_pb2.ClassificationRequest, "classify_x_to_y",
                                    model_name="tf2_examples")
        result = stub.Classify(classify, RPC_TIMEOUT)
        assert result.result.classifications[0].classes[0].score == 3.0
        regress = examples_request(regression_pb2.RegressionRequest, "regress_x_to_y2", model_name="tf2_examples")
        assert stub.Regress(regress, RPC_TIMEOUT).result.regressions[0].value == 4.0
        multi = multi_request([("regress_x_to_y2", "regress"), ("classify_x_to_y", "classify")],
                              model_name="tf2_examples")
        results = stub.MultiInference(multi, RPC_TIMEOUT).results
        assert results[0].regression_result.regressions[0].value == 4.0
        assert results[1].classification_result.classifications[0].classes[0].score == 3.0
        # serving_default (x -> y) is not shaped for regress: refused
        predict_shaped = examples_request(regression_pb2.RegressionRequest, "", model_name="tf2_examples")
        with pytest.raises(grpc.RpcError) as error:
            stub.Regress(predict_shaped, RPC_TIMEOUT)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "regress_x_to_y2" in error.value.details()  # the signature that fits the call is named
    assert rest(configured, "/v1/models/tf2_examples:classify",
                {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) == {"results": [[["", 3.0]]]}


def test_a_base_path_without_version_folders_is_explained(configured, exports):
    assert (f"No versions of servable misplaced found under base path {exports['half_plus_three'] / '00000123'}: "
            "it holds a SavedModel itself") in configured.output()
    assert f"move it to {exports['half_plus_three'] / '00000123' / '1'}" in configured.output()
    assert "lite found under base path" in configured.output()
    assert "TF Lite models (model.tflite), which the registry does not serve" in configured.output()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "misplaced"
    with grpc.insecure_channel(configured.address) as channel, pytest.raises(grpc.RpcError) as error:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, RPC_TIMEOUT)
    assert error.value.code() is grpc.StatusCode.NOT_FOUND
    assert error.value.details().startswith("Servable not found for request: Latest(misplaced)")


def test_config_and_version_folders_are_polled(configured, exports):
    """A model added to the config is served, with its version label; a new version folder becomes latest."""
    configured.config.write_text(_config(
        {"half_plus_two": exports["half_plus_two"], "later": exports["half_plus_three"]},
        labels={"later": {"stable": 123}}))
    started = time.monotonic()
    _eventually(lambda: verify_predict(configured.address, 4.0, 123, model_name="later", specify_output=False))
    print(f"config change served after {time.monotonic() - started:.1f} s")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "later"
    request.model_spec.version_label = "stable"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0]))
    with grpc.insecure_channel(configured.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        _eventually(lambda: stub.Predict(request, RPC_TIMEOUT))
        assert stub.Predict(request, RPC_TIMEOUT).model_spec.version.value == 123

    shutil.copytree(exports["half_plus_two"] / "00000123", exports["half_plus_two"] / "00000124")
    _eventually(lambda: verify_predict(configured.address, 3.0, 124, model_name="half_plus_two"))
    verify_predict(configured.address, 3.0, 124, model_name="half_plus_two")


def _eventually(check, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (AssertionError, grpc.RpcError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


# -- refusals -------------------------------------------------------------------------------------

def _run(*flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    return subprocess.run([str(SERVER), f"--port={free_port()}", *flags], capture_output=True, text=True,
                          timeout=timeout, env=environment)


def test_a_bad_model_config_is_refused_with_tf_servings_message(tmp_path):
    bad = tmp_path / "bad_model_config.txt"
    bad.write_text("improperly formatted file\n")
    result = _run(f"--model_config_file={bad}")
    assert result.returncode == 1
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, words", [
    ((), "--model_base_path"),
    (("--model_base_path=s3://bucket/models/x",), "not a local folder"),
    (("--model_base_path=/models/x", "--ssl_config_file=/etc/ssl.conf"), "TLS"),
])
def test_what_it_cannot_serve_is_refused_saying_what_to_do(flags, words):
    result = _run(*flags)
    assert result.returncode == 1
    assert words in result.stderr and "Traceback" not in result.stderr


def test_a_taken_port_is_said_at_once(exports):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([str(SERVER), f"--port={port}", f"--model_base_path={exports['half_plus_two']}"],
                                capture_output=True, text=True, timeout=120,
                                env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")})
    assert result.returncode == 1
    assert f"cannot listen on 0.0.0.0:{port} (--port)" in result.stderr and "pick another --port" in result.stderr
    assert time.monotonic() - started < 30, "it converted the versions before finding the port taken"


def test_a_named_registry_home_keeps_the_imported_versions(exports, tmp_path):
    """With REGISTRY_HOME set the imported versions stay there, for ``registry serve`` to show (without it,
    the ``single`` server's temporary registry is checked to go when that server stops)."""
    home = tmp_path / "home"
    server = ModelServer("--model_name=hpt", f"--model_base_path={exports['half_plus_three']}",
                         env={"REGISTRY_HOME": str(home)})
    try:
        server.wait_ready()
        verify_predict(server.address, 4.0, 123, model_name="hpt", specify_output=False)
        assert server.home() == home.resolve()
    finally:
        assert server.stop() == 0
    db = Database(f"sqlite:///{home / 'registry.db'}")
    try:
        version = catalog.get_version(db, "hpt", "123")
    finally:
        db.dispose()
    assert (version.status, version.source, version.version) == ("ready", "saved_model", 123)
