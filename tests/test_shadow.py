"""Shadow traffic over real HTTP, on SQLite and PostgreSQL: an alias's version answers exactly as alone,
a copy runs on the shadow version, and the agreement stored per window equals what TensorFlow's own
outputs of both frozen graphs say; a full queue drops copies without delaying the primary; setting a
shadow is audited and refused when it cannot be; deleting the shadow version stops shadowing."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

from registry.client import RegistryClient
from tests import tfmodels
from tests.conftest import BOTH_DATABASES_PER_MODULE, make_settings, start_live_server
from tests.helpers import bearer, issue_tokens

pytestmark = [pytest.mark.slow, BOTH_DATABASES_PER_MODULE]

CLIENTS = 16
REQUESTS_PER_CLIENT = 4
BATCH = 2


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory, module_database):
    """A server (flushing every 0.2 s, keeping 3 disagreeing inputs) with model NAME: v1 and v2 frozen from
    different seeds, 'production' -> 1 with shadow 2 set by the test that measures it."""
    home = tmp_path_factory.mktemp("shadow")
    settings = make_settings(home, embedded_workers=1, shadow_flush_seconds=0.2, shadow_samples=3,
                             **({"database_url": module_database} if module_database else {}))
    server, stop = start_live_server(settings, workers=True)
    tokens = issue_tokens(server.registry.db)
    client = RegistryClient(server.url, token=tokens["write"])
    name = "shadowed-pg" if module_database else "shadowed-sqlite"  # metrics are counted per process
    graphs = tmp_path_factory.mktemp("graphs")
    for number, seed in ((1, 3), (2, 4), (3, 5)):
        built = tfmodels.build_frozen(graphs / f"seed{seed}", seed=seed)
        client.push(name, [("frozen", built.frozen_graph)], {})
        assert client.wait(name, number, timeout=120)["status"] == "ready"
    pulled = tmp_path_factory.mktemp("pulled")
    for number in (1, 2):
        client.pull(name, str(number), pulled / f"v{number}.pb")
    client.set_alias(name, "production", 1)
    yield {"server": server, "url": server.url, "name": name, "client": client, "tokens": tokens,
           "frozen": {n: pulled / f"v{n}.pb" for n in (1, 2)}, "settings": settings, "stop": stop}
    stop()


def outputs(shadowed, version: int, inputs: np.ndarray) -> np.ndarray:
    """TensorFlow's own answer of the version's frozen graph."""
    return tfmodels.run_frozen(shadowed["frozen"][version], tfmodels.OUTPUT, inputs)


def predict(session: requests.Session, url: str, name: str, alias: str, inputs: np.ndarray) -> np.ndarray:
    answer = session.post(f"{url}/v1/models/{name}/labels/{alias}:predict",
                          json={"instances": inputs.tolist()}, timeout=60)
    assert answer.status_code == 200, answer.text
    return np.asarray(answer.json()["predictions"], dtype=np.float32)


def report(shadowed, alias: str, name: str | None = None, **params) -> dict:
    answer = requests.get(f"{shadowed['url']}/api/v1/models/{name or shadowed['name']}/aliases/{alias}/shadow",
                          params=params, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_for(shadowed, alias: str, done, timeout: float = 90.0, name: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = report(shadowed, alias, name)
        if done(found["totals"]) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def metric(url: str, name: str, **labels) -> float:
    text = requests.get(f"{url}/monitoring/prometheus/metrics", timeout=30).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_sixteen_clients_get_the_primarys_answers_and_the_stored_agreement_is_tensorflows(shadowed):
    url, name, client = shadowed["url"], shadowed["name"], shadowed["client"]
    assert client.set_shadow(name, "production", 2) == {"model": name, "alias": "production", "version": 1,
                                                        "shadow_version": 2}
    time.sleep(1.1)  # the label service reads the setting at most a second old
    rng = np.random.default_rng(16)
    inputs = rng.random((CLIENTS, REQUESTS_PER_CLIENT, BATCH, 8, 8, 3), dtype=np.float32)
    answers = np.zeros((CLIENTS, REQUESTS_PER_CLIENT, BATCH, tfmodels.CLASSES), dtype=np.float32)
    start = threading.Barrier(CLIENTS)
    failures = []

    def run(i: int) -> None:
        try:
            with requests.Session() as session:
                start.wait(timeout=30)
                for j in range(REQUESTS_PER_CLIENT):
                    answers[i, j] = predict(session, url, name, "production", inputs[i, j])
        except BaseException as exc:  # reported below: a thread's assertion does not fail the test
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures

    flat = inputs.reshape(-1, 8, 8, 3)
    primary, shadow = outputs(shadowed, 1, flat), outputs(shadowed, 2, flat)
    np.testing.assert_allclose(answers.reshape(primary.shape), primary, rtol=0, atol=1e-5)
    total = len(flat)
    agreed = int(np.sum(np.argmax(primary, axis=1) == np.argmax(shadow, axis=1)))
    diff = np.abs(primary.astype(np.float64) - shadow)
    assert 0 < agreed < total  # two different versions: some inputs each way

    found = wait_for(shadowed, "production", lambda t: t["compared"] + t["errors"] >= total)
    totals = found["totals"]
    assert (totals["requests"], totals["compared"], totals["agreed"]) == (CLIENTS * REQUESTS_PER_CLIENT, total,
                                                                          agreed)
    assert (totals["dropped"], totals["errors"], totals["values"]) == (0, 0, total * tfmodels.CLASSES)
    assert totals["agreement"] == pytest.approx(agreed / total)
    assert totals["max_abs_diff"] == pytest.approx(float(diff.max()), abs=1e-5)
    assert totals["mean_abs_diff"] == pytest.approx(float(diff.mean()), abs=1e-6)
    assert {(w["primary_version"], w["shadow_version"]) for w in found["windows"]} == {(1, 2)}
    assert sum(w["compared"] for w in found["windows"]) == total

    # REGISTRY_SHADOW_SAMPLES=3: the newest three disagreeing inputs, each a real disagreement
    assert len(found["samples"]) == 3
    for sample in found["samples"]:
        (given,) = sample["inputs"].values()  # by signature key, as TF Serving's JSON writes values
        ours, theirs = (outputs(shadowed, v, np.asarray([given], dtype=np.float32))[0] for v in (1, 2))
        assert np.argmax(ours) != np.argmax(theirs)
        np.testing.assert_allclose(next(iter(sample["primary_outputs"].values())), ours, atol=1e-5)
        np.testing.assert_allclose(next(iter(sample["shadow_outputs"].values())), theirs, atol=1e-5)

    # ... and Prometheus counted the same (counters of this process: this model's series only)
    labels = {"model": name, "alias": "production"}
    assert metric(url, "registry_shadow_requests_total", **labels) == CLIENTS * REQUESTS_PER_CLIENT
    assert metric(url, "registry_shadow_comparisons_total", **labels) == total
    assert metric(url, "registry_shadow_agreements_total", **labels) == agreed
    assert metric(url, "registry_shadow_abs_diff_count", **labels) == total
    assert metric(url, "registry_shadow_drops_total", **labels) == 0


def test_the_model_page_charts_the_agreement_per_window(shadowed):
    """After the traffic above: the page's shadow panel says what the API says, with an inline SVG."""
    totals = report(shadowed, "production")["totals"]
    page = requests.get(f"{shadowed['url']}/models/{shadowed['name']}", timeout=30).text
    panel = page[page.index('id="shadow-production"'):]
    panel = panel[:panel.index("</div>")]
    assert f"agrees on <strong>{100 * totals['agreed'] / totals['compared']:.1f}%</strong> of " \
           f"{totals['compared']:,} inputs" in panel
    svg = panel[panel.index("<svg"):panel.index("</svg>")]
    assert svg.count("<circle") >= 1 and "<polyline" in svg
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched from elsewhere


def test_a_full_queue_drops_copies_and_counts_them_without_delaying_the_primary(shadowed, tmp_path):
    """A second server on the same database with room for one copy, its shadow thread stopped."""
    name = shadowed["name"]
    shadowed["client"].set_alias(name, "canary", 1)
    shadowed["client"].set_shadow(name, "canary", 2)
    settings = make_settings(tmp_path / "second", database_url=shadowed["settings"].database_url,
                             storage_url=shadowed["settings"].storage_url, shadow_queue_size=1,
                             shadow_flush_seconds=3600)
    second, stop = start_live_server(settings, workers=False)
    try:
        traffic = second.registry.label_service().shadow
        traffic.stop()
        inputs = np.random.default_rng(5).random((12, 1, 8, 8, 3), dtype=np.float32)
        expected = outputs(shadowed, 1, inputs.reshape(-1, 8, 8, 3))
        with requests.Session() as session:
            predict(session, second.url, name, "canary", inputs[0])  # loads the graph
            started = time.perf_counter()
            answers = [predict(session, second.url, name, "canary", x) for x in inputs[1:]]
            elapsed = time.perf_counter() - started
        np.testing.assert_allclose(np.concatenate(answers), expected[1:], rtol=0, atol=1e-5)
        assert elapsed < 10  # 11 answers of a small graph: nothing waited for the stopped shadow
        labels = {"model": name, "alias": "canary"}
        assert metric(second.url, "registry_shadow_drops_total", **labels) == 11  # the queue holds one
        assert metric(second.url, "registry_shadow_requests_total", **labels) == 12
        traffic.flush()
        totals = report(shadowed, "canary")["totals"]
        assert (totals["requests"], totals["dropped"], totals["compared"], totals["errors"]) == (12, 11, 0, 0)
    finally:
        stop()


def test_setting_a_shadow_is_audited_and_needs_a_write_token(shadowed):
    url, name, tokens = shadowed["url"], shadowed["name"], shadowed["tokens"]
    path = f"{url}/api/v1/models/{name}/aliases/production/shadow"
    refused = requests.put(path, json={"version": 2}, headers=bearer(tokens["read"]), timeout=30)
    assert refused.status_code == 403
    assert requests.put(path, json={"version": 2}, timeout=30).status_code == 401
    answer = requests.put(path, json={"version": 2}, headers=bearer(tokens["write"]), timeout=30)
    assert answer.status_code == 200, answer.text
    events = requests.get(f"{url}/api/v1/audit", params={"action": "alias.shadow.set"},
                          headers=bearer(tokens["admin"]), timeout=30).json()["events"]
    assert events[0]["target"] == f"{name}:production"
    assert events[0]["actor"] == "write-token"
    assert events[0]["details"]["shadow"] == 2 and events[0]["details"]["version"] == 1


@pytest.mark.parametrize(("alias", "body", "status", "code", "says"), [
    ("production", {"version": 1}, 400, "shadow_is_primary", "a shadow must be another version"),
    ("production", {"version": 99}, 404, "version_not_found", "has no version 99"),
    ("nosuch", {"version": 2}, 404, "alias_not_found", "has no alias 'nosuch'"),
    ("production", {"version": "two"}, 400, "invalid_shadow_body", '{"version": 3}'),
])
def test_a_shadow_that_cannot_be_is_refused_with_a_clear_message(shadowed, alias, body, status, code, says):
    answer = requests.put(f"{shadowed['url']}/api/v1/models/{shadowed['name']}/aliases/{alias}/shadow", json=body,
                          headers=bearer(shadowed["tokens"]["write"]), timeout=30)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert says in answer.json()["error"]["message"]


def test_a_version_that_is_not_ready_cannot_shadow(shadowed, tmp_path):
    client, name = shadowed["client"], shadowed["name"]
    broken = tfmodels.build_frozen(tmp_path / "broken", seed=6)
    record = client.push(name, [("frozen", broken.frozen_graph)], {"output_nodes": "predictions/Softmx"})
    done = client.wait(name, record["version"], timeout=120)
    assert done["status"] == "failed", done
    answer = requests.put(f"{shadowed['url']}/api/v1/models/{name}/aliases/production/shadow",
                          json={"version": record["version"]}, headers=bearer(shadowed["tokens"]["write"]),
                          timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "shadow_not_ready"
    assert f"version {record['version']} of {name!r} is failed" in answer.json()["error"]["message"]


def test_deleting_the_shadow_version_stops_shadowing_with_an_audit_entry(shadowed):
    url, name, client, tokens = shadowed["url"], shadowed["name"], shadowed["client"], shadowed["tokens"]
    client.set_alias(name, "staging", 1)
    client.set_shadow(name, "staging", 3)
    assert report(shadowed, "staging")["shadow_version"] == 3
    client.delete_version(name, 3)
    assert report(shadowed, "staging")["shadow_version"] is None
    events = requests.get(f"{url}/api/v1/audit", params={"action": "alias.shadow.stop"},
                          headers=bearer(tokens["admin"]), timeout=30).json()["events"]
    assert events[0]["target"] == f"{name}:staging"
    assert events[0]["details"] == {"shadow": 3, "reason": "the shadow version was deleted"}
    time.sleep(1.1)
    with requests.Session() as session:  # the alias answers as ever, and nothing shadows it
        x = np.random.default_rng(9).random((1, 8, 8, 3), dtype=np.float32)
        np.testing.assert_allclose(predict(session, url, name, "staging", x), outputs(shadowed, 1, x), atol=1e-5)
    assert metric(url, "registry_shadow_requests_total", model=name, alias="staging") == 0


def test_cli_sets_shows_and_stops_a_shadow(shadowed, tmp_path):
    url, name = shadowed["url"], shadowed["name"]

    def registry(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "registry.cli", *args, "--url", url, "--token",
                               shadowed["tokens"]["write"]], capture_output=True, text=True, timeout=120)

    shadowed["client"].set_alias(name, "cli", 1)
    done = registry("shadow", name, "cli", "v2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{name}:cli -> version 1; shadow: version 2 gets a copy of each request"
    shown = registry("shadow", name, "cli")
    assert shown.returncode == 0, shown.stderr
    assert f"{name}:cli -> version 1; shadow: version 2" in shown.stdout
    assert "0 requests, 0 inputs compared" in shown.stdout
    stopped = registry("shadow", name, "cli", "--delete")
    assert stopped.returncode == 0, stopped.stderr
    assert "no shadow any more" in stopped.stdout
    again = registry("shadow", name, "cli", "--delete")
    assert again.returncode == 1
    assert again.stderr.strip().startswith("Error: ") and len(again.stderr.strip().splitlines()) == 1
    assert "has no shadow version" in again.stderr
    bad = registry("shadow", name, "cli", "two")
    assert bad.returncode == 2 and "write it as 3 or v3" in bad.stderr


def test_grpc_predict_through_a_version_label_is_shadowed_too(shadowed):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from registry.serving.grpc_server import start_grpc_server

    name = shadowed["name"]
    shadowed["client"].set_alias(name, "grpc", 1)
    shadowed["client"].set_shadow(name, "grpc", 2)
    time.sleep(1.1)
    inputs = np.random.default_rng(21).random((4, BATCH, 8, 8, 3), dtype=np.float32)
    server, port = start_grpc_server(shadowed["server"].registry, port=0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            answers = []
            for batch in inputs:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = name
                request.model_spec.version_label = "grpc"
                request.inputs["input"].CopyFrom(tf.make_tensor_proto(batch))
                response = stub.Predict(request, timeout=60)
                assert response.model_spec.version.value == 1
                (output,) = response.outputs.values()
                answers.append(tf.make_ndarray(output))
    finally:
        server.stop(0)
    flat = inputs.reshape(-1, 8, 8, 3)
    primary, shadow = outputs(shadowed, 1, flat), outputs(shadowed, 2, flat)
    np.testing.assert_allclose(np.concatenate(answers), primary, rtol=0, atol=1e-5)
    totals = wait_for(shadowed, "grpc", lambda t: t["compared"] + t["errors"] >= len(flat))["totals"]
    agreed = int(np.sum(np.argmax(primary, axis=1) == np.argmax(shadow, axis=1)))
    assert (totals["requests"], totals["compared"], totals["agreed"], totals["errors"]) == (4, len(flat), agreed, 0)
    assert totals["max_abs_diff"] == pytest.approx(float(np.abs(primary - shadow).max()), abs=1e-5)


def test_label_through_an_alias_is_shadowed_on_the_same_image_bytes(shadowed, tmp_path):
    from tests import images as test_images

    url, name, client = shadowed["url"], shadowed["name"], shadowed["client"]
    client.set_alias(name, "labelled", 1)
    client.set_shadow(name, "labelled", 2)
    time.sleep(1.1)
    pictures = list(test_images.write_images(tmp_path).values())  # JPEG, PNG, BMP and GIF of several sizes
    p = client.get_version(name, "1")["preprocessing"]
    tensors = np.concatenate([test_images.label_image_tensor(
        path, height=p["input_height"], width=p["input_width"], mean=p["input_mean"], std=p["input_std"])
        for path in pictures])
    primary, shadow = outputs(shadowed, 1, tensors), outputs(shadowed, 2, tensors)
    for path, row in zip(pictures, primary):
        answer = requests.post(f"{url}/v1/models/{name}/labels/labelled:label", params={"top_k": 1},
                               files={"image": (path.name, path.read_bytes())}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == 1
        assert answer.json()["predictions"][0]["index"] == int(np.argmax(row))  # the primary's answer, as ever
    count = len(pictures)
    agreed = int(np.sum(np.argmax(primary, axis=1) == np.argmax(shadow, axis=1)))
    totals = wait_for(shadowed, "labelled", lambda t: t["compared"] + t["errors"] >= count)["totals"]
    assert (totals["requests"], totals["compared"], totals["agreed"], totals["errors"]) == (count, count, agreed, 0)
    assert totals["values"] == count * tfmodels.CLASSES
    assert totals["max_abs_diff"] == pytest.approx(float(np.abs(primary - shadow).max()), abs=1e-5)


def test_classify_through_an_alias_over_rest_and_grpc_is_shadowed_on_the_same_examples(shadowed, tmp_path):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    from registry.converter.saved_model import write_archive
    from registry.serving.grpc_server import start_grpc_server

    client, name = shadowed["client"], f"{shadowed['name']}-examples"
    exports = {}
    for number, seed in ((1, 4), (2, 8)):
        exports[number] = tfmodels.build_example_classifier(tmp_path / f"ex{number}", seed)
        write_archive(exports[number], tmp_path / f"ex{number}.tar.gz")
        client.push(name, [("saved_model", tmp_path / f"ex{number}.tar.gz")], {})
        assert client.wait(name, number, timeout=300)["status"] == "ready"
    client.set_alias(name, "production", 1)
    client.set_shadow(name, "production", 2)
    time.sleep(1.1)
    x = np.random.default_rng(17).normal(size=(8, 2)).astype(np.float32)
    answered = []
    response = requests.post(f"{shadowed['url']}/v1/models/{name}/labels/production:classify", timeout=60,
                             json={"signature_name": "classification", "examples": [{"x": r} for r in x[:4].tolist()]})
    assert response.status_code == 200, response.text
    answered += [[score for _, score in classes] for classes in response.json()["results"]]
    server, port = start_grpc_server(shadowed["server"].registry, port=0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = classification_pb2.ClassificationRequest()
            request.model_spec.name, request.model_spec.version_label = name, "production"
            request.model_spec.signature_name = "classification"
            for row in x[4:]:
                request.input.example_list.examples.add().features.feature["x"].float_list.value.extend(row.tolist())
            result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, timeout=60)
            assert result.model_spec.version.value == 1
            answered += [[c.score for c in entry.classes] for entry in result.result.classifications]
    finally:
        server.stop(0)
    serialized = []
    for row in x:
        message = tf.train.Example()
        message.features.feature["x"].float_list.value.extend(row.tolist())
        serialized.append(message.SerializeToString())
    own = {n: tfmodels.run_signature(exports[n], "classification", {"inputs": serialized})["scores"] for n in (1, 2)}
    np.testing.assert_allclose(answered, own[1], atol=1e-6)  # the primary answers as alone
    agreed = int(np.sum(np.argmax(own[1], axis=1) == np.argmax(own[2], axis=1)))
    assert 0 < agreed < len(x)  # two versions that really differ
    totals = wait_for(shadowed, "production", lambda t: t["compared"] + t["errors"] >= len(x), name=name)["totals"]
    assert (totals["requests"], totals["compared"], totals["agreed"], totals["errors"]) == (2, len(x), agreed, 0)
    assert totals["max_abs_diff"] == pytest.approx(float(np.abs(own[1] - own[2]).max()), abs=1e-6)


def test_a_shadow_that_cannot_run_stops_shadowing_with_an_audit_entry(shadowed, tmp_path):
    """A shadow version the registry may not run (a flagged graph: it reads a file) stops shadowing at its
    first copy; the alias's answers never notice."""
    url, name, client = shadowed["url"], shadowed["name"], shadowed["client"]
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"seven!!")
    record = client.push(name, [("frozen", tfmodels.build_reading_frozen(tmp_path, notes))], {"output_nodes": "output"})
    done = client.wait(name, record["version"], timeout=180)
    assert done["status"] == "ready" and done["safety"]["flagged"] is True
    client.set_alias(name, "risky", 1)
    client.set_shadow(name, "risky", record["version"])
    time.sleep(1.1)
    x = np.random.default_rng(3).random((2, 8, 8, 3), dtype=np.float32)
    with requests.Session() as session:
        np.testing.assert_allclose(predict(session, url, name, "risky", x), outputs(shadowed, 1, x), atol=1e-5)
    found = wait_for(shadowed, "risky", lambda t: t["errors"] >= 1)
    assert found["shadow_version"] is None
    assert (found["totals"]["requests"], found["totals"]["errors"], found["totals"]["compared"]) == (1, 1, 0)
    events = requests.get(f"{url}/api/v1/audit", params={"action": "alias.shadow.stop"},
                          headers=bearer(shadowed["tokens"]["admin"]), timeout=30).json()["events"]
    assert events[0]["target"] == f"{name}:risky" and events[0]["actor"] == "system"
    assert events[0]["details"]["shadow"] == record["version"] and "ReadFile" in events[0]["details"]["reason"]
    assert metric(url, "registry_shadow_errors_total", model=name, alias="risky") == 1


def test_concurrent_writers_add_into_one_window_without_losing_a_count(shadowed):
    """Eight writers with their own connections (as server processes have) add into the same new window
    at once: the row holds every count, and the largest difference any of them saw."""
    from datetime import datetime, timezone

    from registry import catalog
    from registry.db import Database

    name = shadowed["name"]
    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    writers, rounds = 8, 10
    barrier = threading.Barrier(writers)
    failures = []

    def write(i: int) -> None:
        db = Database(shadowed["settings"].database_url)
        try:
            barrier.wait(timeout=30)
            for j in range(rounds):
                catalog.record_shadow(db, [catalog.WindowCounts(
                    name, "concurrent", 1, 2, start, requests=1, compared=2, agreed=1, values=10,
                    sum_abs_diff=0.5, max_abs_diff=i + j / 100)])
        except BaseException as exc:
            failures.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    report = catalog.get_shadow(shadowed["server"].registry.db, name, "production", start,
                                datetime(2020, 1, 2, tzinfo=timezone.utc))  # an alias to read through
    assert report.windows == []  # windows belong to their alias
    shadowed["client"].set_alias(name, "concurrent", 1)
    (window,) = catalog.get_shadow(shadowed["server"].registry.db, name, "concurrent", start,
                                   datetime(2020, 1, 2, tzinfo=timezone.utc)).windows
    n = writers * rounds
    assert (window.requests, window.compared, window.agreed, window.values) == (n, 2 * n, n, 10 * n)
    assert window.sum_abs_diff == pytest.approx(0.5 * n)
    assert window.max_abs_diff == pytest.approx(writers - 1 + (rounds - 1) / 100)


def test_figures_are_read_for_a_time_range_and_bad_times_are_refused(shadowed):
    from datetime import datetime, timezone

    from registry import catalog

    name = shadowed["name"]
    shadowed["client"].set_alias(name, "ranged", 1)
    catalog.record_shadow(shadowed["server"].registry.db, [catalog.WindowCounts(
        name, "ranged", 1, 2, datetime(2021, 6, 1, 12, 0, tzinfo=timezone.utc), requests=3, compared=3, agreed=2,
        values=15, sum_abs_diff=1.5, max_abs_diff=0.25)])
    assert report(shadowed, "ranged")["windows"] == []  # the last 24 hours by default
    found = report(shadowed, "ranged", since="2021-06-01T11:00:00Z", until="2021-06-01T13:00:00")
    (window,) = found["windows"]
    assert window["window_start"].startswith("2021-06-01T12:00:00")
    assert (window["agreement"], window["mean_abs_diff"], window["max_abs_diff"]) == (2 / 3, 0.1, 0.25)
    assert found["totals"]["requests"] == 3
    assert report(shadowed, "ranged", since="2021-06-01T12:00:01Z", until="2021-06-02")["windows"] == []
    base = f"{shadowed['url']}/api/v1/models/{name}/aliases/ranged/shadow"
    for params, says in (({"since": "yesterday"}, "since must be an ISO 8601 time"),
                         ({"since": "2021-06-02T00:00:00Z", "until": "2021-06-01T00:00:00Z"}, "must be before")):
        refused = requests.get(base, params=params, timeout=30)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_time" and says in refused.json()["error"]["message"]
