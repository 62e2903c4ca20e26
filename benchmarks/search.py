"""Tag-filtered search and the model page at 100,000 versions, on SQLite and PostgreSQL (issue 17).

Fills a fresh registry per engine with 1,000 models x 100 versions, five tags per version (team: one
of 40, stage: one of 4, owner: one of 200, dataset: one of 25, run: unique), every 7th version
failed and two aliases per model, by inserting rows in bulk (no pushing, the point is the queries).
A small model ``tiny`` has 10 versions.  It then times, with Flask's test client (server time: the
WSGI call with the whole body read, no network), many interleaved repetitions of

- ``GET /api/v1/versions?filter=tags.team = "team-7" AND status = "ready"&page_size=50`` (the
  issue's search: first page of 50, newest first),
- the same with ``OR`` and an alias: ``(tags.stage = "prod" OR alias = "production") AND
  tags.team = "team-7"``,
- ``GET /models/tiny``: the model page of a 10-version model in that registry, against the same page
  in a registry that holds only ``tiny`` (the baseline, measured in the same run),

and prints each engine's query plan of the search.  Targets: the tag-filtered search takes at most
50 ms of server time; the model page at most 1.5x its time in the small registry.  Exits 1 when a
target is missed.  PostgreSQL runs when 127.0.0.1:5432 answers (a scratch database is created and
dropped).

Run from the repository root: ``.venv/bin/python benchmarks/search.py [--versions 100000]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from registry.app import create_app  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.models import Alias, ModelVersion, RegisteredModel, VersionTag  # noqa: E402
from registry.search.query import compile_filter, _version_condition  # noqa: E402

SEARCH_TARGET_MS = 50.0
PAGE_RATIO_TARGET = 1.5
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SEARCH = 'tags.team = "team-7" AND status = "ready"'
SEARCH_OR = '(tags.stage = "prod" OR alias = "production") AND tags.team = "team-7"'


def settings_for(home: Path, database_url: str | None) -> Settings:
    return Settings(home=home, database_url=database_url or f"sqlite:///{home / 'registry.db'}",
                    storage_url=(home / "blobs").as_uri(), server_url="http://127.0.0.1:0", embedded_workers=0,
                    demo=False, embedded=database_url is None)


def fill(db, models: int, per_model: int, *, tiny: bool = True) -> None:
    """``models`` models of ``per_model`` versions with five tags each, and ``tiny`` with 10."""
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    names = [f"model-{i:04d}" for i in range(models)] + (["tiny"] if tiny else [])
    with db.transaction() as session:
        session.execute(sa.insert(RegisteredModel), [
            {"name": n, "description": "", "last_version": 10 if n == "tiny" else per_model,
             "version_count": 10 if n == "tiny" else per_model, "created_at": start, "updated_at": start}
            for n in names])
        ids = dict(session.execute(sa.select(RegisteredModel.name, RegisteredModel.id)).all())
    serial = 0
    for name in names:
        count = 10 if name == "tiny" else per_model
        rows = []
        for number in range(1, count + 1):
            serial += 1
            at = start + timedelta(seconds=serial * 37)
            rows.append({"model_id": ids[name], "version": number, "status": "failed" if serial % 7 == 0 else "ready",
                         "status_message": "", "source": "checkpoint+graph", "description": "",
                         "output_nodes": ["out"], "input_nodes": [{"name": "input", "dtype": "float32",
                                                                  "shape": [None, 8], "optional": False}],
                         "created_at": at, "updated_at": at})
        with db.transaction() as session:
            session.execute(sa.insert(ModelVersion), rows)
            versions = session.execute(sa.select(ModelVersion.id, ModelVersion.version)
                                       .where(ModelVersion.model_id == ids[name])).all()
            tags = []
            for version_id, number in versions:
                n = version_id
                tags += [{"version_id": version_id, "key": "team", "value": f"team-{n % 40}"},
                         {"version_id": version_id, "key": "stage", "value": ("dev", "qa", "prod", "old")[n % 4]},
                         {"version_id": version_id, "key": "owner", "value": f"owner-{n % 200}"},
                         {"version_id": version_id, "key": "dataset", "value": f"set-{n % 25}"},
                         {"version_id": version_id, "key": "run", "value": f"run-{n}"}]
            session.execute(sa.insert(VersionTag), [{**t, "updated_by": "bench", "updated_at": start} for t in tags])
            by_number = dict((num, vid) for vid, num in versions)
            session.execute(sa.insert(Alias), [
                {"model_id": ids[name], "name": "production", "version_id": by_number[max(1, count - 3)],
                 "created_at": start, "updated_at": start},
                {"model_id": ids[name], "name": "staging", "version_id": by_number[count],
                 "created_at": start, "updated_at": start}])
    with db.engine.begin() as connection:
        if db.engine.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE"))
        else:
            connection.execute(sa.text("ANALYZE"))


def timed(client, url: str, query: dict | None = None) -> float:
    started = time.perf_counter()
    answer = client.get(url, query_string=query)
    answer.get_data()
    elapsed = (time.perf_counter() - started) * 1000
    assert answer.status_code == 200, (url, answer.status_code, answer.get_data(as_text=True)[:300])
    return elapsed


def plan(db, text: str) -> str:
    condition = compile_filter(text, _version_condition)
    stmt = (sa.select(ModelVersion.id).join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
            .where(RegisteredModel.deleted_at.is_(None), condition)
            .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc()).limit(51))
    compiled = stmt.compile(db.engine, compile_kwargs={"literal_binds": True})
    explain = "EXPLAIN QUERY PLAN " if db.engine.dialect.name == "sqlite" else "EXPLAIN "
    with db.engine.connect() as connection:
        rows = connection.execute(sa.text(explain + str(compiled))).all()
    return "\n".join("    " + " | ".join(str(c) for c in row) for row in rows)


def run_engine(label: str, database_url: str | None, small_url: str | None, versions: int, rounds: int) -> bool:
    models = max(1, versions // 100)
    with tempfile.TemporaryDirectory() as big_home, tempfile.TemporaryDirectory() as small_home:
        big = create_app(settings_for(Path(big_home), database_url))
        small = create_app(settings_for(Path(small_home), small_url))
        started = time.perf_counter()
        fill(big.extensions["registry"].db, models, versions // models)
        fill(small.extensions["registry"].db, 0, 0)
        print(f"\n{label}: {models:,} models x {versions // models} versions + 'tiny' filled in "
              f"{time.perf_counter() - started:.1f} s")
        big_client, small_client = big.test_client(), small.test_client()
        samples: dict[str, list[float]] = {"search": [], "search_or": [], "page_big": [], "page_small": []}
        for client in (big_client, small_client):  # warm caches and the engines' plans
            timed(client, "/models/tiny")
        timed(big_client, "/api/v1/versions", {"filter": SEARCH, "page_size": 50})
        for _ in range(rounds):
            samples["search"].append(timed(big_client, "/api/v1/versions", {"filter": SEARCH, "page_size": 50}))
            samples["search_or"].append(timed(big_client, "/api/v1/versions", {"filter": SEARCH_OR,
                                                                                "page_size": 50}))
            samples["page_big"].append(timed(big_client, "/models/tiny"))
            samples["page_small"].append(timed(small_client, "/models/tiny"))
        found = big_client.get("/api/v1/versions", query_string={"filter": SEARCH, "page_size": 50}).get_json()
        assert len(found["versions"]) == 50 and all(v["tags"]["team"] == "team-7" and v["status"] == "ready"
                                                    for v in found["versions"])
        median = {k: statistics.median(v) for k, v in samples.items()}
        ratio = median["page_big"] / median["page_small"]
        print(f"  search {SEARCH!r}, first page of 50: median {median['search']:.1f} ms "
              f"(p90 {sorted(samples['search'])[int(rounds * 0.9) - 1]:.1f}); target <= {SEARCH_TARGET_MS:.0f} ms")
        print(f"  search {SEARCH_OR!r}: median {median['search_or']:.1f} ms")
        print(f"  model page of 'tiny' (10 versions): {median['page_big']:.1f} ms among {versions:,} versions vs "
              f"{median['page_small']:.1f} ms alone = {ratio:.2f}x; target <= {PAGE_RATIO_TARGET}x")
        print("  query plan of the search:\n" + plan(big.extensions["registry"].db, SEARCH))
        for app in (big, small):
            app.extensions["registry"].db.dispose()
        return median["search"] <= SEARCH_TARGET_MS and ratio <= PAGE_RATIO_TARGET


def postgres_databases():
    """Two scratch databases on the machine's PostgreSQL (None when it does not answer)."""
    try:
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            names = [f"bench_search_{uuid.uuid4().hex[:8]}" for _ in range(2)]
            for name in names:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        return admin, names
    except sa.exc.OperationalError:
        return None, []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    ok = run_engine("SQLite", None, None, args.versions, args.rounds)
    admin, names = postgres_databases()
    if admin is None:
        print("\nPostgreSQL: not reachable on 127.0.0.1:5432, skipped")
        return 0 if ok else 1
    try:
        urls = [f"postgresql+psycopg://postgres@127.0.0.1:5432/{n}" for n in names]
        ok = run_engine("PostgreSQL", urls[0], urls[1], args.versions, args.rounds) and ok
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
