"""The registry on PostgreSQL (set REGISTRY_TEST_DATABASE_URL, else these skip):
version numbers under concurrent pushes, job claims by several workers, a whole
conversion.  Each test gets its own database (the ``pg_url`` fixture)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests
import sqlalchemy as sa

from registry import jobs
from registry.db import Database
from registry.models import Job
from tests.conftest import make_settings, start_live_server
from tests.helpers import frozen_form, push


def test_concurrent_pushes_get_distinct_consecutive_numbers_on_postgresql(tmp_path, pg_url, models):
    server, stop = start_live_server(make_settings(tmp_path / "home", database_url=pg_url), workers=False)
    try:
        frozen = models["frozen"].frozen_graph.read_bytes()

        def one(_):
            response = requests.post(f"{server.url}/api/v1/models/busy/versions",
                                     files={"frozen": ("f.pb", frozen)}, timeout=60)
            assert response.status_code == 202, response.text
            return response.json()["version"]

        with ThreadPoolExecutor(12) as pool:
            numbers = list(pool.map(one, range(30)))
        assert sorted(numbers) == list(range(1, 31))
    finally:
        stop()


def test_concurrent_pushes_of_one_chosen_number_register_it_once_on_postgresql(tmp_path, pg_url, models):
    """Half the pushes ask for TF Serving's folder number 1546532211, half for the next number: the row
    lock lets exactly one take 1546532211 (the others get version_number_taken), and the rest number on
    from wherever the counter stood, never reusing nor going back."""
    chosen = 1546532211
    server, stop = start_live_server(make_settings(tmp_path / "home", database_url=pg_url), workers=False)
    try:
        frozen = models["frozen"].frozen_graph.read_bytes()

        def one(index):
            response = requests.post(f"{server.url}/api/v1/models/busy/versions", files={"frozen": ("f.pb", frozen)},
                                     data={"version": str(chosen)} if index % 2 == 0 else {}, timeout=60)
            return index % 2 == 0, response.status_code, response.json()

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(one, range(24)))
        asked = [(status, body) for chose, status, body in answers if chose]
        assert sorted(status for status, _ in asked) == [202] + [409] * 11, asked
        assert {body["error"]["code"] for status, body in asked if status == 409} == {"version_number_taken"}
        numbers = sorted(body["version"] for _, status, body in answers if status == 202)
        below = [n for n in numbers if n < chosen]
        assert numbers == list(range(1, len(below) + 1)) + list(range(chosen, chosen + 13 - len(below)))
        with server.registry.db.transaction() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 13  # one job per version
    finally:
        stop()


def test_workers_never_claim_the_same_job_on_postgresql(tmp_path, pg_url, models):
    from registry.app import create_app

    app = create_app(make_settings(tmp_path / "home", database_url=pg_url))
    client = app.test_client()
    for _ in range(20):
        assert push(client, "cnn", frozen_form(models["frozen"].frozen_graph)).status_code == 202
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        db = Database(pg_url)  # each worker its own connections, as on separate machines
        while (job := jobs.claim(db, f"worker-{index}", 60)) is not None:
            with lock:
                claimed.append(job.id)
        db.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 20
    with app.extensions["registry"].db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).where(Job.status == "running")) == 20


def test_push_convert_and_pull_on_postgresql(tmp_path, pg_url, models):
    from registry.client import RegistryClient
    from tests import tfmodels

    server, stop = start_live_server(make_settings(tmp_path / "home", database_url=pg_url, embedded_workers=1),
                                     workers=True)
    try:
        client = RegistryClient(server.url)
        model = models["resource_graph"]
        files = [("graph", model.inference_graph), ("index", model.index)] + [("data", p) for p in model.data]
        record = client.wait("cnn", client.push("cnn", files, {"output_nodes": model.output})["version"],
                             timeout=120)
        assert record["status"] == "ready", record["status_message"]
        client.set_alias("cnn", "production", 1)
        client.pull("cnn", "production", tmp_path / "frozen.pb")
        out = tfmodels.run_frozen(tmp_path / "frozen.pb", model.output, model.test_input)
        assert abs(out - model.expected).max() <= 1e-6
    finally:
        stop()
