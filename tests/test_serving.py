"""The label service over real HTTP: label_image.py-equal labelling, comparing
versions, TensorFlow Serving's REST API, refusals and concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from registry.client import RegistryClient
from tests import images as test_images
from tests import tfmodels

pytestmark = pytest.mark.slow
LABELS = ["cat", "dog", "fox", "owl", "yak"]


def checkpoint_files(model, graph: bool = True) -> list[tuple[str, Path]]:
    files = [("meta", model.meta), ("index", model.index)] + [("data", p) for p in model.data]
    return files + ([("graph", model.inference_graph)] if graph and model.inference_graph else [])


@pytest.fixture(scope="module")
def served(converting_server, models, tmp_path_factory):
    """Model 'cnn': v1 from one checkpoint (with labels), v2 from another; 'production' -> 1."""
    client = RegistryClient(converting_server.url)
    labels = tmp_path_factory.mktemp("labels") / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    first = models["resource_graph"]
    client.push("cnn", checkpoint_files(first) + [("labels", labels)], {"output_nodes": first.output})
    client.push("cnn", checkpoint_files(models["sharded"]), {"output_nodes": first.output})
    for number in (1, 2):
        assert client.wait("cnn", number, timeout=120)["status"] == "ready"
    client.set_alias("cnn", "production", 1)
    frozen = tmp_path_factory.mktemp("pulled")
    for number in (1, 2):
        client.pull("cnn", str(number), frozen / f"v{number}.pb")
    pictures = test_images.write_images(tmp_path_factory.mktemp("images"))
    return {"url": converting_server.url, "client": client, "frozen": frozen, "images": pictures,
            "registry": converting_server.registry}


def label(served, path: Path, ref: str = "", **params) -> requests.Response:
    base = f"{served['url']}/v1/models/cnn{ref}:label"
    return requests.post(base, params=params, data=path.read_bytes(),
                         headers={"Content-Type": "image/" + path.suffix.lstrip(".").replace("jpg", "jpeg")})


@pytest.mark.parametrize("name", ["photo.jpg", "chart.png", "scan.bmp", "palette.gif"])
def test_label_scores_equal_label_image_py(served, name):
    image = served["images"][name]
    service = served["registry"].label_service()
    graph = service.graph(service.resolve("cnn", "1"))
    runs = graph.batcher.runs
    answer = label(served, image, "/versions/1").json()
    assert graph.batcher.runs == runs + 1  # one Session.run in the worker, from the image's bytes to the scores
    expected = test_images.label_image_scores(served["frozen"] / "v1.pb", image, "input", "predictions/Softmax",
                                              height=8, width=8)
    assert answer["version"] == 1
    order = np.argsort(expected)[::-1][:5]
    assert [p["index"] for p in answer["predictions"]] == order.tolist()
    np.testing.assert_allclose([p["score"] for p in answer["predictions"]], expected[order], rtol=0, atol=1e-5)
    assert [p["label"] for p in answer["predictions"]] == [LABELS[i] for i in order]
    assert set(answer["timing_ms"]) >= {"preprocess", "inference", "total"}


def test_label_follows_edited_preprocessing(served, converting_server, models):
    client = served["client"]
    client.push("tuned", checkpoint_files(models["resource_graph"]), {"output_nodes": "predictions/Softmax",
                                                                      "input_mean": "100", "input_std": "50"})
    assert client.wait("tuned", 1, timeout=120)["status"] == "ready"
    image = served["images"]["chart.png"]
    answer = requests.post(f"{served['url']}/v1/models/tuned:label", files={"image": image.open("rb")}).json()
    expected = test_images.label_image_scores(served["frozen"] / "v1.pb", image, "input", "predictions/Softmax",
                                              height=8, width=8, mean=100, std=50)
    assert answer["predictions"][0]["index"] == int(np.argmax(expected))
    np.testing.assert_allclose(answer["predictions"][0]["score"], expected.max(), atol=1e-5)


def test_label_without_a_labels_file_names_classes_by_index(served):
    answer = label(served, served["images"]["photo.jpg"], "/versions/2").json()
    assert all(p["label"] == str(p["index"]) for p in answer["predictions"])


def test_label_by_alias_and_latest(served):
    assert label(served, served["images"]["photo.jpg"], "/labels/production").json()["version"] == 1
    assert label(served, served["images"]["photo.jpg"]).json()["version"] == 2


def test_top_k(served):
    assert len(label(served, served["images"]["photo.jpg"], top_k=2).json()["predictions"]) == 2
    for bad in ("0", "abc", "6"):
        response = label(served, served["images"]["photo.jpg"], top_k=bad)
        assert response.status_code == 400
        assert "top_k" in response.json()["error"]


def test_not_an_image_is_a_400(served):
    response = requests.post(f"{served['url']}/v1/models/cnn:label", data=b"hello, not an image",
                             headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 400
    assert "JPEG, PNG, GIF or BMP" in response.json()["error"]


def test_truncated_image_is_a_400(served):
    data = served["images"]["chart.png"].read_bytes()
    response = requests.post(f"{served['url']}/v1/models/cnn:label", data=data[: len(data) // 2],
                             headers={"Content-Type": "image/png"})
    assert response.status_code == 400
    assert "cannot be decoded" in response.json()["error"] or "truncated" in response.json()["error"]


def test_compare_with_a_damaged_image_is_a_400_and_good_requests_beside_it_succeed(served):
    data = served["images"]["chart.png"].read_bytes()
    good = served["images"]["photo.jpg"].read_bytes()
    response = requests.post(f"{served['url']}/v1/models/cnn:compare",
                             files=[("image", ("a.jpg", good, "image/jpeg")),
                                    ("image", ("b.png", data[: len(data) // 2], "image/png"))])
    assert response.status_code == 400
    assert "one of the 2 images cannot be decoded" in response.json()["error"]

    def one(i: int) -> int:  # concurrent requests batch together; the damaged one fails alone
        body = data[: len(data) // 2] if i % 4 == 0 else data
        return requests.post(f"{served['url']}/v1/models/cnn/versions/1:label", data=body,
                             headers={"Content-Type": "image/png"}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(16)))
    assert codes == [400 if i % 4 == 0 else 200 for i in range(16)]


def test_image_of_enormous_dimensions_is_refused_before_decoding(served):
    response = requests.post(f"{served['url']}/v1/models/cnn:label", data=test_images.huge_png_header(60000, 60000),
                             headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert "REGISTRY_MAX_IMAGE_PIXELS" in response.json()["error"]


def test_compare_reports_each_version_accuracy_and_disagreements(served):
    names = ["photo.jpg", "chart.png", "scan.bmp", "other.png"]
    by_version = {}
    for number in (1, 2):
        by_version[number] = [
            int(np.argmax(test_images.label_image_scores(served["frozen"] / f"v{number}.pb", served["images"][n],
                                                         "input", "predictions/Softmax", height=8, width=8)))
            for n in names]
    expected = [LABELS[i] for i in by_version[1]]
    expected[0] = "nothing-like-this"  # one wrong on purpose
    answer = served["client"].compare("cnn", [served["images"][n] for n in names], ["1", "2"], expected)
    versions = {v["version"]: v for v in answer["versions"]}
    assert versions[1]["accuracy"]["top1"] == pytest.approx(3 / 4)
    for number in (1, 2):
        assert [r["predictions"][0]["index"] for r in versions[number]["results"]] == by_version[number]
    disagree = [n for n, a, b in zip(names, by_version[1], by_version[2]) if a != b]
    assert answer["agreement"]["disagreements"] == disagree
    pair = answer["agreement"]["pairs"][0]
    assert pair["top1_agreement"] == pytest.approx(1 - len(disagree) / len(names))
    assert pair["mean_abs_score_diff"] > 0
    assert answer["timing_ms"]["preprocessing_runs"] == 0  # each version decodes in its one Session.run
    remembered = requests.get(f"{served['url']}/api/v1/models/cnn/versions/2").json()["agreement_with_previous"]
    assert remembered == {"version": 1, "top1_agreement": pair["top1_agreement"], "images": len(names)}
    page = requests.get(f"{served['url']}/models/cnn").text
    assert f"{100 * pair['top1_agreement']:.0f}% <span class=\"muted\">on {len(names)} images" in page


def test_compare_by_default_takes_the_ready_versions(served):
    answer = served["client"].compare("cnn", [served["images"]["photo.jpg"]])
    assert sorted(v["version"] for v in answer["versions"]) == [1, 2]


def test_compare_with_the_wrong_number_of_expected_labels_is_a_400(served):
    response = requests.post(f"{served['url']}/v1/models/cnn:compare",
                             files=[("image", ("a.jpg", served["images"]["photo.jpg"].read_bytes())),
                                    ("expected", (None, "cat\ndog"))])
    assert response.status_code == 400
    assert "one per image" in response.json()["error"]


def test_cli_label_and_compare_print_tables(served, tmp_path):
    env = dict(os.environ, REGISTRY_URL=served["url"])
    run = lambda *a: subprocess.run([sys.executable, "-m", "registry.cli", *a], capture_output=True, text=True,
                                    env=env, timeout=120)
    labelled = run("label", "cnn:production", str(served["images"]["photo.jpg"]), "--top-k", "3")
    assert labelled.returncode == 0, labelled.stderr
    assert "version 1" in labelled.stdout and "RANK" in labelled.stdout
    assert sum(line.strip()[:1].isdigit() for line in labelled.stdout.splitlines()) == 3
    expected = tmp_path / "expected.txt"
    expected.write_text("cat\ndog\n")
    compared = run("compare", "cnn", str(served["images"]["photo.jpg"]), str(served["images"]["chart.png"]),
                   "--versions", "1,2", "--expected", str(expected))
    assert compared.returncode == 0, compared.stderr
    assert "top-1 agreement" in compared.stdout and "TOP-1" in compared.stdout


# -- TensorFlow Serving REST ---------------------------------------------------------------------

GC_SCRIPT = """
import gc, json, sys
from registry import heap
from registry.app import create_app
from registry.config import Settings
if sys.argv[1] == "own":
    heap.own_process()  # as registry serve, label-serve and gunicorn's app do
app = create_app(Settings.from_env(embedded_workers=0, demo=False))
client = app.test_client()
answers = [client.post("/v1/models/cnn/versions/2:label", data=open(sys.argv[2], "rb").read(),
                       content_type="image/png").status_code,
           client.get("/v1/models/cnn/versions/2/metadata").status_code]
tensorflow = "tensorflow" in sys.modules
print(json.dumps({"answers": answers, "frozen": gc.get_freeze_count(), "tensorflow": tensorflow,
                  "unfrozen": len(gc.get_objects())}))
app.extensions["registry"].label_service().close()
"""


@pytest.mark.parametrize("process", ["own", "embedded"])
def test_a_serving_process_keeps_tensorflows_objects_out_of_full_garbage_collections(served, process):
    """TensorFlow's Python leaves ~400k objects that every full GC pass walks (0.2 s, GIL held, every few
    thousand requests).  A process of the registry's own freezes what its imports made before its first
    graph, and again when a TF Serving request has brought TensorFlow in (registry.heap); a program that
    embeds the app keeps its objects."""
    settings = served["registry"].settings
    env = dict(os.environ, REGISTRY_HOME=str(settings.home), REGISTRY_DATABASE_URL=settings.database_url,
               REGISTRY_STORAGE=settings.storage_url, REGISTRY_AUTH="off", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", GC_SCRIPT, process, str(served["images"]["chart.png"])],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["answers"] == [200, 200] and seen["tensorflow"]
    if process == "own":
        assert seen["frozen"] > 200_000 and seen["unfrozen"] < seen["frozen"] / 4, seen
    else:
        assert seen["frozen"] == 0, seen


def test_status_lists_available_versions_like_tf_serving(served):
    body = requests.get(f"{served['url']}/v1/models/cnn").json()
    states = {s["version"]: s["state"] for s in body["model_version_status"]}
    assert states["1"] == states["2"] == "AVAILABLE"
    one = requests.get(f"{served['url']}/v1/models/cnn/labels/production").json()["model_version_status"]
    assert [s["version"] for s in one] == ["1"]
    assert one[0]["status"] == {"error_code": "OK", "error_message": ""}


def test_metadata_describes_serving_default_from_the_recorded_nodes(served):
    body = requests.get(f"{served['url']}/v1/models/cnn/versions/1/metadata").json()
    assert body["model_spec"] == {"name": "cnn", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["input"]["name"] == "input:0"
    assert signature["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "8", "8", "3"]
    assert signature["outputs"]["predictions_Softmax"]["name"] == "predictions/Softmax:0"


def test_predict_row_and_columnar_formats_give_the_checkpoint_outputs(served, models):
    model = models["resource_graph"]
    rows = requests.post(f"{served['url']}/v1/models/cnn/versions/1:predict",
                         json={"instances": model.test_input.tolist()}).json()
    np.testing.assert_allclose(rows["predictions"], model.expected, atol=1e-6)
    keyed = requests.post(f"{served['url']}/v1/models/cnn/versions/1:predict",
                          json={"signature_name": "serving_default",
                                "instances": [{"input": x} for x in model.test_input.tolist()]}).json()
    np.testing.assert_allclose(keyed["predictions"], model.expected, atol=1e-6)
    columns = requests.post(f"{served['url']}/v1/models/cnn/labels/production:predict",
                            json={"inputs": {"input": model.test_input.tolist()}}).json()
    np.testing.assert_allclose(columns["outputs"], model.expected, atol=1e-6)


@pytest.mark.parametrize("body, message", [
    ({"instances": [[1.0]], "inputs": [[1.0]]}, "not both"),
    ({"instances": [[[[0.1] * 3] * 8] * 8, [[[0.1] * 3] * 8] * 7]}, "ragged"),
    ({"instances": [[[["a"] * 3] * 8] * 8]}, "expected numbers"),
    ({"inputs": {"images": [[[[0.1] * 3] * 8] * 8]}}, "unknown input(s) images"),
    ({"instances": []}, "non-empty"),
    ({"nothing": 1}, "missing"),
    ({"signature_name": "classify", "instances": [[1.0]]}, "serving_default"),
])
def test_malformed_predict_bodies_get_tf_serving_style_400s(served, body, message):
    response = requests.post(f"{served['url']}/v1/models/cnn:predict", json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_predict_body_that_is_not_json_is_a_400(served):
    response = requests.post(f"{served['url']}/v1/models/cnn:predict", data=b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


@pytest.mark.parametrize("path", ["nope", "cnn/versions/9", "cnn/labels/staging"])
def test_unknown_model_version_or_label_is_a_404(served, path):
    response = requests.post(f"{served['url']}/v1/models/{path}:predict", json={"instances": [[1.0]]})
    assert response.status_code == 404
    assert set(response.json()) == {"error"}


# -- refusals ------------------------------------------------------------------------------------

def test_version_that_is_not_ready_is_refused_with_409(served, models):
    client = served["client"]
    client.push("broken", checkpoint_files(models["resource_meta"], graph=False),
                {"output_nodes": "predictions/Softmx"})
    assert client.wait("broken", 1, timeout=120)["status"] == "failed"
    answer = requests.post(f"{served['url']}/v1/models/broken/versions/1:predict", json={"instances": [[1.0]]})
    assert answer.status_code == 409
    assert "failed" in answer.json()["error"] and "predictions/Softmax" in answer.json()["error"]
    status = requests.get(f"{served['url']}/v1/models/broken/versions/1").json()["model_version_status"][0]
    assert status["state"] == "END" and "Softmx" in status["status"]["error_message"]


def test_flagged_graph_is_refused_with_the_reason(served, tmp_path):
    target = tmp_path / "never-written.txt"
    hostile = tfmodels.build_hostile_frozen(tmp_path, target)
    client = served["client"]
    client.push("hostile", [("frozen", hostile)], {"output_nodes": "output"})
    assert client.wait("hostile", 1, timeout=120)["status"] == "ready"
    for verb, body in ((":predict", {"instances": [[1.0, 2.0, 3.0, 4.0]]}), (":label", None)):
        response = requests.post(f"{served['url']}/v1/models/hostile{verb}", json=body)
        assert response.status_code == 409
        assert "WriteFile" in response.json()["error"]
    assert not target.exists()


def test_model_whose_input_is_not_an_image_cannot_label_but_predicts(served, models):
    model = models["embedding"]
    client = served["client"]
    client.push("tokens", checkpoint_files(model, graph=False), {})
    assert client.wait("tokens", 1, timeout=120)["status"] == "ready"
    refused = requests.post(f"{served['url']}/v1/models/tokens:label", data=served["images"]["photo.jpg"].read_bytes(),
                            headers={"Content-Type": "image/jpeg"})
    assert refused.status_code == 400 and ":predict" in refused.json()["error"]
    predicted = requests.post(f"{served['url']}/v1/models/tokens:predict",
                              json={"instances": model.test_input.tolist()}).json()
    np.testing.assert_allclose(predicted["predictions"], model.expected, atol=1e-6)
    wrong = requests.post(f"{served['url']}/v1/models/tokens:predict", json={"instances": [[0.5, 1.5, 2.0]]})
    assert wrong.status_code == 400 and "fractional" in wrong.json()["error"]


# -- concurrency ---------------------------------------------------------------------------------

def test_many_parallel_clients_get_correct_answers_and_each_version_loads_once(served, models):
    service = served["registry"].label_service()
    expected = {1: models["resource_graph"].expected, 2: models["sharded"].expected}
    test_input = models["resource_graph"].test_input.tolist()

    def call(i: int):
        number = 1 + i % 2
        response = requests.post(f"{served['url']}/v1/models/cnn/versions/{number}:predict",
                                 json={"instances": test_input}, timeout=60)
        return number, response.status_code, response.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(64)))
    for number, status, body in results:
        assert status == 200, body
        np.testing.assert_allclose(body["predictions"], expected[number], atol=1e-6)
    loads = {key: count for key, count in service.cache.loads.items()}
    assert sorted(loads.values()) == [1] * len(loads)
