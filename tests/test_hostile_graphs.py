"""Untrusted graphs: graphs that read a file (top level and inside a function body),
write a file or call Python are pushed over real HTTP to a registry with an embedded
converter; they are flagged, refused at every entry point that would run them, and
the file they name is never opened.  An admin's per-model op allowlist lets a
graph run, is audited, and refuses it again once removed.

"Never opened" is proved with a FIFO: a graph that opened it for reading would
block in ``open`` (nobody writes to it), and while a reader is blocked there a
non-blocking writer's ``open`` succeeds; with no reader it fails with ENXIO.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from click.testing import CliRunner
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from registry import auth, safety
from registry.auth.audit import Actor
from registry.cli import main as cli
from registry.client import RegistryClient
from registry.entities import READY, VersionInfo
from registry.errors import Conflict
from registry.serving.grpc_server import start_grpc_server
from tests import tfmodels
from tests.helpers import bearer

pytestmark = pytest.mark.slow

PYTHON_CALLS: list[str] = []  # what the graphs' Python callbacks would record if anything ran them
TEST_INPUT = [[1.0, 2.0, 3.0, 4.0]]


def _callback(name: str):
    def leak(values):
        PYTHON_CALLS.append(name)
        return values
    return leak


def reader_is_waiting(fifo: Path) -> bool:
    """True when some process has the FIFO open for reading (or is blocked opening it)."""
    assert stat.S_ISFIFO(fifo.stat().st_mode), f"{fifo} is no longer a FIFO"
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)  # a reader was there: closing gives it end-of-file, and the test fails
    return True


@pytest.fixture(scope="module")
def tokens(converting_server):
    db = converting_server.registry.db
    return {scope: auth.create_token(db, f"{scope}-token", scope, Actor("tests"))[1]
            for scope in ("read", "write", "admin")}


@pytest.fixture(scope="module")
def hostile(converting_server, tokens, tmp_path_factory):
    """One model per hostile graph, pushed over HTTP and converted; what each one names."""
    root = tmp_path_factory.mktemp("hostile")
    secret = root / "secret.fifo"
    os.mkfifo(secret)
    written = root / "written-by-graph.txt"
    graphs = root / "graphs"
    keep_alive = []
    cases = {
        "read-top": ("ReadFile", [("frozen", tfmodels.build_reading_frozen(graphs / "rt", secret))]),
        "read-fn": ("ReadFile", [("frozen", tfmodels.build_reading_frozen(graphs / "rf", secret, in_function=True))]),
        "write-top": ("WriteFile", [("frozen", tfmodels.build_hostile_frozen(graphs / "wt", written))]),
        "write-fn": ("WriteFile", [("frozen", tfmodels.build_hostile_frozen(graphs / "wf", written,
                                                                            in_function=True))]),
    }
    for name, eager, op in (("numpy-function", False, "PyFunc"), ("py-function", True, "EagerPyFunc")):
        path, graph = tfmodels.build_python_frozen(graphs / name, _callback(name), eager=eager)
        keep_alive.append(graph)  # keeps the callback registered under the token the GraphDef names
        cases[name] = (op, [("frozen", path)])
    checkpoint = tfmodels.build_reading_checkpoint(graphs / "ckpt", secret)
    cases["read-checkpoint"] = ("ReadFile", [("meta", checkpoint.meta), ("index", checkpoint.index)]
                                + [("data", p) for p in checkpoint.data])
    client = RegistryClient(converting_server.url, token=tokens["write"])
    for name, (_, files) in cases.items():
        client.push(name, files, {"output_nodes": "output"})
    records = {name: client.wait(name, 1, timeout=180) for name in cases}
    grpc_server, port = start_grpc_server(converting_server.registry, port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield {"url": converting_server.url, "cases": {n: op for n, (op, _) in cases.items()}, "records": records,
           "secret": secret, "written": written, "root": root, "client": client,
           "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel), "graphs": keep_alive}
    channel.close()
    grpc_server.stop(grace=1)


def nothing_was_touched(hostile) -> None:
    assert not reader_is_waiting(hostile["secret"]), "a graph opened the secret file"
    assert not hostile["written"].exists(), "a graph wrote its file"
    assert PYTHON_CALLS == [], "a graph's Python callback ran"


def grpc_predict(stub, name: str, version: int | None = None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["input"].CopyFrom(tf.make_tensor_proto(np.array(TEST_INPUT, np.float32)))
    return stub.Predict(request, timeout=60)


CASES = ["read-top", "read-fn", "write-top", "write-fn", "numpy-function", "py-function", "read-checkpoint"]


@pytest.mark.parametrize("name", CASES)
def test_hostile_graph_is_flagged_naming_the_op_and_never_run_by_the_converter(hostile, name):
    op = hostile["cases"][name]
    record = hostile["records"][name]
    assert record["status"] == "ready", record["status_message"]
    assert record["safety"]["flagged"] is True
    flagged = {f["op"]: f for f in record["safety"]["flags"]}
    assert op in flagged and flagged[op]["allowed"] is False
    assert record["verification"]["status"] == "skipped"
    assert record["verification"]["reason"].startswith("flagged") and op in record["verification"]["reason"]
    assert op in record["refusal"] and "allow-ops" in record["refusal"]
    assert op in record["status_message"]
    nothing_was_touched(hostile)


@pytest.mark.parametrize("name", CASES)
def test_hostile_graph_is_refused_with_the_reason_at_every_entry_point(hostile, name, tmp_path):
    op, url = hostile["cases"][name], hostile["url"]
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    answers = {
        "predict": requests.post(f"{url}/v1/models/{name}/versions/1:predict", json={"instances": TEST_INPUT},
                                 timeout=60),
        "predict latest": requests.post(f"{url}/v1/models/{name}:predict", json={"instances": TEST_INPUT},
                                        timeout=60),
        "label": requests.post(f"{url}/v1/models/{name}/versions/1:label", data=image.read_bytes(),
                               headers={"Content-Type": "image/png"}, timeout=60),
        "compare": requests.post(f"{url}/v1/models/{name}:compare", params={"versions": "1"},
                                 files={"image": image.open("rb")}, timeout=60),
        "compare newest": requests.post(f"{url}/v1/models/{name}:compare", files={"image": image.open("rb")},
                                        timeout=60),
        "metadata": requests.get(f"{url}/v1/models/{name}/versions/1/metadata", timeout=60),
    }
    for entry, response in answers.items():
        assert response.status_code == 409, (entry, response.text)
        assert op in response.json()["error"] and "flagged" in response.json()["error"], (entry, response.text)
    with pytest.raises(grpc.RpcError) as refused:
        grpc_predict(hostile["predict"], name, 1)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert op in refused.value.details()
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = name
    with pytest.raises(grpc.RpcError) as refused:
        hostile["predict"].GetModelMetadata(metadata, timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and op in refused.value.details()
    for args in (["label", f"{name}:1", str(image)], ["compare", name, str(image), "--versions", "1"]):
        result = CliRunner().invoke(cli, [*args, "--url", url])
        assert result.exit_code != 0 and op in result.output, (args, result.output)
    nothing_was_touched(hostile)


def test_flagged_version_page_shows_the_reason_and_the_allowed_ops(hostile):
    body = requests.get(f"{hostile['url']}/models/read-top/versions/1", timeout=60).text
    assert 'id="flagged"' in body and "never runs this graph" in body and "ReadFile" in body
    assert "Verification skipped: flagged graphs are never run" in body
    assert 'id="allowed-ops"' in body


def test_admin_allows_an_op_for_one_model_audited_and_removing_it_refuses_again(hostile, converting_server, tokens,
                                                                                   tmp_path):
    url = hostile["url"]
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"seven!!")  # harmless: the graph reads it, adding its length to every output
    pushed = hostile["client"].push("reader", [("frozen", tfmodels.build_reading_frozen(tmp_path, notes))],
                                    {"output_nodes": "output"})
    assert hostile["client"].wait("reader", pushed["version"], timeout=180)["safety"]["flagged"] is True

    def predict() -> requests.Response:
        return requests.post(f"{url}/v1/models/reader:predict", json={"instances": TEST_INPUT}, timeout=60)

    def eventually(status: int) -> requests.Response:  # the label service re-resolves within a second
        deadline = time.monotonic() + 5
        while (response := predict()).status_code != status and time.monotonic() < deadline:
            time.sleep(0.2)
        return response

    assert predict().status_code == 409
    # Only an admin may relax the scan; other models stay refused.
    refused = requests.put(f"{url}/api/v1/models/reader/allowed-ops", json={"ops": ["ReadFile"], "reason": "x"},
                           headers=bearer(tokens["write"]), timeout=60)
    assert refused.status_code == 403
    allowed = CliRunner().invoke(cli, ["allow-ops", "reader", "ReadFile", "--reason", "reads its own notes file",
                                       "--url", url, "--token", tokens["admin"]])
    assert allowed.exit_code == 0, allowed.output
    assert "allowed ops: ReadFile" in allowed.output and "admin-token" in allowed.output

    answer = eventually(200)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], np.array(TEST_INPUT) * 2 + len(b"seven!!"))
    np.testing.assert_allclose(tf.make_ndarray(grpc_predict(hostile["predict"], "reader").outputs["output"]),
                               np.array(TEST_INPUT) * 2 + 7)
    record = hostile["client"].get_version("reader", 1)
    assert record["safety"]["flagged"] is False and record["safety"]["scan_flagged"] is True
    assert record["safety"]["flags"][0]["allowed"] is True and record["refusal"] is None
    assert requests.post(f"{url}/v1/models/read-top:predict", json={"instances": TEST_INPUT},
                         timeout=60).status_code == 409
    page = requests.get(f"{url}/models/reader/versions/1", timeout=60).text
    assert "Allowed by an admin" in page and "allowed for this model" in page
    assert "<code>ReadFile</code>" in requests.get(f"{url}/models/reader", timeout=60).text

    events = requests.get(f"{url}/api/v1/audit", params={"action": "model.allowed_ops"},
                          headers=bearer(tokens["admin"]), timeout=60).json()["events"]
    assert events[0]["actor"] == "admin-token" and events[0]["target"] == "reader"
    assert events[0]["details"] == {"old": [], "new": ["ReadFile"], "added": ["ReadFile"], "removed": [],
                                    "reason": "reads its own notes file"}

    # A version pushed while the op is allowed is not flagged and its verification runs it, but in the
    # converter's sandbox, where the file it reads is not there: ready, not verified, saying why.
    again = hostile["client"].push("reader", [("frozen", tfmodels.build_reading_frozen(tmp_path / "v2", notes))],
                                   {"output_nodes": "output"})
    record = hostile["client"].wait("reader", again["version"], timeout=180)
    assert record["status"] == "ready" and record["verification"]["status"] == "skipped", record
    assert "could not open its file in the converter's sandbox" in record["verification"]["reason"]

    cleared = CliRunner().invoke(cli, ["allow-ops", "reader", "--delete", "--url", url, "--token", tokens["admin"]])
    assert cleared.exit_code == 0 and "allowed ops: none" in cleared.output, cleared.output
    refused_again = eventually(409)
    assert refused_again.status_code == 409 and "ReadFile" in refused_again.json()["error"]
    events = requests.get(f"{url}/api/v1/audit", params={"action": "model.allowed_ops"},
                          headers=bearer(tokens["admin"]), timeout=60).json()["events"]
    assert events[0]["details"]["removed"] == ["ReadFile"] and events[0]["actor"] == "admin-token"
    nothing_was_touched(hostile)


def test_allowlist_changes_need_op_names_a_reason_and_an_existing_model(hostile, tokens):
    url, admin = hostile["url"], bearer(tokens["admin"])
    cases = [
        ("read-top", {"ops": ["Read File"], "reason": "x"}, 400, "not an op name"),
        ("read-top", {"ops": "ReadFile", "reason": "x"}, 400, "list of op names"),
        ("read-top", {"ops": ["ReadFile"]}, 400, "reason"),
        ("read-top", {"reason": "x"}, 400, '"ops"'),
        ("no-such-model", {"ops": ["ReadFile"], "reason": "x"}, 404, "does not exist"),
    ]
    for name, body, status, words in cases:
        response = requests.put(f"{url}/api/v1/models/{name}/allowed-ops", json=body, headers=admin, timeout=60)
        assert response.status_code == status, (body, response.text)
        assert words in response.json()["error"]["message"], (body, response.text)
    assert requests.get(f"{url}/api/v1/models/read-top/allowed-ops", timeout=60).json()["ops"] == []


# -- the decision itself, as the TF Serving export calls it ------------------------------------

def _version(flags: list[dict] | None, allowed: list[str] = ()) -> VersionInfo:
    conversion = None if flags is None else {"safety": {"op_histogram": {}, "flags": flags,
                                                        "flagged": bool(flags), "upload_flags": []}}
    now = datetime.now(timezone.utc)
    return VersionInfo(id=1, model="m", version=3, status=READY, status_message="", source="frozen",
                       description="", requested_output_nodes=None, requested_input_nodes=None, output_nodes=None,
                       output_nodes_detected=None, input_nodes=None, frozen_sha256=None, frozen_size=None,
                       tf_version=None, conversion=conversion, created_at=now, updated_at=now, ready_at=now,
                       allowed_ops=list(allowed))


def test_refusal_is_decided_by_the_scan_and_the_models_allowlist():
    read = {"op": "ReadFile", "category": "reads_files", "count": 1, "nodes": ["ReadFile"]}
    python = {"op": "PyFunc", "category": "calls_python", "count": 1, "nodes": ["PyFunc"]}
    assert safety.refusal(_version([])) is None
    assert "ReadFile (reads files)" in safety.refusal(_version([read]))
    assert safety.refusal(_version([read], ["ReadFile"])) is None
    partly = safety.refusal(_version([read, python], ["ReadFile"]))
    assert "PyFunc (calls python)" in partly and "ReadFile (reads files)" not in partly
    assert safety.refusal(_version([read]), allowed_ops=["ReadFile"]) is None  # an explicit list wins
    assert "no safety report" in safety.refusal(_version(None))  # never scanned: fail closed
    with pytest.raises(Conflict) as refused:
        safety.ensure_runnable(_version([python]))
    assert (refused.value.status, refused.value.code) == (409, "version_flagged")
