"""Signatures and the prediction output through the API, the CLI and the version page (issue 13, items 7
and 9), on a real server with an embedded converter: a frozen graph with two outputs is pushed and
converted once per module, then its prediction output is changed and :label follows."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from registry.client import RegistryClient
from tests import images as test_images
from tests import tfmodels
from tests.conftest import BOTH_DATABASES, BOTH_DATABASES_PER_MODULE
from tests.helpers import bearer, issue_tokens

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1
FIRST, SECOND = "first/probs", "second/scores"
LABELS = ["cat", "dog", "fox", "owl", "elk"]


@pytest.fixture(scope="module")
def tokens(converting_server) -> dict[str, str]:
    return issue_tokens(converting_server.registry.db)


@pytest.fixture(scope="module")
def two_heads(converting_server, tokens, tmp_path_factory) -> dict:
    """Version 1 of 'heads': a frozen graph with two outputs of 5 scores each, converted; its frozen.pb."""
    folder = tmp_path_factory.mktemp("two_heads")
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(13)
        tf.graph_util.import_graph_def(tfmodels.two_head_graph_def(), name="")
        with tf1.Session(graph=graph) as session:
            session.run([op for op in graph.get_operations() if op.type == "Assign"])
            frozen = tf1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), [FIRST, SECOND])
    (folder / "frozen.pb").write_bytes(frozen.SerializeToString())
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    client = RegistryClient(converting_server.url, token=tokens["write"])
    pushed = client.push("heads", [("frozen", folder / "frozen.pb"), ("labels", folder / "labels.txt")],
                         {"output_nodes": f"{FIRST},{SECOND}"})
    record = client.wait("heads", pushed["version"], timeout=120)
    assert record["status"] == "ready", record["status_message"]
    client.pull("heads", "1", folder / "served.pb")
    return {"record": record, "frozen": folder / "served.pb", "images": test_images.write_images(folder / "images")}


def api(server, path: str) -> str:
    return f"{server.url}/api/v1/models/heads/versions/1{path}"


def choose(server, token: str, node: str, **extra) -> requests.Response:
    return requests.put(api(server, "/prediction-output"), json={"prediction_output": node, **extra},
                        headers=bearer(token), timeout=30)


def label(server, image: Path) -> list[dict]:
    response = requests.post(f"{server.url}/v1/models/heads/versions/1:label", data=image.read_bytes(),
                             headers={"Content-Type": "image/png"}, params={"top_k": 5}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def expected_top(frozen: Path, image: Path, node: str) -> tuple[list[int], np.ndarray]:
    scores = test_images.label_image_scores(frozen, image, "input", node, height=8, width=8)
    order = np.argsort(scores, kind="stable")[::-1]
    return order.tolist(), scores[order]


def cli(server, token: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, REGISTRY_URL=server.url, REGISTRY_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "registry.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@BOTH_DATABASES_PER_MODULE
def test_the_version_answer_lists_its_signature_and_the_prediction_output_with_why(two_heads):
    record = two_heads["record"]
    assert record["default_signature"] == "serving_default"
    signature = record["signatures"]["serving_default"]
    assert signature["method"] == "tensorflow/serving/predict"
    assert sorted(o["name"] for o in signature["outputs"].values()) == [f"{FIRST}:0", f"{SECOND}:0"]
    assert [i["name"] for i in signature["inputs"].values()] == ["input:0"]
    assert signature["verification"]["status"] == "ran"  # uploaded frozen: run, with nothing to compare to
    assert record["failed_signatures"] == {}
    assert record["prediction_output"] in (FIRST, SECOND)
    assert record["prediction_output_reason"]


@BOTH_DATABASES_PER_MODULE
def test_changing_the_prediction_output_is_audited_and_label_ranks_by_the_new_output(converting_server, tokens,
                                                                                      two_heads):
    image = two_heads["images"]["chart.png"]
    before = two_heads["record"]["prediction_output"]
    other = SECOND if before == FIRST else FIRST
    assert [p["index"] for p in label(converting_server, image)] == expected_top(two_heads["frozen"], image,
                                                                                 before)[0]

    response = choose(converting_server, tokens["write"], other, reason="the retrieval head")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["prediction_output"] == other
    assert "chosen by write-token" in answer["prediction_output_reason"]
    assert "the retrieval head" in answer["prediction_output_reason"]
    events = requests.get(f"{converting_server.url}/api/v1/audit", params={"action": "version.update"},
                          headers=bearer(tokens["admin"]), timeout=30).json()["events"]
    assert events[0]["target"] == "heads/1" and events[0]["actor"] == "write-token"
    assert events[0]["details"]["prediction_output"] == other and events[0]["details"]["previous"] == before

    order, scores = expected_top(two_heads["frozen"], image, other)
    deadline = time.monotonic() + 5  # the label service re-reads a version it resolved within a second
    while True:
        predictions = label(converting_server, image)
        if [p["index"] for p in predictions] == order or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [p["index"] for p in predictions] == order
    assert [p["label"] for p in predictions] == [LABELS[i] for i in order]
    np.testing.assert_allclose([p["score"] for p in predictions], scores, rtol=0, atol=1e-5)
    assert not np.allclose(scores, expected_top(two_heads["frozen"], image, before)[1], atol=1e-3)

    # the converter's choice again, with a reason: the reason is shown (not only kept in the audit log)
    kept = choose(converting_server, tokens["write"], before, reason="the head label_image.py reads").json()
    assert kept["prediction_output"] == before
    assert kept["prediction_output_reason"].endswith(": the head label_image.py reads")
    back = choose(converting_server, tokens["write"], f"{before}:0").json()  # a tensor name names its node
    assert back["prediction_output"] == before  # and without one: the converter's own reason again
    assert back["prediction_output_reason"] == two_heads["record"]["prediction_output_reason"]


@BOTH_DATABASES_PER_MODULE
def test_a_node_that_is_not_an_output_is_refused_with_the_outputs_to_choose_from(converting_server, tokens,
                                                                                 two_heads):
    response = choose(converting_server, tokens["write"], "trunk/pool")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_prediction_output"
    assert f"choose one of {FIRST}, {SECOND}" in error["message"]
    bad_body = requests.put(api(converting_server, "/prediction-output"), json={"node": FIRST},
                            headers=bearer(tokens["write"]), timeout=30)
    assert bad_body.status_code == 400 and '"prediction_output"' in bad_body.json()["error"]["message"]


@BOTH_DATABASES_PER_MODULE
def test_a_read_only_token_may_not_change_the_prediction_output(converting_server, tokens, two_heads):
    response = choose(converting_server, tokens["read"], SECOND)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"
    assert requests.put(api(converting_server, "/prediction-output"), json={"prediction_output": SECOND},
                        timeout=30).status_code == 401
    assert requests.get(api(converting_server, ""), timeout=30).json()["prediction_output"] == \
        two_heads["record"]["prediction_output"]


@BOTH_DATABASES_PER_MODULE
def test_cli_shows_the_signatures_and_changes_the_prediction_output(converting_server, tokens, two_heads):
    before = two_heads["record"]["prediction_output"]
    other = SECOND if before == FIRST else FIRST
    shown = cli(converting_server, tokens["read"], "version", "show", "heads:1")
    assert shown.returncode == 0, shown.stderr
    assert "serving_default (predict, default): input=input:0 float32 [?, 8, 8, 3] -> " in shown.stdout
    assert f"first_probs={FIRST}:0 float32 [?, 5]" in shown.stdout
    assert "; verification ran: uploaded already frozen" in shown.stdout
    assert f"prediction output: {before} ({two_heads['record']['prediction_output_reason']})" in shown.stdout

    changed = cli(converting_server, tokens["write"], "version", "set", "heads:1", "--prediction-output", other)
    assert changed.returncode == 0, changed.stderr
    assert f"heads version 1: :label ranks by {other} (chosen by write-token" in changed.stdout
    wrong = cli(converting_server, tokens["write"], "version", "set", "heads:1", "--prediction-output", "nope")
    assert wrong.returncode == 1
    assert wrong.stderr.strip().startswith("Error: 'nope' is not an output")
    assert f"choose one of {FIRST}, {SECOND}" in wrong.stderr and "Traceback" not in wrong.stderr
    refused = cli(converting_server, tokens["read"], "version", "set", "heads:1", "--prediction-output", before)
    assert refused.returncode == 1 and "has read scope; this needs write" in refused.stderr
    assert cli(converting_server, tokens["write"], "version", "set", "heads:1", "--prediction-output",
               before).returncode == 0


def sign_in(server, token: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{server.url}/sign-in", timeout=30).text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)
    response = session.post(f"{server.url}/sign-in", data={"token": token, "csrf_token": csrf}, timeout=30)
    assert response.status_code == 200 and "signed-in-as" in response.text
    return session


def visible(body: str) -> str:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


@BOTH_DATABASES_PER_MODULE
def test_version_page_shows_signatures_and_the_prediction_output_and_its_form_changes_it(converting_server,
                                                                                          tokens, two_heads):
    before = two_heads["record"]["prediction_output"]
    other = SECOND if before == FIRST else FIRST
    page_url = f"{converting_server.url}/models/heads/versions/1"

    reader = sign_in(converting_server, tokens["read"]).get(page_url, timeout=30).text
    shown = visible(reader)
    assert 'data-signature="serving_default"' in reader
    assert f"serving_default (default) predict input = input:0 float32 [?, 8, 8, 3]" in shown
    assert f"second_scores = {SECOND}:0 float32 [?, 5] ran : uploaded already frozen" in shown
    assert f"Prediction output {before} : {two_heads['record']['prediction_output_reason']}" in shown
    assert 'class="prediction-form"' not in reader  # a read token may not change it

    writer = sign_in(converting_server, tokens["write"])
    body = writer.get(page_url, timeout=30).text
    assert f'<option value="{other}">{other}</option>' in body
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', body).group(1)
    form_url = f"{page_url}/prediction-output"
    assert writer.post(form_url, data={"node": other}, timeout=30).status_code == 403  # no CSRF token
    response = writer.post(form_url, data={"node": other, "reason": "from the page", "csrf_token": csrf}, timeout=30)
    assert response.status_code == 200
    shown = visible(response.text)
    assert f"Prediction output {other} : chosen by write-token" in shown and "from the page" in shown
    response = writer.post(form_url, data={"node": "trunk/pool", "csrf_token": csrf}, timeout=30)
    assert f"'trunk/pool' is not an output" in visible(response.text)
    assert writer.post(form_url, data={"node": before, "csrf_token": csrf}, timeout=30).status_code == 200


# -- a version with several signatures, one of them not served, as the converter records it ------------

HALF_PLUS_TWO = {
    "serving_default": {"method": "tensorflow/serving/predict",
                        "inputs": {"x": {"name": "x:0", "dtype": "float32", "shape": [None, 1]}},
                        "outputs": {"y": {"name": "y:0", "dtype": "float32", "shape": [None, 1]}},
                        "verification": {"status": "passed", "max_abs_diff": 0.0, "tolerance": 1e-5}},
    "classify_x_to_y": {"method": "tensorflow/serving/classify",
                        "inputs": {"inputs": {"name": "tf_example:0", "dtype": "string", "shape": [None]}},
                        "outputs": {"scores": {"name": "y:0", "dtype": "float32", "shape": [None, 1]}},
                        "verification": {"status": "passed", "max_abs_diff": 2.4e-7, "tolerance": 1e-5}},
}
FAILED = {"regress_x2_to_y3": "outputs differ from the SavedModel's by 0.5 (tolerance 1e-05)"}
OPS = [("tf_example", "Placeholder"), ("ParseExample/ParseExampleV2", "ParseExampleV2"), ("y", "AddV2"),
       ("vocab/read", "ReadFile"), ("a", "Const"), ("b", "Const")]


@pytest.fixture
def half_plus_two(client, registry, models):
    """Version 1 of 'hp', recorded as the converter records a tf.Example model with several signatures."""
    import hashlib

    import sqlalchemy as sa

    from registry.converter.ops import scan
    from registry.models import ModelVersion, utcnow
    from tests.helpers import frozen_form, push

    frozen = models["frozen"].frozen_graph
    assert push(client, "hp", frozen_form(frozen)).status_code == 202
    data = frozen.read_bytes()
    with registry.db.transaction() as session:
        session.execute(sa.update(ModelVersion).values(
            status="ready", status_message="frozen and verified", output_nodes=["y"], output_nodes_detected=False,
            input_nodes=[{"name": "tf_example", "dtype": "string", "shape": [None], "optional": False}],
            frozen_sha256=hashlib.sha256(data).hexdigest(), frozen_size=len(data), ready_at=utcnow(),
            signatures=HALF_PLUS_TWO, prediction_output="y",
            conversion={"verification": {"status": "passed", "max_abs_diff": 2.4e-7, "tolerance": 1e-5},
                        "safety": scan(OPS), "failed_signatures": FAILED,
                        "prediction_output": {"node": "y", "reason": "its only output"}}))
    return "hp"


@BOTH_DATABASES
def test_the_version_answer_has_every_signature_and_the_ones_not_served(client, half_plus_two):
    from tests.test_openapi import _validator

    record = client.get("/api/v1/models/hp/versions/1").get_json()
    _validator(client.get("/api/v1/openapi.json").get_json(), "Version").validate(record)
    assert record["signatures"] == HALF_PLUS_TWO
    assert record["failed_signatures"] == FAILED
    assert (record["prediction_output"], record["prediction_output_reason"]) == ("y", "its only output")
    assert not {"failed_signatures", "prediction_output"} & set(record["conversion"] or {})  # answered beside it


@BOTH_DATABASES
def test_version_page_lists_signatures_failed_ones_and_counts_parse_ops_as_allowed(client, half_plus_two):
    body = client.get("/models/hp/versions/1", headers={"Accept": "text/html"}).get_data(as_text=True)
    shown = visible(body)
    assert "classify_x_to_y classify inputs = tf_example:0 string [?] scores = y:0 float32 [?, 1] " \
           "passed : largest difference 2.4e-07 (tolerance 1e-05)" in shown
    assert "serving_default (default) predict x = x:0 float32 [?, 1]" in shown
    assert f"regress_x2_to_y3 : {FAILED['regress_x2_to_y3']}" in shown
    assert "Prediction output y : its only output" in shown
    assert 'class="prediction-form"' not in body  # one output: nothing to choose
    states = dict(re.findall(r'data-op="(\w+)" data-state="(\w+)"', body))
    assert states == {"Const": "allowed", "Placeholder": "allowed", "ParseExampleV2": "allowed", "AddV2": "allowed",
                      "ReadFile": "flagged"}
    assert "6 nodes: 5 allowed (ops fit for inference), 1 flagged" in shown


@BOTH_DATABASES
def test_cli_prints_every_signature_the_ones_not_served_and_the_prediction_output(client, half_plus_two,
                                                                                  capsys):
    from registry.cli.output import print_signatures

    print_signatures(client.get("/api/v1/models/hp/versions/1").get_json())
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "  signatures:",
        "    serving_default (predict, default): x=x:0 float32 [?, 1] -> y=y:0 float32 [?, 1]; "
        "verified (largest difference 0)",
        "    classify_x_to_y (classify): inputs=tf_example:0 string [?] -> scores=y:0 float32 [?, 1]; "
        "verified (largest difference 2.4e-07)",
        "  not served (could not be frozen or verified):",
        f"    regress_x2_to_y3: {FAILED['regress_x2_to_y3']}",
        "  prediction output: y (its only output)",
    ]
