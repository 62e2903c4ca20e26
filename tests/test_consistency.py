"""Consistency under concurrent writes, through real HTTP on SQLite and PostgreSQL:
one delete of a version wins and the others get 404, an alias moved onto a
version being deleted gets 404 or 409 (never 500), counts stay exact; a refused
push never deletes bytes a concurrent accepted push uses, and one that fails after
publishing leaves its blobs to the garbage collector."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import threading
import time
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
import requests
import sqlalchemy as sa

from registry.jobs.gc import collect_garbage
from registry.models import Alias, ModelVersion, RegisteredModel, utcnow
from tests.conftest import BOTH_DATABASES

pytestmark = BOTH_DATABASES

VERSIONS = 12
ALIASES = ("production", "staging", "canary")
THREADS = 16
SECONDS = 4.0


def graph_def(name: str = "x") -> bytes:
    """The smallest GraphDef the push checks accept: one Placeholder node."""
    node = b"\x0a" + bytes([len(name)]) + name.encode() + b"\x12\x0bPlaceholder"
    return b"\x0a" + bytes([len(node)]) + node


def push_frozen(url: str, model: str, labels: bytes | None = None, name: str = "x") -> requests.Response:
    files = {"frozen": ("f.pb", graph_def(name))}
    if labels is not None:
        files["labels"] = ("labels.txt", labels)
    return requests.post(f"{url}/api/v1/models/{model}/versions", files=files, timeout=60)


def test_concurrent_deletes_and_alias_moves_keep_one_winner_and_exact_counts(live_server):
    """16 threads push, delete and move aliases on one model for a few seconds."""
    url = live_server.url
    for _ in range(VERSIONS):
        assert push_frozen(url, "busy").status_code == 202
    newest = [VERSIONS]
    pushes: Counter = Counter()
    deletes: dict[int, Counter] = defaultdict(Counter)
    alias_moves: Counter = Counter()
    errors: list[str] = []
    stop = time.monotonic() + SECONDS

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        http = requests.Session()
        while time.monotonic() < stop:
            number, roll = rng.randint(max(1, newest[0] - VERSIONS), newest[0]), rng.random()
            if roll < 0.15:
                answer = http.post(f"{url}/api/v1/models/busy/versions", files={"frozen": ("f.pb", graph_def())},
                                   timeout=60)
                pushes[answer.status_code] += 1
                if answer.status_code == 202:
                    newest[0] = max(newest[0], answer.json()["version"])
            elif roll < 0.45:
                answer = http.delete(f"{url}/api/v1/models/busy/versions/{number}", timeout=60)
                deletes[number][answer.status_code] += 1
            else:
                alias = rng.choice(ALIASES)
                answer = http.put(f"{url}/api/v1/models/busy/aliases/{alias}", json={"version": number}, timeout=60)
                alias_moves[answer.status_code] += 1
            if answer.status_code >= 500:
                errors.append(f"{answer.request.method} {answer.request.path_url}: {answer.status_code} {answer.text}")

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert set(pushes) == {202}
    for number, statuses in deletes.items():
        assert statuses[200] <= 1, f"version {number} was deleted {statuses[200]} times: {dict(statuses)}"
        assert set(statuses) <= {200, 404}, dict(statuses)
    assert set(alias_moves) <= {200, 404, 409}, dict(alias_moves)
    deleted = sum(s[200] for s in deletes.values())
    assert deleted > 0 and alias_moves[200] > 0 and alias_moves[404] > 0  # the race really happened

    model = requests.get(f"{url}/api/v1/models/busy", timeout=10).json()
    db = live_server.registry.db
    with db.transaction() as session:
        rows = session.scalar(sa.select(sa.func.count()).select_from(ModelVersion))
        counted = session.scalar(sa.select(RegisteredModel.version_count).where(RegisteredModel.name == "busy"))
        dangling = session.scalar(sa.select(sa.func.count()).select_from(Alias).where(
            Alias.version_id.not_in(sa.select(ModelVersion.id))))
    assert model["version_count"] == counted == rows == VERSIONS + pushes[202] - deleted
    assert dangling == 0
    for alias, number in model["aliases"].items():
        assert requests.get(f"{url}/api/v1/models/busy/versions/{alias}", timeout=10).json()["version"] == number


def test_concurrent_deletes_of_one_version_answer_one_200_and_the_rest_404(live_server):
    url = live_server.url
    for _ in range(3):
        assert push_frozen(url, "busy").status_code == 202
    barrier = threading.Barrier(THREADS)
    statuses: list[int] = []

    def delete() -> None:
        barrier.wait()
        statuses.append(requests.delete(f"{url}/api/v1/models/busy/versions/2", timeout=60).status_code)

    threads = [threading.Thread(target=delete) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [404] * (THREADS - 1)
    assert requests.get(f"{url}/api/v1/models/busy", timeout=10).json()["version_count"] == 2


def test_pushes_racing_a_model_delete_never_land_in_the_deleted_model(live_server):
    url = live_server.url
    assert push_frozen(url, "busy").status_code == 202
    barrier = threading.Barrier(9)
    answers: list[tuple[str, int]] = []

    def one_push() -> None:
        barrier.wait()
        answers.append(("push", push_frozen(url, "busy").status_code))

    def delete_model() -> None:
        barrier.wait()
        answers.append(("delete", requests.delete(f"{url}/api/v1/models/busy", timeout=60).status_code))

    threads = [threading.Thread(target=one_push) for _ in range(8)] + [threading.Thread(target=delete_model)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status < 500 for _, status in answers), answers
    model = requests.get(f"{url}/api/v1/models/busy", timeout=10)
    with live_server.registry.db.transaction() as session:
        rows = session.scalar(sa.select(sa.func.count()).select_from(ModelVersion))
        deleted_at, counted = session.execute(sa.select(RegisteredModel.deleted_at, RegisteredModel.version_count)
                                              .where(RegisteredModel.name == "busy")).one()
    if deleted_at is not None:  # the delete came last: nothing of the model is left
        assert model.status_code == 404 and rows == 0 and counted == 0
    else:  # pushes after the delete brought the model back, counting only their versions
        assert model.status_code == 200 and model.json()["version_count"] == counted == rows


def hostile_saved_model() -> bytes:
    """A .tar.gz the upload check refuses (a link out of the archive)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        pb = tarfile.TarInfo("saved_model.pb")
        pb.size = 1
        tar.addfile(pb, io.BytesIO(b"x"))
        link = tarfile.TarInfo("variables")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    return out.getvalue()


def test_a_refused_push_never_deletes_a_labels_blob_a_concurrent_accepted_push_uses(live_server):
    url = live_server.url
    refused = hostile_saved_model()
    accepted: list[int] = []
    for round_ in range(12):
        labels = f"round {round_}\n".encode() + b"cat\n" * 50_000  # new bytes each round: a new blob
        barrier = threading.Barrier(2)
        answers: dict[str, requests.Response] = {}

        def good() -> None:
            barrier.wait()
            answers["good"] = push_frozen(url, "shared", labels)

        def bad() -> None:
            barrier.wait()
            answers["bad"] = requests.post(f"{url}/api/v1/models/evil/versions", timeout=60, files={
                "saved_model": ("model.tar.gz", refused), "labels": ("labels.txt", labels)})

        threads = [threading.Thread(target=good), threading.Thread(target=bad)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers["bad"].status_code == 400, answers["bad"].text
        assert answers["good"].status_code == 202, answers["good"].text
        accepted.append(answers["good"].json()["version"])
    for number in accepted:
        answer = requests.get(f"{url}/api/v1/models/shared/versions/{number}/labels.txt", timeout=10)
        assert answer.status_code == 200, f"version {number}'s labels are gone: {answer.text}"
        assert answer.content.endswith(b"cat\n")

    # The refused pushes were checked before publishing: their archive never became a blob, their
    # staged files are gone, and garbage collection past its grace period finds nothing of theirs to take.
    registry = live_server.registry
    assert not registry.storage.exists(_digests(refused)[0])
    assert list(registry.storage.iter_temporary()) == []
    later = collect_garbage(registry.db, registry.storage, grace_seconds=3600, now=utcnow() + timedelta(hours=2))
    assert (later.blobs_deleted, later.missing) == (0, [])
    for number in accepted:
        assert requests.get(f"{url}/api/v1/models/shared/versions/{number}/labels.txt", timeout=10).ok


def _set_read_only(url: str, read_only: bool) -> None:
    """PostgreSQL refuses writes on every new connection to the database (as a standby would); the
    server's connections are ended so that its pool reconnects with the setting."""
    name = sa.make_url(url).database
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text("SET default_transaction_read_only = off"))  # this session may change it
            connection.execute(sa.text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = '
                                       f'{"on" if read_only else "off"}'))
            connection.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                       "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
    finally:
        admin.dispose()


def test_a_push_failing_after_publishing_leaves_its_blobs_to_gc_and_never_takes_shared_ones(live_server):
    if live_server.registry.db.dialect != "postgresql":
        pytest.skip("needs a database that can be made to refuse writes while the server runs (PostgreSQL)")
    url = live_server.url
    labels = b"shared labels\n" * 100
    kept = push_frozen(url, "shared", labels)
    assert kept.status_code == 202
    own_graph = graph_def("only_in_the_failed_push")
    _set_read_only(live_server.settings.database_url, True)
    try:
        failed = requests.post(f"{url}/api/v1/models/shared/versions", timeout=60, files={
            "frozen": ("f.pb", own_graph), "labels": ("labels.txt", labels)})
    finally:
        _set_read_only(live_server.settings.database_url, False)
    assert failed.status_code == 503, failed.text  # its blobs were published: the version could not be recorded
    registry = live_server.registry
    own, shared = _digests(own_graph, labels)
    assert registry.storage.exists(own) and registry.storage.exists(shared)
    assert requests.get(f"{url}/api/v1/models/shared/versions/1/labels.txt", timeout=10).content == labels

    young = collect_garbage(registry.db, registry.storage, grace_seconds=3600)
    assert (young.blobs_deleted, young.kept_young) == (0, 1)
    later = collect_garbage(registry.db, registry.storage, grace_seconds=3600, now=utcnow() + timedelta(hours=2))
    assert (later.blobs_deleted, later.missing) == (1, [])
    assert not registry.storage.exists(own)
    assert requests.get(f"{url}/api/v1/models/shared/versions/1/labels.txt", timeout=10).content == labels


def _digests(*blobs: bytes) -> list[str]:
    return [hashlib.sha256(b).hexdigest() for b in blobs]
