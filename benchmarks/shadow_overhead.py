"""What shadow traffic costs the primary: ``:predict`` latency through an alias, with and without a
shadow version, at 16 concurrent clients.

Starts a real ``registry serve`` on a fresh ``REGISTRY_HOME``, pushes a tiny frozen classifier twice
(v1 answers through alias ``production``; v2 is the shadow), warms both up, then alternates rounds of
C concurrent keep-alive clients calling ``/v1/models/NAME/labels/production:predict`` for T seconds,
without and with the shadow set (ABBA groups, so a drift in the machine's speed cancels within a
group).  Reports each mode's p50 and p95 latency and requests/s, and the shadow's own figures (inputs
compared, dropped).

Target (issue 16): shadowing adds at most 5% to the primary's p50 latency.  Exits 1 when it is missed.

    .venv/bin/python benchmarks/shadow_overhead.py [--clients 16] [--seconds 3] [--groups 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import requests  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from load import build_inputs, percentile  # noqa: E402
from registry_server import RegistryServer  # noqa: E402

from registry.client import RegistryClient  # noqa: E402

MODEL = "shadow-bench"
TARGET_RATIO = 1.05
WARM_UP_REQUESTS = 100
ROUTE_TTL_S = 1.1  # the label service sees a shadow set or cleared within a second


def predict_round(url: str, body: dict, clients: int, seconds: float) -> tuple[list[float], int]:
    """``clients`` keep-alive clients calling :predict through the alias for ``seconds``: (latencies, errors)."""
    stop = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(i: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                started = time.perf_counter()
                response = session.post(f"{url}/v1/models/{MODEL}/labels/production:predict", json=body, timeout=30)
                latencies[i].append(time.perf_counter() - started)
                errors[i] += response.status_code != 200

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [t for ts in latencies for t in ts], sum(errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent :predict clients")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    parser.add_argument("--groups", type=int, default=8,
                        help="ABBA groups of four rounds (the machine's drift between rounds exceeds the shadow's cost: "
                             "fewer groups give a noisier median)")
    args = parser.parse_args()
    graph, _ = build_inputs()  # load.py's tiny frozen classifier
    with tempfile.TemporaryDirectory(prefix="registry-shadow-bench-") as directory:
        tmp = Path(directory)
        (tmp / "frozen.pb").write_bytes(graph)
        with RegistryServer(tmp / "home", workers=1, log_path=tmp / "server.log",
                            env={"REGISTRY_GC_INTERVAL_SECONDS": "0", "REGISTRY_SHADOW_FLUSH_SECONDS": "1"}) as server:
            return run(args, server.url, tmp / "frozen.pb")


def run(args: argparse.Namespace, url: str, frozen: Path) -> int:
    client = RegistryClient(url)
    for number in (1, 2):
        client.push(MODEL, [("frozen", frozen)], {})
        record = client.wait(MODEL, number, timeout=300)
        if record["status"] != "ready":
            print(f"the model did not convert: {record['status_message']}")
            return 1
    client.set_alias(MODEL, "production", 1)
    body = {"instances": [[[[0.5, 0.25, 0.125]] * 8] * 8]}
    client.set_shadow(MODEL, "production", 2)
    time.sleep(ROUTE_TTL_S)
    with requests.Session() as session:  # both graphs loaded, the shadow's thread started
        for _ in range(WARM_UP_REQUESTS):
            session.post(f"{url}/v1/models/{MODEL}/labels/production:predict", json=body,
                         timeout=30).raise_for_status()

    latencies: dict[bool, list[float]] = {False: [], True: []}
    ratios: list[float] = []
    errors = 0
    for group in range(1, args.groups + 1):
        p50s: dict[bool, list[float]] = {False: [], True: []}
        for shadowed in (False, True, True, False):
            if shadowed:
                client.set_shadow(MODEL, "production", 2)
            else:
                try:
                    client.delete_shadow(MODEL, "production")
                except Exception:  # not set yet
                    pass
            time.sleep(ROUTE_TTL_S)
            times, failed = predict_round(url, body, args.clients, args.seconds)
            errors += failed
            latencies[shadowed] += times
            p50s[shadowed].append(statistics.median(times))
        ratios.append(statistics.mean(p50s[True]) / statistics.mean(p50s[False]))
        print(f"group {group}: p50 without {1000 * statistics.mean(p50s[False]):6.2f} ms, with shadow "
              f"{1000 * statistics.mean(p50s[True]):6.2f} ms, ratio {ratios[-1]:.3f}")
    time.sleep(2)  # the last windows are flushed
    figures = client.get_shadow(MODEL, "production")["totals"]
    ratio = statistics.median(ratios)
    print()
    print(f":predict through an alias, {args.clients} clients, {args.groups} ABBA groups of {args.seconds:g} s "
          "rounds:")
    for shadowed in (False, True):
        times = sorted(latencies[shadowed])
        print(f"  {'with shadow   ' if shadowed else 'without shadow'}: p50 {1000 * percentile(times, 0.50):6.2f} ms, "
              f"p95 {1000 * percentile(times, 0.95):6.2f} ms, {len(times) / (2 * args.groups * args.seconds):7.1f} req/s")
    print(f"  p50 ratio (median over groups) {ratio:.3f} -> shadowing adds {100 * (ratio - 1):+.1f}% to the "
          f"primary's p50 (target <= {100 * (TARGET_RATIO - 1):.0f}%)")
    print(f"  shadow: {figures['requests']} requests, {figures['compared']} compared, {figures['dropped']} dropped, "
          f"{figures['errors']} errors, agreement {figures['agreement']}")
    if errors:
        print(f"FAIL: {errors} :predict errors")
        return 1
    if ratio > TARGET_RATIO:
        print(f"FAIL: ratio {ratio:.3f} > {TARGET_RATIO}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
