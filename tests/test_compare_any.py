""":compare on any signature and any set, and the reports it leaves (issue 16, items 2 and 3).

Real models built here (two regressors with different weights, a third taking another input shape,
two image classifiers from different seeds), pushed to a real server with a converter worker, and
compared over HTTP; every figure is checked against numbers computed in the test from TensorFlow's
own outputs.  The figures' functions (``registry.evaluation.metrics``) are checked against
independent computations first.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests
import sqlalchemy as sa
import tensorflow as tf

from registry import catalog
from registry.client import RegistryClient
from registry.evaluation import metrics, reports
from tests import images as test_images
from tests import tfmodels
from tests.conftest import BACKENDS, fresh_postgres_database, make_settings, start_live_server

pytestmark = pytest.mark.slow
tf1 = tf.compat.v1
LABELS = ["cat", "dog", "fox", "owl", "yak"]
SYNC_MAX = 16  # a set of more inputs runs as a job
BATCH = 8  # REGISTRY_COMPARE_MAX_IMAGES: also the batch a comparison runs


# -- the figures, against independent computations --------------------------------------------------

def test_agreement_accuracy_and_confusion_equal_counting_by_hand():
    rng = np.random.default_rng(0)
    a, b = rng.random((50, 4)), rng.random((50, 4))
    expected = [str(i) for i in rng.integers(0, 4, 50)]
    top_a, top_b = metrics.top_indices(a, 2), metrics.top_indices(b, 2)
    first_a = [str(int(np.argmax(r))) for r in a]
    first_b = [str(int(np.argmax(r))) for r in b]
    assert metrics.agreement(first_a, first_b) == sum(x == y for x, y in zip(first_a, first_b)) / 50
    second = [sorted(range(4), key=lambda c: -r[c])[:2] for r in a]
    assert top_a.tolist() == second
    hits = sum(str(e) in [str(c) for c in row] for row, e in zip(second, expected))
    assert metrics.accuracy([[str(c) for c in row] for row in top_a], expected, 2) == hits / 50
    both = sum(int(ra[0]) in rb.tolist() and int(rb[0]) in ra.tolist() for ra, rb in zip(top_a, top_b))
    assert metrics.topk_agreement(top_a.tolist(), top_b.tolist()) == both / 50
    matrix = metrics.confusion(expected, first_a)
    counts = Counter(zip(expected, first_a))
    for i, e in enumerate(matrix["classes"]):
        for j, p in enumerate(matrix["classes"]):
            assert matrix["matrix"][i][j] == counts[(e, p)]
    assert metrics.disagreeing({1: first_a, 2: first_b}) == [i for i in range(50) if first_a[i] != first_b[i]]


def test_differences_errors_and_latency_equal_their_definitions():
    rng = np.random.default_rng(1)
    a, b, truth = rng.normal(size=(30, 3)), rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    sums = metrics.merge(metrics.abs_differences(a[:10], b[:10], 0.5), metrics.abs_differences(a[10:], b[10:], 0.5))
    figures = metrics.difference_figures(sums)
    diff = np.abs(a - b)
    assert figures["max_abs_diff"] == pytest.approx(diff.max())
    assert figures["mean_abs_diff"] == pytest.approx(diff.mean())
    assert figures["within_tolerance"] == pytest.approx(np.mean(diff <= 0.5))
    errors = metrics.error_figures(metrics.merge(metrics.errors(a[:7], truth[:7]), metrics.errors(a[7:], truth[7:])))
    assert errors["mae"] == pytest.approx(np.mean(np.abs(a - truth)))
    assert errors["rmse"] == pytest.approx(np.sqrt(np.mean((a - truth) ** 2)))
    timing = metrics.latency([0.1, 0.2, 0.3, 0.4], [10, 10, 10, 5])
    assert timing["p50_ms"] == pytest.approx(250.0)
    assert timing["p95_ms"] == pytest.approx(np.percentile([100, 200, 300, 400], 95))
    assert timing["inputs_per_second"] == pytest.approx(35 / 1.0)


# -- models and a server ---------------------------------------------------------------------------------

def build_regressor(export: Path, seed: int, width: int = 3) -> Path:
    """A SavedModel whose serving_default takes ``x`` float [batch, width] and answers ``y = x·W + b``
    (float [batch, 2]), W and b drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        x = tf1.placeholder(tf.float32, [None, width], name="x")
        weights = tf1.Variable(rng.normal(size=(width, 2)).astype(np.float32), name="weights")
        bias = tf1.Variable(rng.normal(size=2).astype(np.float32), name="bias")
        y = tf.identity(tf.matmul(x, weights) + bias, name="y")
        session.run(tf1.global_variables_initializer())
        info = tf1.saved_model.utils.build_tensor_info
        signature = tf1.saved_model.signature_def_utils.build_signature_def(
            {"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict")
        builder = tf1.saved_model.Builder(str(export))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
    return export


CLASSES = tfmodels.EXAMPLE_CLASSES
build_example_classifier = tfmodels.build_example_classifier


def push_saved_model(client: RegistryClient, name: str, export: Path) -> dict:
    from registry.converter.saved_model import write_archive

    archive = export.parent / f"{export.name}.tar.gz"
    write_archive(export, archive)
    record = client.wait(name, client.push(name, [("saved_model", archive)], {})["version"], timeout=300)
    assert record["status"] == "ready", record["status_message"]
    return record


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(request):
    """None (a SQLite file in the server's home) or a fresh PostgreSQL database (skipped without
    REGISTRY_TEST_DATABASE_URL): the reports and jobs on both engines."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_postgres_database(template=request.getfixturevalue("postgres_template")) as url:
        yield url


@pytest.fixture(scope="module")
def world(tmp_path_factory, database_url):
    root = tmp_path_factory.mktemp("compare-any")
    exports = {n: build_regressor(root / f"reg{n}", seed, width) for n, seed, width in ((1, 1, 3), (2, 2, 3), (3, 3, 4))}
    cnns = {n: tfmodels.build_frozen(root / f"cnn{n}", seed=seed) for n, seed in ((1, 3), (2, 11))}
    classifiers = {n: build_example_classifier(root / f"ex{n}", seed) for n, seed in ((1, 4), (2, 8))}
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    settings = make_settings(root / "home", embedded_workers=1, compare_sync_max=SYNC_MAX, compare_max_images=BATCH,
                             **({"database_url": database_url} if database_url else {}))
    server, stop = start_live_server(settings, workers=True)
    client = RegistryClient(server.url)
    for n in (1, 2, 3):
        push_saved_model(client, "reg", exports[n])
    for n in (1, 2):
        push_saved_model(client, "ex", classifiers[n])
    for n in (1, 2):
        client.push("cnn", [("frozen", cnns[n].frozen_graph), ("labels", labels)],
                     {"output_nodes": tfmodels.OUTPUT})
        assert client.wait("cnn", n, timeout=300)["status"] == "ready"
    pictures = root / "pictures"
    pictures.mkdir()
    images = []
    for i in range(6):
        path = pictures / f"img{i}.png"
        path.write_bytes(tf.io.encode_png(test_images.pixels(20 + i, 12 + i, 10 + 2 * i)).numpy())
        images.append(path)
    yield {"url": server.url, "client": client, "registry": server.registry, "exports": exports, "cnns": cnns,
           "classifiers": classifiers,
           "images": images, "root": root}
    stop()


def compare(world, body: dict) -> requests.Response:
    return requests.post(f"{world['url']}/v1/models/{body.pop('model')}:compare", json=body, timeout=300)


def tf_outputs(world, n: int, x: np.ndarray) -> np.ndarray:
    return tfmodels.run_signature(world["exports"][n], "serving_default", {"x": x})["y"]


def between(values: np.ndarray) -> float:
    """A tolerance well between two of the values (none lies within 1e-3 of it)."""
    ordered = np.sort(values.ravel())
    gaps = np.diff(ordered)
    i = int(np.argmax(gaps[len(gaps) // 4: 3 * len(gaps) // 4])) + len(gaps) // 4
    return float((ordered[i] + ordered[i + 1]) / 2)


def image_scores(world, n: int) -> list[np.ndarray]:
    return [test_images.label_image_scores(world["cnns"][n].frozen_graph, p, "input", tfmodels.OUTPUT, height=8,
                                           width=8) for p in world["images"]]


# -- numeric outputs ---------------------------------------------------------------------------------------

def test_regressors_on_json_instances_report_differences_and_errors_tensorflow_computes(world):
    x = np.random.default_rng(5).normal(size=(12, 3)).astype(np.float32)
    truth = np.random.default_rng(6).normal(size=(12, 2))
    y1, y2 = tf_outputs(world, 1, x), tf_outputs(world, 2, x)
    tolerance = between(np.abs(y1 - y2))
    response = compare(world, {"model": "reg", "versions": [1, 2], "instances": [{"x": row} for row in x.tolist()],
                               "expected": truth.tolist(), "tolerance": tolerance})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["kind"] == "numeric" and report["inputs"] == 12 and report["signature"] == "serving_default"
    figures = report["differences"]["pairs"][0]["outputs"]["y"]
    diff = np.abs(y1.astype(np.float64) - y2)
    assert figures["max_abs_diff"] == pytest.approx(diff.max(), rel=1e-5)
    assert figures["mean_abs_diff"] == pytest.approx(diff.mean(), rel=1e-5)
    assert figures["within_tolerance"] == pytest.approx(np.mean(diff <= tolerance))
    assert 0 < figures["within_tolerance"] < 1 and figures["values"] == 24
    edges = figures["histogram"]["edges"]  # the differences' histogram, counted independently
    counts = [int(np.count_nonzero(diff < edges[1]))] + [
        int(np.count_nonzero((diff >= lo) & (diff < hi))) for lo, hi in zip(edges[1:], [*edges[2:], np.inf])]
    assert figures["histogram"]["counts"] == counts and sum(counts) == 24
    for entry, y in zip(report["versions"], (y1, y2)):
        assert entry["errors"]["y"]["mae"] == pytest.approx(np.mean(np.abs(y - truth)), rel=1e-5)
        assert entry["errors"]["y"]["rmse"] == pytest.approx(np.sqrt(np.mean((y - truth) ** 2)), rel=1e-5)
        assert entry["latency"]["p95_ms"] >= entry["latency"]["p50_ms"] > 0 and entry["inputs_per_second"] > 0
        assert entry["sha256"] == world["client"].get_version("reg", entry["version"])["frozen"]["sha256"]
    # the same inputs in TF Serving's columnar format give the same figures
    columnar = compare(world, {"model": "reg", "versions": ["1", "2"], "inputs": {"x": x.tolist()},
                               "tolerance": tolerance}).json()
    same = columnar["differences"]["pairs"][0]["outputs"]["y"]
    assert same.pop("histogram") == figures["histogram"]
    assert same == pytest.approx({k: v for k, v in figures.items() if k != "histogram"})


def test_inputs_that_fit_no_signature_are_refused_listing_every_mismatch_before_anything_runs(world):
    x = np.ones((2, 3)).tolist()
    response = compare(world, {"model": "reg", "versions": [1, 3], "instances": [{"x": row} for row in x]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "v3: input x is x float32 [-1, 4]" in error and "[-1, 3]" in error and "v1" not in error
    response = compare(world, {"model": "reg", "versions": [1, 2, 3], "instances": [{"z": [1.0]}]})
    assert response.status_code == 400
    error = response.json()["error"]
    for n in (1, 2, 3):
        assert f"v{n}: signature 'serving_default' has no input z" in error and f"v{n}: the inputs lack x" in error
    response = compare(world, {"model": "reg", "versions": [1, 2], "instances": [{"x": ["a", "b", "c"]}]})
    assert response.status_code == 400 and "v1: input x" in response.json()["error"]
    assert "v2: input x" in response.json()["error"]
    # nothing was stored for a refused comparison
    assert all(r["status"] == "done" for r in requests.get(f"{world['url']}/api/v1/models/reg/comparisons").json()
               ["comparisons"])


# -- classifiers ---------------------------------------------------------------------------------------------

def test_image_classifiers_agreement_accuracy_and_confusion_equal_the_tests_own(world):
    scores = {n: image_scores(world, n) for n in (1, 2)}
    top1 = {n: [LABELS[int(np.argmax(s))] for s in scores[n]] for n in (1, 2)}
    expected = list(top1[1])
    expected[0] = next(label for label in LABELS if label != top1[1][0])  # one wrong on purpose
    files = [("image", (p.name, p.read_bytes(), "image/png")) for p in world["images"]]
    response = requests.post(f"{world['url']}/v1/models/cnn:compare", files=files,
                             data={"versions": "1,2", "expected": "\n".join(expected)}, timeout=300)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["kind"] == "classifier"
    pair = report["agreement"]["pairs"][0]
    agree = [a == b for a, b in zip(top1[1], top1[2])]
    assert pair["top1_agreement"] == pytest.approx(np.mean(agree))
    top5 = {n: [[LABELS[i] for i in np.argsort(-s, kind="stable")[:5]] for s in scores[n]] for n in (1, 2)}
    assert pair["top5_agreement"] == pytest.approx(np.mean([a[0] in b and b[0] in a
                                                             for a, b in zip(top5[1], top5[2])]))
    assert report["agreement"]["disagreements"] == [p.name for p, same in zip(world["images"], agree) if not same]
    for entry in report["versions"]:
        n = entry["version"]
        right = [t == e for t, e in zip(top1[n], expected)]
        assert entry["accuracy"]["top1"] == pytest.approx(np.mean(right))
        confusion = entry["confusion"]
        assert confusion["against"] == "expected"
        counted = Counter(zip(expected, top1[n]))
        assert set(confusion["classes"]) == set(expected) | set(top1[n])
        for i, e in enumerate(confusion["classes"]):
            for j, p in enumerate(confusion["classes"]):
                assert confusion["matrix"][i][j] == counted[(e, p)]
        # today's keys stay: each image's top-k per version
        assert [r["predictions"][0]["label"] for r in entry["results"]] == top1[n]
    # and the comparison is stored, readable by its permalink
    stored = requests.get(f"{world['url']}{report['url']}").json()
    assert stored["status"] == "done" and stored["report"]["versions"][0]["accuracy"] == report["versions"][0]["accuracy"]
    assert [v["version"] for v in stored["versions"]] == [1, 2] and stored["eval_set"] is None


def image_set(world, name: str, labels: list[str]) -> Path:
    path = world["root"] / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for picture in world["images"]:
            archive.write(picture, picture.name)
        archive.writestr("expected.txt", "\n".join(labels) + "\n")
    return path


def add_set(world, name: str, path: Path, **options):
    from registry.evaluation import sets

    registry = world["registry"]
    model = options.pop("model", "cnn")
    return sets.add_file(registry.db, registry.storage, model, name, path, **options)


def test_image_set_comparison_is_stored_and_feeds_accuracy_at_set_metrics(world):
    top1 = {n: [LABELS[int(np.argmax(s))] for s in image_scores(world, n)] for n in (1, 2)}
    expected = list(top1[2])
    expected[-1] = next(label for label in LABELS if label != top1[2][-1])
    add_set(world, "holdout", image_set(world, "holdout", expected))
    response = compare(world, {"model": "cnn", "versions": ["1", "2"], "eval_set": "holdout"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["eval_set"] == "holdout@1" and report["inputs"] == len(world["images"])
    stored = world["client"].get_comparison("cnn", report["report"])
    assert stored["eval_set"] == {"name": "holdout", "revision": 1, "deleted": False}
    registry = world["registry"]
    for n in (1, 2):
        version = catalog.get_version(registry.db, "cnn", str(n))
        recorded = {m["name"]: m for m in reports.metrics_of(registry.db, version.id)}
        accuracy = np.mean([t == e for t, e in zip(top1[n], expected)])
        assert recorded["accuracy@holdout"]["value"] == pytest.approx(accuracy)
        assert recorded["accuracy@holdout"]["source"] == "compare"
        assert recorded["accuracy@holdout"]["report_id"] == report["report"]
        assert "top5_accuracy@holdout" in recorded


def test_expected_labels_the_labels_file_lacks_are_named(world):
    add_set(world, "typos", image_set(world, "typos", ["cat", "zebra", "dog", "cat", "unicorn", "yak"]))
    response = compare(world, {"model": "cnn", "versions": [1, 2], "eval_set": "typos@1"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "'unicorn', 'zebra'" in error and "v1" in error and "v2" in error


def test_example_classifiers_on_a_tfrecord_set_agree_and_score_as_tensorflow_says(world):
    x = np.random.default_rng(12).normal(size=(10, 2)).astype(np.float32)
    serialized = []
    for row in x:
        message = tf.train.Example()
        message.features.feature["x"].float_list.value.extend(row.tolist())
        serialized.append(message.SerializeToString())
    top1 = {}
    for n in (1, 2):
        out = tfmodels.run_signature(world["classifiers"][n], "classification", {"inputs": serialized})
        top1[n] = [CLASSES[int(np.argmax(r))] for r in out["scores"]]
    expected = list(top1[1])
    expected[:2] = [c for c in CLASSES if c != expected[0]][0], [c for c in CLASSES if c != expected[1]][0]
    path = world["root"] / "records.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row, label in zip(x, expected):
            message = tf.train.Example()
            message.features.feature["x"].float_list.value.extend(row.tolist())
            message.features.feature["label"].bytes_list.value.append(label.encode())
            writer.write(message.SerializeToString())
    add_set(world, "records", path, model="ex", label_feature="label")
    response = compare(world, {"model": "ex", "versions": [1, 2], "eval_set": "records",
                               "signature_name": "classification", "top_k": 2})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["kind"] == "classifier" and report["signature"] == "classification"
    assert 0 < report["agreement"]["pairs"][0]["top1_agreement"] < 1  # two versions that really differ
    assert report["agreement"]["pairs"][0]["top1_agreement"] == pytest.approx(
        np.mean([a == b for a, b in zip(top1[1], top1[2])]))
    for entry in report["versions"]:
        n = entry["version"]
        assert entry["accuracy"]["top1"] == pytest.approx(np.mean([t == e for t, e in zip(top1[n], expected)]))
        assert set(entry["confusion"]["classes"]) <= set(CLASSES)
    # the same examples uploaded as JSON, on the default (predict) signature: the same agreement
    uploaded = compare(world, {"model": "ex", "versions": [1, 2], "examples": [{"x": r} for r in x.tolist()]})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["agreement"]["pairs"][0]["top1_agreement"] == report["agreement"]["pairs"][0][
        "top1_agreement"]


# -- long comparisons run as jobs ---------------------------------------------------------------------------

def test_a_large_set_answers_202_and_a_worker_job_finishes_it_with_progress(world):
    x = np.random.default_rng(9).normal(size=(40, 3)).astype(np.float32)
    truth = np.random.default_rng(10).normal(size=(40, 2))
    lines = [json.dumps({"x": row, "expected": t}) for row, t in zip(x.tolist(), truth.tolist())]
    path = world["root"] / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    add_set(world, "big", path, model="reg")
    response = compare(world, {"model": "reg", "versions": [1, "2"], "eval_set": "big", "tolerance": 0.5})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["url"] == f"/api/v1/models/reg/comparisons/{answer['report']}" and answer["total"] == 40
    seen, deadline = set(), time.monotonic() + 300
    while True:
        stored = requests.get(f"{world['url']}{answer['url']}").json()
        seen.add((stored["status"], stored["done"]))
        if stored["status"] in ("done", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stored["status"] == "done", stored["error"]
    assert stored["done"] == stored["total"] == 40
    assert stored["report"]["versions"][0]["latency"]["batches"] == 40 // BATCH  # streamed in batches
    y1, y2 = tf_outputs(world, 1, x), tf_outputs(world, 2, x)
    figures = stored["report"]["differences"]["pairs"][0]["outputs"]["y"]
    assert figures["max_abs_diff"] == pytest.approx(np.abs(y1.astype(np.float64) - y2).max(), rel=1e-5)
    assert stored["report"]["versions"][1]["errors"]["y"]["rmse"] == pytest.approx(
        np.sqrt(np.mean((y2 - truth) ** 2)), rel=1e-5)
    from registry.models import Job

    with world["registry"].db.transaction() as session:
        job = session.scalar(sa.select(Job).where(Job.report_id == answer["report"]))
        assert (job.kind, job.status) == ("compare", "succeeded")
    # uploaded inputs beyond REGISTRY_COMPARE_SYNC_MAX run as a job too
    response = compare(world, {"model": "reg", "versions": [1, 2], "inputs": {"x": x.tolist()}})
    assert response.status_code == 202


def test_cli_compares_on_a_set_waiting_for_the_job_and_lists_the_reports(world):
    import subprocess
    import sys

    env = {**__import__("os").environ, "REGISTRY_URL": world["url"]}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "registry.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    done = run("compare", "reg", "--eval-set", "big@1", "--versions", "1,2", "--wait", "--tolerance", "0.5")
    assert done.returncode == 0, done.stderr
    assert "numeric comparison of 2 versions on 40 inputs" in done.stdout and "MAX |DIFF|" in done.stdout
    kept = next(line for line in done.stdout.splitlines() if line.startswith("report "))
    number = kept.split()[1]
    assert kept == (f"report {number} kept: registry comparisons reg {number} "
                    f"(page: {world['url']}/models/reg/comparisons/{number})")
    listed = run("comparisons", "reg")
    assert listed.returncode == 0 and "big@1" in listed.stdout and "done" in listed.stdout
    wrong = run("compare", "reg", "--eval-set", "nosuchset", "--versions", "1,2")
    assert wrong.returncode == 1 and wrong.stderr.startswith("Error: ") and "Traceback" not in wrong.stderr


# -- reports outlive what they name -----------------------------------------------------------------------

def test_a_report_whose_version_was_deleted_stays_readable_and_marks_it(world):
    client = world["client"]
    for n in (1, 2):
        push_saved_model(client, "gone", world["exports"][n])
    x = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    report = compare(world, {"model": "gone", "versions": [1, 2], "instances": x.tolist()}).json()
    client.delete_version("gone", 2)
    stored = client.get_comparison("gone", report["report"])
    assert stored["status"] == "done"
    assert [(v["version"], v["deleted"]) for v in stored["versions"]] == [(1, False), (2, True)]
    assert stored["report"]["differences"] == report["differences"]
    listed = client.list_comparisons("gone")
    assert listed[0]["id"] == report["report"] and listed[0]["versions"][1]["deleted"] is True
