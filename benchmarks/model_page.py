"""Server time of the web pages as a model grows: 10 versions against 10,000.

Creates two fresh registries (SQLite + blob folder in temporary directories,
the embedded default) and fills model ``small`` with 10 versions and model
``large`` with 10,000 by inserting rows straight into ``models``,
``model_versions``, ``version_files`` and ``aliases``: realistic rows (ready
with output and input nodes, frozen sha256 and size, a conversion report with
an Inception-sized op histogram, five files each, every 50th version failed, two
aliases), but no pushing or converting, since the point is the pages.

It then times, with Flask's test client (server time: the WSGI call including
reading the whole body, no network), many interleaved repetitions of

- ``GET /models/NAME``: the model page's first page of versions,
- ``GET /models/NAME?page_token=...``: its second page, by the token of the
  first page's "Next page" link (only the large model has one), and a deep page
  near the end,
- ``GET /models/NAME/versions/N``: a version page,

and counts the SQL statements each request runs (``before_cursor_execute`` on
the app's engine).

Targets (from the issue): the model page with 10,000 versions takes at most
1.5x the server time of the same page with 10 versions (keyset pagination, no
N+1 queries), and the version page takes at most 50 ms; the number of SQL
statements per request must not grow with the number of versions.  Exits 1
when a target is missed.

Run from the repository root: ``.venv/bin/python benchmarks/model_page.py``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from registry.app import create_app  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.models import Alias, ModelVersion, RegisteredModel, VersionFile  # noqa: E402

RATIO_TARGET = 1.5
VERSION_PAGE_TARGET_MS = 50.0
OUTPUT = "InceptionV3/Predictions/Reshape_1"
# An Inception v3 inference graph's ops after freezing, roughly.
OP_HISTOGRAM = {
    "Const": 1046, "Identity": 378, "Conv2D": 94, "FusedBatchNormV3": 94, "Relu": 94, "ConcatV2": 15,
    "AvgPool": 9, "MaxPool": 4, "Squeeze": 1, "Reshape": 2, "Softmax": 1, "Placeholder": 1, "BiasAdd": 1,
    "Shape": 1, "Mean": 1,
}


def settings_for(home: Path) -> Settings:
    """The embedded default under ``home``, without demo or workers."""
    return Settings(home=home, database_url=f"sqlite:///{home / 'registry.db'}", storage_url=(home / "blobs").as_uri(),
                    server_url="http://127.0.0.1:0", embedded_workers=0, demo=False)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fill(app, name: str, count: int) -> None:
    """Model ``name`` with versions 1..count, inserted in bulk."""
    db = app.extensions["registry"].db
    started = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with db.transaction() as session:
        model = RegisteredModel(name=name, description=f"{count} versions of an Inception v3 fine-tune",
                                last_version=count, version_count=count, created_at=started,
                                updated_at=started)
        session.add(model)
        session.flush()
        rows = []
        for number in range(1, count + 1):
            created = started + timedelta(minutes=10 * number)
            failed = number % 50 == 0
            common = dict(model_id=model.id, version=number, source="checkpoint+graph",
                          description=f"nightly training run {number}", requested_output_nodes=[OUTPUT],
                          created_at=created, updated_at=created + timedelta(minutes=3))
            if failed:
                rows.append(dict(common, status="failed", status_message=(
                    "output node 'InceptionV3/Predictions/Reshape_2' is not in the graph. Closest existing "
                    f"nodes: {OUTPUT}.")))
                continue
            rows.append(dict(
                common, status="ready", status_message="frozen and verified (largest difference 2.38e-07)",
                output_nodes=[OUTPUT], output_nodes_detected=False,
                input_nodes=[{"name": "input", "dtype": "float32", "shape": [None, 299, 299, 3], "optional": False}],
                frozen_sha256=sha(f"{name}-frozen-{number}"), frozen_size=95_600_000 + number, tf_version="2.21.0",
                preprocessing={"input_mean": 128.0, "input_std": 128.0}, ready_at=created + timedelta(minutes=3),
                conversion={
                    "verification": {"status": "passed", "max_abs_diff": 2.384e-07, "tolerance": 1e-4,
                                     "outputs": [{"name": OUTPUT, "dtype": "float32", "test_shape": [1, 1001]}]},
                    "safety": {"op_histogram": OP_HISTOGRAM, "flags": [], "flagged": False, "upload_flags": [
                        {"op": "RestoreV2", "category": "reads_files", "count": 1, "nodes": ["save/RestoreV2"]},
                        {"op": "SaveV2", "category": "writes_files", "count": 1, "nodes": ["save/SaveV2"]}]},
                    "nodes": {"uploaded": 21_000, "frozen": 1_742},
                    "variables": 378, "variable_bytes": 95_300_000, "dropped_control_edges": 0,
                    "freeze_seconds": 4.1, "total_seconds": 19.7,
                },
            ))
        session.execute(sa.insert(ModelVersion), rows)
        ids = dict(session.execute(sa.select(ModelVersion.version, ModelVersion.id)
                                   .where(ModelVersion.model_id == model.id)).all())
        files = []
        for number, version_id in ids.items():
            for role, filename, size in (("meta", "model.ckpt.meta", 21_500_000),
                                         ("graph", "inception_v3_inf_graph.pb", 91_000_000),
                                         ("index", "model.ckpt.index", 17_000),
                                         ("data", "model.ckpt.data-00000-of-00001", 95_300_000),
                                         ("labels", "labels.txt", 10_500)):
                files.append(dict(version_id=version_id, role=role, filename=filename,
                                  sha256=sha(f"{name}-{role}-{number}"), size=size))
        session.execute(sa.insert(VersionFile), files)
        newest_ready = max(n for n in ids if n % 50)
        session.add_all([Alias(model_id=model.id, name="production", version_id=ids[max(1, count // 2)]),
                         Alias(model_id=model.id, name="staging", version_id=ids[newest_ready])])


@dataclass
class Measure:
    label: str
    url: str
    seconds: list[float] = field(default_factory=list)
    statements: set[int] = field(default_factory=set)
    statement_seconds: dict[int, list[float]] = field(default_factory=dict)  # by position in the request
    statement_text: dict[int, str] = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.seconds)

    @property
    def p90_ms(self) -> float:
        return 1000 * statistics.quantiles(self.seconds, n=10)[-1]


class Target:
    """One registry's app, with its server time and SQL statements counted per request.

    Server time is the WSGI call, from the environ going in to the last byte of
    the body coming out (the body is read inside the timing, in case a page
    streams); the test client's own work around it is left out."""

    def __init__(self, app) -> None:
        self.app = app
        self.client = app.test_client()
        self.statements = 0
        self.statement_times: list[tuple[str, float]] = []  # this request's statements and their times
        self.server_seconds = 0.0
        engine = app.extensions["registry"].db.engine
        sa.event.listen(engine, "before_cursor_execute", self._count)
        sa.event.listen(engine, "after_cursor_execute", self._timed)
        inner = app.wsgi_app

        def timed(environ, start_response):
            started = time.perf_counter()
            iterable = inner(environ, start_response)
            try:
                body = list(iterable)
            finally:
                if hasattr(iterable, "close"):
                    iterable.close()
            self.server_seconds = time.perf_counter() - started
            return body

        app.wsgi_app = timed

    def _count(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.statements += 1
        context._bench_started = time.perf_counter()

    def _timed(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.statement_times.append((statement, time.perf_counter() - context._bench_started))

    def get(self, url: str) -> tuple[float, int, str]:
        self.statements = 0
        self.statement_times = []
        response = self.client.get(url, headers={"Accept": "text/html"})
        body = response.get_data(as_text=True)
        if response.status_code != 200:
            raise SystemExit(f"GET {url} answered {response.status_code}: {body[:300]}")
        return self.server_seconds, self.statements, body


def next_url(body: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">', body)
    return html.unescape(found.group(1)) if found else None


def listed_versions(body: str, name: str) -> list[int]:
    return [int(n) for n in re.findall(rf'href="/models/{name}/versions/(\d+)">v', body.split("<table", 1)[1]
                                         .split("</table>", 1)[0])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=10_000, help="versions of the large model")
    parser.add_argument("--repeat", type=int, default=300, help="timed requests per page")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="model-page-bench-") as tmp:
        targets, fill_seconds = {}, {}
        for name, count in (("small", 10), ("large", args.versions)):
            home = Path(tmp) / name
            app = create_app(settings_for(home))
            started = time.perf_counter()
            fill(app, name, count)
            fill_seconds[name] = time.perf_counter() - started
            targets[name] = Target(app)
        print(f"filled: small with 10 versions ({fill_seconds['small']:.2f} s), "
              f"large with {args.versions:,} versions ({fill_seconds['large']:.2f} s)")

        # The pages, as a user reaches them: the second page by the first page's "Next page" link.
        _, _, first_large = targets["large"].get("/models/large")
        second_url = next_url(first_large)
        assert second_url and listed_versions(first_large, "large") == list(range(args.versions, args.versions - 25, -1))
        _, _, second_large = targets["large"].get(second_url)
        assert listed_versions(second_large, "large") == list(range(args.versions - 25, args.versions - 50, -1))
        # The last page, by the token its previous page's link would carry ("versions below 26").
        last_url = f"/models/large?page_token={base64.urlsafe_b64encode(b'26').decode().rstrip('=')}"
        _, _, last_large = targets["large"].get(last_url)
        assert listed_versions(last_large, "large") == list(range(25, 0, -1)) and next_url(last_large) is None
        _, _, small_first = targets["small"].get("/models/small")
        assert listed_versions(small_first, "small") == list(range(10, 0, -1)) and next_url(small_first) is None
        middle = args.versions // 2 + 1  # not an alias target, a plain ready version
        measures = [
            ("small", Measure("model page, first page", "/models/small")),
            ("large", Measure("model page, first page", "/models/large")),
            ("large", Measure("model page, second page (token)", second_url)),
            ("large", Measure("model page, last page (token)", last_url)),
            ("small", Measure("model page, 10 rows (page_size=10)", "/models/small?page_size=10")),
            ("large", Measure("model page, 10 rows (page_size=10)", "/models/large?page_size=10")),
            ("small", Measure("version page", "/models/small/versions/6")),
            ("large", Measure("version page", f"/models/large/versions/{middle}")),
            ("small", Measure("version page by alias", "/models/small/versions/production")),
            ("large", Measure("version page by alias", "/models/large/versions/production")),
            ("small", Measure("models list", "/")),
            ("large", Measure("models list", "/")),
        ]
        for _ in range(20):  # warm up: templates compiled, statements cached, pages in the OS cache
            for name, m in measures:
                targets[name].get(m.url)
        started = time.perf_counter()
        for _ in range(args.repeat):  # interleaved, so that drift hits every page alike
            for name, m in measures:
                seconds, statements, _ = targets[name].get(m.url)
                m.seconds.append(seconds)
                m.statements.add(statements)
                for position, (statement, took) in enumerate(targets[name].statement_times):
                    m.statement_seconds.setdefault(position, []).append(took)
                    m.statement_text[position] = statement
        timed_seconds = time.perf_counter() - started
        for target in targets.values():
            target.app.extensions["registry"].db.dispose()

    by = {(name, m.label): m for name, m in measures}
    failures = []
    rows = []
    small_first = by["small", "model page, first page"]
    for label in ("model page, first page", "model page, second page (token)", "model page, last page (token)",
                  "model page, 10 rows (page_size=10)", "version page", "version page by alias", "models list"):
        small, large = by.get(("small", label)), by[("large", label)]
        base = small or small_first
        ratio = large.median_ms / base.median_ms
        target, ok = "", True
        if label.startswith("model page, 10 rows"):
            target = "(for information: same rows, growth with N alone)"
        elif label.startswith("model page"):
            target = f"ratio ≤ {RATIO_TARGET}" + ("" if small else " (vs 10's first page)")
            ok = ratio <= RATIO_TARGET
        elif label.startswith("version page"):
            target = f"≤ {VERSION_PAGE_TARGET_MS:.0f} ms"
            ok = max(large.median_ms, small.median_ms) <= VERSION_PAGE_TARGET_MS
        else:
            target = "(for information)"
        statements_small = sorted(small.statements) if small else None
        statements_large = sorted(large.statements)
        if small and statements_small != statements_large:
            ok = False
            target += "; SQL count grows"
        if len(statements_large) != 1:
            ok = False
            target += "; SQL count varies"
        rows.append((label, f"{small.median_ms:.2f}" if small else "–", f"{large.median_ms:.2f}",
                     f"{large.p90_ms:.2f}", f"{ratio:.2f}",
                     f"{'/'.join(map(str, statements_small)) if small else '–'} / {'/'.join(map(str, statements_large))}",
                     target, "ok" if ok else "MISSED"))
        if not ok:
            failures.append(label)

    headers = ("page", "10 versions ms", f"{args.versions:,} ms", "p90 ms", "ratio", "SQL/request (10 / N)",
               "target", "")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    print(f"\nmedian server time over {args.repeat} interleaved requests each ({timed_seconds:.1f} s), "
          "Flask test client, SQLite")
    for row in [headers, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) if i in (0, 6, 7) else str(c).rjust(w) for i, (c, w) in
                        enumerate(zip(row, widths))).rstrip())
    # Where the model page's time goes in the database: each statement's median, 10 against N versions.
    small, large = by["small", "model page, first page"], by["large", "model page, first page"]
    print(f"\nSQL statements of the model page's first page (median ms), 10 / {args.versions:,} versions:")
    for position in sorted(large.statement_seconds):
        text = re.sub(r"\s+", " ", large.statement_text[position])
        text = re.sub(r"SELECT (.{40}).*? FROM", r"SELECT \1… FROM", text)
        text = re.sub(r"\((\?, ){3,}\?\)", "(?, …)", text)
        before = statistics.median(small.statement_seconds.get(position, [float("nan")])) * 1000
        after = statistics.median(large.statement_seconds[position]) * 1000
        grows = "  <- grows with the number of versions" if after > 3 * before and after - before > 0.1 else ""
        print(f"  {position + 1}. {before:6.3f} / {after:6.3f}  {text[:150]}{grows}")
    if failures:
        print(f"\nMISSED: {', '.join(failures)}")
        return 1
    print("\nall targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
