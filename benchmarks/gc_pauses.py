"""Full garbage collections in the label service's process, with and without ``registry.heap``'s freeze.

Once TensorFlow's Python is imported, the process holds some 420,000 objects the garbage collector
tracks.  A full (generation 2) collection walks all of them with the GIL held, and every request in
flight waits for it.  The registry's own processes freeze them (``registry.heap``).  This measures
what that changes, side by side in one run: each side is a fresh process on the same registry home
that answers ``--requests`` REST ``:predict`` calls on TF Serving's ``half_plus_two`` (pushed as a
SavedModel, converted by a real ``registry serve`` first), and records every full collection
(``gc.callbacks``: how many ran and how long each held the GIL) and each request's time.  One side
runs as the registry's servers run (``heap.own_process()`` first); the other leaves the freeze out,
as a program embedding the app does.  The sides alternate in order (ABAB, then BABA), ``--pairs``
times.  Target: no full collection as the servers run holds the GIL over 50 ms (exits 1 otherwise).

The calls go through Flask's test client in the same process.  There is no HTTP, so what is measured
is the process's own work, and the collector also counts the client's allocations: full collections
come somewhat more often here than behind a real server.  The inference worker (a process of its
own) is frozen the same way and is not measured here.

    .venv/bin/python benchmarks/gc_pauses.py [--requests 10000] [--pairs 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SMALL = "half_plus_two"
SIDES = ("as shipped", "freeze left out")
TARGET_MS = 50.0  # a full collection as the servers run holds the GIL no longer than this


def side(home: Path, name: str, requests: int) -> dict:
    """(In a fresh process.)  ``requests`` :predict calls; the full collections and the calls' times."""
    from registry import heap
    from registry.app import create_app
    from registry.config import Settings

    if name == SIDES[0]:
        heap.own_process()  # as registry serve, label-serve and gunicorn's app do before they make the app
    app = create_app(Settings.from_env(home=home, embedded_workers=0, demo=False, gc_interval_seconds=0))
    client = app.test_client()
    body = json.dumps({"instances": [[2.0]]})

    def call() -> None:
        answer = client.post(f"/v1/models/{SMALL}:predict", data=body, content_type="application/json")
        if answer.status_code != 200 or answer.get_json() != {"predictions": [[3.0]]}:
            raise SystemExit(f":predict answered {answer.status_code}: {answer.get_data(as_text=True)[:300]}")

    for _ in range(200):  # load the graph, warm the caches
        call()
    pauses: list[float] = []
    started = [0.0]

    def watch(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses.append((time.perf_counter() - started[0]) * 1000)

    gc.callbacks.append(watch)
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    gc.callbacks.remove(watch)
    app.extensions["registry"].label_service().close()
    times.sort()
    return {"frozen": gc.get_freeze_count(), "full": len(pauses), "pause_max": max(pauses, default=0.0),
            "pause_total": sum(pauses), "p50": statistics.median(times),
            "p999": times[min(len(times) - 1, int(0.999 * len(times)))], "max": times[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10000, help=":predict calls per side and run")
    parser.add_argument("--pairs", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side, in this process
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.home, args.side, args.requests)))
        return 0

    from registry_server import RegistryServer
    from tf_serving_api import push

    from registry.client import RegistryClient
    from registry.converter.saved_model import write_archive
    from tests.tfmodels import build_half_plus_two

    with tempfile.TemporaryDirectory(prefix="registry-gc-") as directory:
        tmp = Path(directory)
        write_archive(build_half_plus_two(tmp / SMALL), tmp / f"{SMALL}.tar.gz")
        with RegistryServer(tmp / "home", workers=1, log_path=tmp / "server.log") as server:
            push(RegistryClient(server.url), SMALL, [("saved_model", tmp / f"{SMALL}.tar.gz")], {})
        print(f"REST :predict on {SMALL} through Flask's test client, {args.requests} calls per run, each run a "
              "fresh process; full (gen 2) collections: how many, the longest and all of them together")
        longest = 0.0
        for pair in range(args.pairs):
            for name in SIDES if pair % 2 == 0 else SIDES[::-1]:
                done = subprocess.run([sys.executable, __file__, "--side", name, "--home", str(tmp / "home"),
                                       "--requests", str(args.requests)], capture_output=True, text=True,
                                      env=dict(os.environ, REGISTRY_HOME=str(tmp / "home")))
                if done.returncode != 0:
                    raise SystemExit(f"{name}: {done.stderr[-2000:]}")
                r = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"  {name:16} {r['frozen']:7d} objects frozen; {r['full']:3d} full collections, longest "
                      f"{r['pause_max']:6.1f} ms, {r['pause_total']:7.1f} ms in all; calls p50 {r['p50']:.3f} "
                      f"p99.9 {r['p999']:.3f} max {r['max']:.1f} ms", flush=True)
                if name == SIDES[0]:
                    longest = max(longest, r["pause_max"])
    met = longest <= TARGET_MS
    print(f"the longest full collection as the servers run: {longest:.1f} ms (target <= {TARGET_MS:g} ms: "
          f"{'met' if met else 'MISSED'})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
