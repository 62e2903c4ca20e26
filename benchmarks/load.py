"""A bounded load test: N clients for T seconds against a real `registry serve`
on 127.0.0.1, mixing push (small frozen graphs), pull, label and list.

Reports p50/p99 per operation and checks that nothing went wrong: no errors
other than configured 429s (rate limits), and no version lost or duplicated
(every accepted push is in the listing exactly once, under the number it was
answered with, and the numbers have no repeats).  Exits 1 otherwise.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/load.py [--clients 32] [--seconds 60]
        [--rate-limit-push 600/minute] [--rate-limit-label off]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import requests  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from registry_server import REGISTRY_BIN, RegistryServer  # noqa: E402

MIX = {"push": 0.15, "pull": 0.3, "label": 0.3, "list": 0.25}
MODEL = "load"


def build_inputs() -> tuple[bytes, bytes]:
    """A tiny frozen image classifier (8x8x3 -> 5 classes) and one PNG, made with TensorFlow."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(7)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        logits = tf.matmul(tf.reshape(x, [-1, 192]), tf.constant(rng.normal(size=(192, 5)).astype(np.float32)))
        tf.nn.softmax(logits, name="output")
    png = tf.io.encode_png(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)).numpy()
    return graph.as_graph_def().SerializeToString(), png


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate-limit-push", default="off", help="REGISTRY_RATE_LIMIT_PUSH for the server")
    parser.add_argument("--rate-limit-label", default="off", help="REGISTRY_RATE_LIMIT_LABEL for the server")
    args = parser.parse_args()
    graph, png = build_inputs()
    with tempfile.TemporaryDirectory(prefix="registry-load-") as directory:
        return run(args, graph, png, Path(directory))


def run(args: argparse.Namespace, graph: bytes, png: bytes, tmp: Path) -> int:
    env = {"REGISTRY_RATE_LIMIT_PUSH": args.rate_limit_push, "REGISTRY_RATE_LIMIT_LABEL": args.rate_limit_label,
           "REGISTRY_GC_INTERVAL_SECONDS": "0"}
    with RegistryServer(tmp / "home", workers=0, log_path=tmp / "server.log", env=env) as server:
        url = server.url
        seed = requests.post(f"{url}/api/v1/models/{MODEL}/versions", timeout=60, data={"output_nodes": "output"},
                             files={"frozen": ("g.pb", graph), "labels": ("labels.txt", b"a\nb\nc\nd\ne\n")})
        seed.raise_for_status()
        subprocess.run([str(REGISTRY_BIN), "worker", "--once"], check=True, capture_output=True,
                       env=dict(os.environ, REGISTRY_HOME=str(tmp / "home")))
        ready = requests.get(f"{url}/api/v1/models/{MODEL}/versions/1", timeout=30).json()
        assert ready["status"] == "ready", ready
        frozen_sha = ready["frozen"]["sha256"]
        warm = requests.post(f"{url}/v1/models/{MODEL}/versions/1:label", data=png, timeout=120,
                             headers={"Content-Type": "image/png"})  # loads TensorFlow in the server
        warm.raise_for_status()

        latencies: dict[str, list[float]] = defaultdict(list)
        outcomes: Counter = Counter()
        errors: list[str] = []
        pushed: dict[str, int] = {}  # description -> number the server answered
        lock = threading.Lock()
        deadline = time.monotonic() + args.seconds

        def client(index: int) -> None:
            session = requests.Session()
            rng = random.Random(index)
            sequence = 0
            while time.monotonic() < deadline:
                op = rng.choices(list(MIX), weights=list(MIX.values()))[0]
                started = time.perf_counter()
                try:
                    if op == "push":
                        sequence += 1
                        tag = f"client {index} push {sequence}"
                        response = session.post(f"{url}/api/v1/models/{MODEL}/versions", timeout=60,
                                                data={"description": tag, "output_nodes": "output"},
                                                files={"frozen": ("g.pb", graph)})
                        if response.status_code == 202:
                            with lock:
                                pushed[tag] = response.json()["version"]
                    elif op == "pull":
                        response = session.get(f"{url}/api/v1/models/{MODEL}/versions/1/frozen.pb", timeout=60)
                        if response.status_code == 200 and hashlib.sha256(response.content).hexdigest() != frozen_sha:
                            raise AssertionError("pulled bytes do not match the version's sha256")
                    elif op == "label":
                        response = session.post(f"{url}/v1/models/{MODEL}/versions/1:label", data=png, timeout=60,
                                                headers={"Content-Type": "image/png"})
                    else:
                        response = session.get(f"{url}/api/v1/models/{MODEL}/versions?page_size=50", timeout=60)
                    status = response.status_code
                except Exception as exc:  # a dropped connection, a timeout, a wrong checksum
                    status = f"exception {type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - started
                with lock:
                    outcomes[(op, status)] += 1
                    if status in (200, 202):
                        latencies[op].append(elapsed)
                    elif status != 429:
                        errors.append(f"{op}: {status}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started

        # Every accepted push is listed once, under its number; numbers never repeat.
        listed: list[dict] = []
        token = None
        while True:
            page = requests.get(f"{url}/api/v1/models/{MODEL}/versions", timeout=60,
                                params={"page_size": 1000, **({"page_token": token} if token else {})}).json()
            listed += page["versions"]
            token = page["next_page_token"]
            if not token:
                break
    numbers = [v["version"] for v in listed]
    by_tag = Counter(v["description"] for v in listed if v["description"])
    duplicated_numbers = len(numbers) - len(set(numbers))
    lost = [tag for tag in pushed if by_tag[tag] == 0]
    duplicated = [tag for tag, count in by_tag.items() if count > 1]
    misnumbered = [tag for v in listed for tag in [v["description"]] if tag in pushed and pushed[tag] != v["version"]]

    total = sum(outcomes.values())
    print(f"{args.clients} clients, {wall:.1f} s, {total} requests ({total / wall:.1f}/s); "
          f"rate limits push={args.rate_limit_push} label={args.rate_limit_label}")
    print(f"{'operation':10s} {'ok':>6s} {'429':>6s} {'errors':>6s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for op in MIX:
        ok = sum(c for (o, s), c in outcomes.items() if o == op and s in (200, 202))
        limited = outcomes[(op, 429)]
        failed = sum(c for (o, s), c in outcomes.items() if o == op and s not in (200, 202, 429))
        values = latencies[op]
        print(f"{op:10s} {ok:6d} {limited:6d} {failed:6d} {1000 * percentile(values, 0.5):8.1f} "
              f"{1000 * percentile(values, 0.99):8.1f}")
    print(f"versions: {len(listed)} listed = 1 seeded + {len(pushed)} pushed; duplicated numbers: "
          f"{duplicated_numbers}; lost: {len(lost)}; duplicated: {len(duplicated)}; misnumbered: {len(misnumbered)}")
    for error in Counter(errors).most_common(10):
        print(f"ERROR x{error[1]}: {error[0]}")
    ok = (not errors and not lost and not duplicated and not misnumbered and duplicated_numbers == 0
          and len(listed) == 1 + len(pushed))
    print("target met: no errors, no lost or duplicated versions" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
