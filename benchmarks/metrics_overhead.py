"""What a Prometheus scrape costs the label service: ``:predict`` throughput with and without a
scraper on ``/monitoring/prometheus/metrics``.

Starts a real ``registry serve`` on a fresh ``REGISTRY_HOME``, pushes a tiny frozen classifier
(8x8x3 -> 5 classes; a small model, so a request is mostly the server's own work and a scrape's
share shows), waits until it is ready, warms it up, then in one run alternates rounds of C
concurrent ``:predict`` clients for T seconds each, with and without a scraper that GETs the
metrics path every second (as Prometheus does, more often than its 15 s default).  Rounds come
in groups of four, ABBA (unscraped, scraped, scraped, unscraped), so a drift in the machine's
speed cancels within a group; the ratio is the median over the groups of (scraped requests /
unscraped requests), so a burst of other work on a shared machine skews one group, not the
result.  Also reports each mode's requests/s, what one scrape takes on the idle server (its
cost: it runs on a server thread), the scrape's size, and what the always-on request metrics
cost per request.

Target: the scrape costs at most 2% of ``:predict`` throughput (ratio >= 0.98).  Exits 1 when
it is missed.

    .venv/bin/python benchmarks/metrics_overhead.py [--clients 4] [--seconds 3] [--groups 12]
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

from load import build_inputs  # noqa: E402
from registry_server import RegistryServer  # noqa: E402

from registry.client import RegistryClient  # noqa: E402

MODEL = "metrics-bench"
PATH = "/monitoring/prometheus/metrics"
TARGET_RATIO = 0.98
SCRAPE_EVERY_S = 1.0
WARM_UP_REQUESTS = 200


def predict_round(url: str, body: dict, clients: int, seconds: float) -> tuple[int, int]:
    """``clients`` keep-alive clients calling :predict for ``seconds``: (answers, errors)."""
    stop = time.monotonic() + seconds
    done, errors = [0] * clients, [0] * clients

    def client(i: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                response = session.post(f"{url}/v1/models/{MODEL}/versions/1:predict", json=body, timeout=30)
                if response.status_code == 200:
                    done[i] += 1
                else:
                    errors[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done), sum(errors)


class Scraper:
    """GETs the metrics path every ``SCRAPE_EVERY_S`` while running; keeps each scrape's time and size."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seconds: list[float] = []
        self.sizes: list[int] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.perf_counter()
                response = session.get(f"{self.url}{PATH}", timeout=30)
                self.seconds.append(time.perf_counter() - started)
                if response.status_code != 200 or b"registry_serving_requests_total" not in response.content:
                    self.failures += 1
                self.sizes.append(len(response.content))
                self._stop.wait(SCRAPE_EVERY_S)


def idle_scrape_ms(url: str, samples: int = 50) -> float:
    """Median time of one scrape when nothing else runs: what a scrape costs the server."""
    times = []
    with requests.Session() as session:
        for _ in range(samples):
            started = time.perf_counter()
            session.get(f"{url}{PATH}", timeout=30).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def instrumentation_cost_us(calls: int = 100_000) -> float:
    """Microseconds the always-on request metrics add to one request (count + histogram + labels)."""
    from registry import metrics

    started = time.perf_counter()
    for _ in range(calls):
        with metrics.observe_request("rest", "predict"):
            metrics.served("bench-model", 1)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent :predict clients")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    parser.add_argument("--groups", type=int, default=12, help="ABBA groups of four rounds")
    args = parser.parse_args()
    graph, _ = build_inputs()  # load.py's tiny frozen classifier
    with tempfile.TemporaryDirectory(prefix="registry-metrics-bench-") as directory:
        tmp = Path(directory)
        (tmp / "frozen.pb").write_bytes(graph)
        with RegistryServer(tmp / "home", workers=1, log_path=tmp / "server.log",
                            env={"REGISTRY_GC_INTERVAL_SECONDS": "0"}) as server:
            return run(args, server.url, tmp / "frozen.pb")


def run(args: argparse.Namespace, url: str, frozen: Path) -> int:
    client = RegistryClient(url)
    client.push(MODEL, [("frozen", frozen)], {})
    record = client.wait(MODEL, 1, timeout=300)
    if record["status"] != "ready":
        print(f"the model did not convert: {record['status_message']}")
        return 1
    body = {"instances": [[[[0.5, 0.25, 0.125]] * 8] * 8]}
    with requests.Session() as session:
        for _ in range(WARM_UP_REQUESTS):
            session.post(f"{url}/v1/models/{MODEL}/versions/1:predict", json=body, timeout=30).raise_for_status()

    idle_ms = idle_scrape_ms(url)
    rates: dict[bool, list[float]] = {False: [], True: []}
    ratios: list[float] = []
    scrapes: list[float] = []
    sizes: list[int] = []
    errors = failures = 0
    for group in range(1, args.groups + 1):
        done_in: dict[bool, int] = {False: 0, True: 0}
        for scraped in (False, True, True, False):  # ABBA: a drift in the machine's speed cancels
            if scraped:
                with Scraper(url) as scraper:
                    done, failed = predict_round(url, body, args.clients, args.seconds)
                scrapes += scraper.seconds
                sizes += scraper.sizes
                failures += scraper.failures
            else:
                done, failed = predict_round(url, body, args.clients, args.seconds)
            errors += failed
            done_in[scraped] += done
            rates[scraped].append(done / args.seconds)
        ratios.append(done_in[True] / done_in[False])
        print(f"group {group:2d}: unscraped {done_in[False] / 2 / args.seconds:7.1f} :predict/s, "
              f"scraped {done_in[True] / 2 / args.seconds:7.1f} :predict/s, ratio {ratios[-1]:.4f}")

    plain, watched = statistics.mean(rates[False]), statistics.mean(rates[True])
    ratio = statistics.median(ratios)
    scrape_ms = sorted(s * 1000 for s in scrapes)
    print()
    print(f":predict, {args.clients} clients, {args.groups} ABBA groups of {args.seconds:g} s rounds:")
    print(f"  without scraper: {plain:8.1f} req/s (mean of {len(rates[False])} rounds)")
    print(f"  with scraper   : {watched:8.1f} req/s (mean of {len(rates[True])} rounds; ratio of the means "
          f"{watched / plain:.4f})")
    print(f"  ratio (median over groups) {ratio:.4f} -> the scrape costs {100 * (1 - ratio):+.2f}% of "
          f"throughput (target <= {100 * (1 - TARGET_RATIO):.0f}%); groups' ratios "
          f"{min(ratios):.3f}..{max(ratios):.3f}")
    print(f"  one scrape on the idle server: p50 {idle_ms:.2f} ms -> {100 * idle_ms / 1000 / SCRAPE_EVERY_S:.2f}% "
          f"of one core at one scrape per {SCRAPE_EVERY_S:g} s")
    print(f"  scrapes under load: {len(scrapes)}, p50 {statistics.median(scrape_ms):.1f} ms, max {scrape_ms[-1]:.1f} "
          f"ms, {statistics.median(sizes) / 1024:.1f} KiB")
    print(f"  request metrics (always on): {instrumentation_cost_us():.1f} us per request, measured in-process")
    if errors or failures:
        print(f"FAIL: {errors} :predict errors, {failures} failed scrapes")
        return 1
    if ratio < TARGET_RATIO:
        print(f"FAIL: ratio {ratio:.4f} < {TARGET_RATIO}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
