"""TF Serving's ``/monitoring/prometheus/metrics`` over real HTTP: a live registry whose embedded
converter freezes a real pushed model, real :predict, :label, :compare and gRPC calls, and a
scrape parsed with prometheus_client's own parser whose counters moved by exactly what was done.
Then ``registry serve --gunicorn`` with two processes: one scrape sums both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from registry.client import RegistryClient
from tests import images as test_images
from tests.conftest import make_settings, start_live_server
from tests.helpers import server_env, start_gunicorn, stop_server

pytestmark = pytest.mark.slow
PATH = "/monitoring/prometheus/metrics"
NAME = "metrics-cnn"
Snapshot = dict[tuple[str, frozenset], float]


def scrape(url: str, **kwargs) -> Snapshot:
    """Every sample of one scrape, keyed by (sample name, labels); the format checked by the parser."""
    response = requests.get(f"{url}{PATH}", timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(snapshot: Snapshot, name: str, **labels: str) -> float:
    return snapshot.get((name, frozenset(labels.items())), 0.0)


def moved(before: Snapshot, after: Snapshot, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def request_labels(method: str, *, api: str = "rest", model: str = NAME, version: str = "1",
                   signature: str = "serving_default") -> dict[str, str]:
    return {"model": model, "version": version, "signature": signature, "api": api, "method": method}


def requests_moved(before: Snapshot, after: Snapshot, status: str = "OK", **labels: str) -> float:
    return moved(before, after, "registry_serving_requests_total", **labels, status=status)


@pytest.fixture(scope="module")
def served(converting_server, models, tmp_path_factory):
    """The converting server, the scrape before anything was pushed, then NAME v1 (a frozen graph)
    pushed and converted, and one push refused."""
    url = converting_server.url
    before = scrape(url)
    frozen = models["frozen"].frozen_graph
    refused = requests.post(f"{url}/api/v1/models/{NAME}/versions", files={"frozen": ("frozen.pb", b"\x0a")},
                            timeout=30)
    assert refused.status_code == 400, refused.text
    client = RegistryClient(url)
    client.push(NAME, [("frozen", frozen)], {})
    record = client.wait(NAME, 1, timeout=120)
    assert record["status"] == "ready", record["status_message"]
    deadline = time.monotonic() + 120  # the SavedModel follows as a second job; let the queue drain
    while record["saved_model"]["state"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.1)
        record = client.get_version(NAME, 1)
    assert record["saved_model"]["state"] == "ready", record["saved_model"]
    images = test_images.write_images(tmp_path_factory.mktemp("images"))
    return {"url": url, "before": before, "refused_code": refused.json()["error"]["code"], "models": models,
            "images": images, "registry": converting_server.registry}


def test_pushes_conversions_and_the_queue_are_counted(served):
    after = scrape(served["url"])
    before = served["before"]
    assert moved(before, after, "registry_pushes_total", outcome="accepted", code="") == 1
    assert moved(before, after, "registry_pushes_total", outcome="refused", code=served["refused_code"]) == 1
    assert moved(before, after, "registry_conversions_total", outcome="ready") == 1
    assert moved(before, after, "registry_conversion_duration_seconds_count", outcome="ready") == 1
    assert moved(before, after, "registry_conversion_duration_seconds_sum", outcome="ready") > 0
    # the queue is counted in the database at scrape time: the one job ran
    assert value(after, "registry_job_queue_depth", state="queued") == 0
    assert value(after, "registry_job_queue_depth", state="running") == 0


def test_queue_depth_is_counted_in_the_database_at_scrape_time(tmp_path, models):
    server, stop = start_live_server(make_settings(tmp_path / "idle"), workers=False)  # no converter
    try:
        client = RegistryClient(server.url)
        assert value(scrape(server.url), "registry_job_queue_depth", state="queued") == 0
        for _ in range(2):
            client.push("waiting", [("frozen", models["frozen"].frozen_graph)], {})
        snapshot = scrape(server.url)
        assert value(snapshot, "registry_job_queue_depth", state="queued") == 2
        assert value(snapshot, "registry_job_queue_depth", state="running") == 0
    finally:
        stop()


def test_a_database_that_does_not_answer_leaves_only_the_queue_out_of_the_scrape():
    from registry import metrics
    from registry.errors import DatabaseUnavailable

    def away() -> dict[str, int]:
        raise DatabaseUnavailable("the database does not answer")

    families = {f.name for f in text_string_to_metric_families(
        metrics.exposition([metrics.QueueDepth(away)]).decode())}
    assert "registry_job_queue_depth" not in families
    assert {"registry_serving_requests", "registry_pushes", "registry_conversions"} <= families


def _predict(url: str, ref: str, instances) -> requests.Response:
    return requests.post(f"{url}/v1/models/{NAME}{ref}:predict", json={"instances": instances}, timeout=60)


def _label(url: str, image: Path) -> requests.Response:
    return requests.post(f"{url}/v1/models/{NAME}/versions/1:label", data=image.read_bytes(),
                         headers={"Content-Type": "image/png"}, timeout=60)


def test_rest_predict_and_label_are_counted_per_model_version_and_method(served):
    url, registry = served["url"], served["registry"]
    instances = served["models"]["frozen"].test_input[:2].tolist()
    before = scrape(url)
    for _ in range(3):
        assert _predict(url, "/versions/1", instances).status_code == 200
    for _ in range(2):
        assert _label(url, served["images"]["chart.png"]).status_code == 200
    assert _predict(url, "/versions/1", [[1.0, 2.0]]).status_code == 400  # the model refuses this shape
    assert _predict(url, "", instances).status_code == 200  # latest: counted under the version it ran
    assert requests.post(f"{url}/v1/models/no-such-model:predict", json={"instances": instances},
                         timeout=30).status_code == 404
    after = scrape(url)

    predict, label = request_labels("predict"), request_labels("label", signature="")
    assert requests_moved(before, after, **predict) == 4
    assert requests_moved(before, after, "INVALID_ARGUMENT", **predict) == 1
    assert requests_moved(before, after, **label) == 2
    # a name that is no model is not a label: its request counts under empty model and version
    assert requests_moved(before, after, "NOT_FOUND", **request_labels("predict", model="", version="",
                                                                        signature="")) == 1
    histogram = "registry_serving_request_duration_seconds"
    assert moved(before, after, f"{histogram}_count", **predict) == 5
    assert moved(before, after, f"{histogram}_bucket", **predict, le="+Inf") == 5
    assert moved(before, after, f"{histogram}_sum", **predict) > 0
    assert moved(before, after, f"{histogram}_count", **label) == 2

    # the graph was loaded once (this module's first request of it), then found loaded 6 times
    graph_labels = {"model": NAME, "version": "1"}
    assert moved(before, after, "registry_graph_cache_loads_total", **graph_labels) == 1
    assert moved(before, after, "registry_graph_cache_hits_total", **graph_labels) == 6
    assert moved(before, after, "registry_graph_cache_evictions_total", **graph_labels) == 0
    cache = registry.label_service().cache
    graphs = [cache.get(key) for key in cache.keys()]  # after the scrape: these hits are not counted above
    assert moved(before, after, "registry_graph_cache_bytes") == sum(g.memory_bytes for g in graphs) > 0
    assert moved(before, after, "registry_graph_cache_graphs") == len(graphs) == 1

    # one request at a time: every Session.run carried one request; 4 predicts of 2 rows, 2 labels of 1
    assert moved(before, after, "registry_serving_batch_requests_count", **graph_labels) == 6
    assert moved(before, after, "registry_serving_batch_requests_sum", **graph_labels) == 6
    assert moved(before, after, "registry_serving_batch_rows_sum", **graph_labels) == 4 * 2 + 2 * 1


def test_concurrent_predicts_batch_sizes_add_up_to_the_requests(served):
    url = served["url"]
    instances = served["models"]["frozen"].test_input[:1].tolist()
    before = scrape(url)
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: _predict(url, "/versions/1", instances).status_code, range(64)))
    after = scrape(url)
    assert codes == [200] * 64
    graph_labels = {"model": NAME, "version": "1"}
    runs = moved(before, after, "registry_serving_batch_requests_count", **graph_labels)
    assert moved(before, after, "registry_serving_batch_requests_sum", **graph_labels) == 64
    assert moved(before, after, "registry_serving_batch_rows_sum", **graph_labels) == 64
    assert 1 <= runs <= 64
    assert requests_moved(before, after, **request_labels("predict")) == 64


def test_compare_status_and_metadata_over_rest(served):
    url = served["url"]
    image = served["images"]["chart.png"]
    before = scrape(url)
    assert requests.post(f"{url}/v1/models/{NAME}:compare", files={"image": image.open("rb")},
                         timeout=60).status_code == 200
    assert requests.get(f"{url}/v1/models/{NAME}", timeout=30).status_code == 200
    assert requests.get(f"{url}/v1/models/{NAME}/versions/1", timeout=30).status_code == 200
    assert requests.get(f"{url}/v1/models/{NAME}/versions/1/metadata", timeout=30).status_code == 200
    assert requests.post(f"{url}/v1/models/{NAME}:classify", json={}, timeout=30).status_code == 400
    after = scrape(url)
    assert requests_moved(before, after, **request_labels("compare", version="", signature="")) == 1
    assert requests_moved(before, after, **request_labels("status", version="", signature="")) == 1
    assert requests_moved(before, after, **request_labels("status", signature="")) == 1
    assert requests_moved(before, after, **request_labels("metadata")) == 1
    assert requests_moved(before, after, "INVALID_ARGUMENT",
                          **request_labels("classify", model="", version="", signature="")) == 1


def test_grpc_calls_are_counted_under_api_grpc(served):
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from registry.serving.grpc_server import start_grpc_server

    server, port = start_grpc_server(served["registry"], port=0)
    try:
        before = scrape(served["url"])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = NAME
            request.model_spec.version.value = 1
            batch = np.asarray(served["models"]["frozen"].test_input[:2], dtype=np.float32)
            request.inputs["input"].CopyFrom(tf.make_tensor_proto(batch))
            for _ in range(2):
                predictions.Predict(request, timeout=60)
            with pytest.raises(grpc.RpcError) as refused:
                predictions.Classify(classification_pb2.ClassificationRequest(), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no model named
            status = get_model_status_pb2.GetModelStatusRequest()
            status.model_spec.name = NAME
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=30)
        after = scrape(served["url"])
    finally:
        server.stop(0)
    assert requests_moved(before, after, **request_labels("predict", api="grpc")) == 2
    assert moved(before, after, "registry_serving_request_duration_seconds_count",
                 **request_labels("predict", api="grpc")) == 2
    assert requests_moved(before, after, "INVALID_ARGUMENT",
                          **request_labels("classify", api="grpc", model="", version="", signature="")) == 1
    assert requests_moved(before, after, **request_labels("status", api="grpc", version="", signature="")) == 1


def test_metrics_need_a_read_token_where_reads_do(tmp_path):
    from registry.app import create_app
    from tests.conftest import seed_database
    from tests.helpers import bearer, issue_tokens

    app = create_app(seed_database(make_settings(tmp_path / "closed", embedded=False, public_read=False)))
    try:
        tokens = issue_tokens(app.extensions["registry"].db)
        client = app.test_client()
        refused = client.get(PATH)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert "read scope" in refused.get_json()["error"]
        allowed = client.get(PATH, headers=bearer(tokens["read"]))
        assert allowed.status_code == 200 and b"registry_job_queue_depth" in allowed.data
    finally:
        app.extensions["registry"].db.dispose()


def test_a_label_service_alone_serves_the_metrics(tmp_path):
    from registry.app import create_app
    from tests.conftest import seed_database

    app = create_app(seed_database(make_settings(tmp_path / "labels")), serving_only=True)
    try:
        answer = app.test_client().get(PATH)
        assert answer.status_code == 200
        names = {f.name for f in text_string_to_metric_families(answer.get_data(as_text=True))}
        assert {"registry_serving_requests", "registry_graph_cache_bytes", "registry_job_queue_depth"} <= names
    finally:
        app.extensions["registry"].db.dispose()


# -- several gunicorn processes ----------------------------------------------------------------------

def _status_counts(files: Iterable[Path]) -> dict[int, float]:
    """Per process (pid from the file name): the status requests of NAME its counter file holds."""
    counts = {}
    for path in files:
        metric = {m.name: m for m in MultiProcessCollector.merge([str(path)], accumulate=False)}.get(
            "registry_serving_requests")
        samples = [s.value for s in metric.samples if s.labels.get("model") == NAME] if metric else []
        counts[int(path.stem.rsplit("_", 1)[1])] = sum(samples)
    return counts


def test_gunicorn_processes_are_summed_in_one_scrape(tmp_path, models):
    home = tmp_path / "home"
    subprocess.run([sys.executable, "-m", "registry.cli", "migrate"], check=True, capture_output=True,
                   env=server_env(home))
    proc, url = start_gunicorn(server_env(home), 2, "--threads", "4")
    try:
        # the server made its own metrics folder (PROMETHEUS_MULTIPROC_DIR not set), named by its pid
        folders = list(Path(tempfile.gettempdir()).glob(f"registry-metrics-{proc.pid}-*"))
        assert len(folders) == 1, folders
        folder = folders[0]
        RegistryClient(url).push(NAME, [("frozen", models["frozen"].frozen_graph)], {})  # queued: no worker

        sent = 0
        with ThreadPoolExecutor(8) as pool:
            while True:  # until both processes answered some (the kernel spreads new connections)
                codes = list(pool.map(lambda _: requests.get(f"{url}/v1/models/{NAME}", timeout=30).status_code,
                                      range(32)))
                assert codes == [200] * 32
                sent += 32
                per_process = _status_counts(folder.glob("counter_*.db"))
                if sum(1 for n in per_process.values() if n > 0) >= 2 or sent >= 640:
                    break
        assert sum(1 for n in per_process.values() if n > 0) == 2, per_process
        assert sum(per_process.values()) == sent

        # one scrape, in whichever process it lands, shows the sum (each scrape: the same total)
        labels = request_labels("status", version="", signature="")
        for _ in range(4):
            assert value(scrape(url), "registry_serving_requests_total", **labels, status="OK") == sent
        assert value(scrape(url), "registry_job_queue_depth", state="queued") == 1

        # a worker that dies leaves the live gauges' sums (gunicorn's child_exit), not the counts
        victim = next(pid for pid, n in per_process.items() if n > 0)
        assert (folder / f"gauge_livesum_{victim}.db").exists()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (folder / f"gauge_livesum_{victim}.db").exists():
            assert time.monotonic() < deadline, "child_exit did not mark the dead worker"
            time.sleep(0.2)
        assert value(scrape(url), "registry_serving_requests_total", **labels, status="OK") == sent
    finally:
        stop_server(proc)
    assert not folder.exists(), "the server's own metrics folder outlived it"


def test_a_named_metrics_folder_loses_the_files_of_dead_processes_at_start(tmp_path):
    from registry.cli.server import metrics_folder

    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = tmp_path / "metrics"
    folder.mkdir()
    stale, live = folder / f"counter_{dead.pid}.db", folder / f"counter_{os.getpid()}.db"
    stale.write_bytes(b"")
    live.write_bytes(b"")
    assert metrics_folder(str(folder)) == str(folder)
    assert not stale.exists() and live.exists()


def test_in_one_process_queued_counts_reach_every_scrape_and_the_queue_stays_bounded(monkeypatch):
    """A single-process server queues what requests count and records it at the scrape: a scrape right
    after shows every request, and with nobody scraping the queue does not grow past its bound."""
    from registry import metrics

    monkeypatch.setattr(metrics, "MULTIPROCESS", False)
    labels = ("queued-metrics-model", "1")

    def hits(text: bytes) -> float:
        return value({(s.name, frozenset(s.labels.items())): s.value
                      for family in text_string_to_metric_families(text.decode()) for s in family.samples},
                     "registry_graph_cache_hits_total", model=labels[0], version=labels[1])

    before = hits(metrics.exposition())
    for _ in range(3 * metrics.DEFERRED_MAX):
        metrics.count_cache_hit(labels)
        assert len(metrics._deferred) <= metrics.DEFERRED_MAX + 1  # noqa: SLF001
    for _ in range(5):
        with metrics.observe_request("grpc", "predict"):
            metrics.served(*labels)
    assert hits(metrics.exposition()) - before == 3 * metrics.DEFERRED_MAX
    assert not metrics._deferred  # noqa: SLF001 - the scrape recorded it all
    samples = {(s.name, frozenset(s.labels.items())): s.value for family in
               text_string_to_metric_families(metrics.exposition().decode()) for s in family.samples}
    assert value(samples, "registry_serving_requests_total", **request_labels(
        "predict", api="grpc", model=labels[0], version=labels[1]), status="OK") == 5
