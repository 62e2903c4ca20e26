"""Cold starts and memory per loaded version of the label service.

Uses the three Inception-v3-shaped versions of ``label_service.py`` (same
cache under ``benchmarks/.work/label_service``, built once by its code), starts
a real ``registry serve`` on a fresh ``REGISTRY_HOME``, pushes them, waits until
they are ready and pulls their frozen graphs (~112 MB each).  Then, in one run:

* cold: the first ``:label`` of each version over HTTP, each followed by a
  *fresh process* that reads, parses and imports the same ``.pb``
  (``tf.import_graph_def``), opens a default ``Session`` and runs it once on
  the same preprocessed image (timed from reading the file to the result;
  importing TensorFlow is not counted; what that process holds after the run
  is shown too);
* memory: the resident memory (``VmRSS`` from ``/proc``) of the server process
  plus its inference workers before any version is loaded and with all three
  loaded, against ``500 MB + 3x`` the loaded frozen graphs' bytes (``PSS``,
  which splits the TensorFlow library pages the processes share, is shown too);
* accounting: the graph cache's bytes (``registry_graph_cache_bytes`` from the
  metrics scrape) against the workers' measured RSS growth;
* warm runs, once the server has stopped: the first version loaded as the
  workers load it (:mod:`registry.serving.weights`, weights as variables) and
  as a plain ``import_graph_def`` (weights as constants), in this process,
  ``Session.run`` on the same tensor, interleaved (for information: it shows
  that holding the weights once does not slow runs down).

Targets: every cold ``:label`` <= 0.9x its fresh process; server + workers RSS
<= 500 MB + 3x the frozen bytes; the cache's bytes within 0.75x-1.33x of the
workers' RSS growth.  Exits 1 when a target is missed.

Run from the repository root: ``.venv/bin/python benchmarks/label_memory.py``
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import requests  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import label_service as bench  # noqa: E402  (models, labels, image, push/pull, /proc helpers)
from registry.client import RegistryClient  # noqa: E402

TARGET_COLD_RATIO = 0.9
TARGET_FIXED_MB = 500
TARGET_PER_FROZEN = 3.0
ACCOUNTING_RANGE = (0.75, 1.33)
MB = 1024 * 1024
SETTLE_S = 1.0  # after the last load, before reading /proc
WARM_SAMPLES = 40  # runs of each, interleaved

# The fresh process of the cold comparison: argv = frozen .pb, preprocessed batch (.npy); prints seconds.
PLAIN_COLD = f"""
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
batch = np.load(sys.argv[2])
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
before = rss()
started = time.perf_counter()
graph_def = graph_pb2.GraphDef()
with open(sys.argv[1], "rb") as f:
    graph_def.ParseFromString(f.read())
graph = tf.Graph()
with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name="")
session = tf.compat.v1.Session(graph=graph)
session.run("{bench.OUTPUT_TENSOR}", {{"{bench.INPUT_TENSOR}": batch}})
print(time.perf_counter() - started, rss() - before)
"""


def plain_cold(frozen: Path, batch: Path) -> tuple[float, int]:
    """Parse + import + Session + first run of ``frozen`` in a fresh process (TensorFlow's import not
    timed): the seconds, and the RSS that process gained by them."""
    out = subprocess.run([sys.executable, "-c", PLAIN_COLD, str(frozen), str(batch)], check=True,
                         capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    seconds, grew = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(grew)


def warm_runs(frozen: Path, batch: np.ndarray) -> tuple[float, float]:
    """p50 of ``Session.run`` with the weights as variables (the workers' load) and as constants (plain)."""
    from registry.serving import weights  # TensorFlow: imported above by label_service

    ours = weights.load(bytearray(frozen.read_bytes()))
    plain = bench.PlainGraph(frozen)
    runs = [ours.session.make_callable(bench.OUTPUT_TENSOR, [bench.INPUT_TENSOR]),
            plain.session.make_callable(plain.output, [plain.input])]
    seconds: list[list[float]] = [[], []]
    for i in range(WARM_SAMPLES + 3):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            started = time.perf_counter()
            runs[which](batch)
            if i >= 3:
                seconds[which].append(time.perf_counter() - started)
    return float(np.median(seconds[0])), float(np.median(seconds[1]))


def proc_kb(pid: int, name: str, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/<name>`` (status: VmRSS, RssAnon ...; smaps_rollup: Pss)."""
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory(server_pid: int) -> dict[str, dict[str, float]]:
    """RSS, anonymous RSS and PSS in MB of the server and each of its inference workers."""
    pids = {"server": server_pid, **{f"worker {p}": p for p in bench.inference_workers(server_pid)}}
    return {name: {"rss": proc_kb(pid, "status", "VmRSS") / 1024, "anon": proc_kb(pid, "status", "RssAnon") / 1024,
                   "pss": proc_kb(pid, "smaps_rollup", "Pss") / 1024} for name, pid in pids.items()}


def total(snapshot: dict[str, dict[str, float]], key: str, workers_only: bool = False) -> float:
    return sum(v[key] for name, v in snapshot.items() if not workers_only or name != "server")


def started_workers(url: str, server_pid: int) -> dict[str, dict[str, float]]:
    """Start the label service without loading a version (a :label of a model that does not exist),
    wait until its workers' memory is steady, and return the memory then."""
    requests.post(f"{url}/v1/models/no-such-model:label", data=b"", timeout=60)
    deadline = time.monotonic() + 120
    last = None
    while time.monotonic() < deadline:
        time.sleep(SETTLE_S)
        now = memory(server_pid)
        if last is not None and len(now) > 1 and now.keys() == last.keys() and abs(
                total(now, "rss") - total(last, "rss")) < 2:
            return now
        last = now
    raise RuntimeError("the label service's inference workers did not start within 120 s")


def cache_bytes(url: str) -> float:
    text = requests.get(f"{url}/monitoring/prometheus/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith("registry_graph_cache_bytes"):
            return float(line.split()[-1])
    return float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    started = time.perf_counter()
    bench.WORK.mkdir(parents=True, exist_ok=True)
    models = bench.ensure_models()
    labels, jpeg = bench.ensure_labels(), bench.ensure_jpeg().read_bytes()
    scratch = Path(tempfile.mkdtemp(prefix="memory-", dir=bench.WORK))
    try:
        with bench.Server(scratch / "home") as server:
            print(f"server on {server.url}; pushing {len(models)} versions ...", flush=True)
            registry = RegistryClient(server.url)
            paths = bench.push_and_pull(registry, models, labels, scratch)
            versions = [int(p.stem[1:]) for p in paths]
            p = registry.get_version(bench.MODEL_NAME, str(versions[0]))["preprocessing"]
            batch = bench.preprocess(jpeg, int(p["input_height"]), int(p["input_width"]),
                                     float(p["input_mean"]), float(p["input_std"]))
            batch_path = scratch / "batch.npy"

            np.save(batch_path, batch)
            frozen = [path.stat().st_size for path in paths]
            client = bench.LabelClient(server.url, jpeg)
            before = started_workers(server.url, server.pid)
            print("measuring cold :label against a fresh process ...", flush=True)
            cold = []
            for version, path in zip(versions, paths):
                server_s, answer = client.label(version)
                cold.append((version, server_s, answer["timing_ms"]["load"], *plain_cold(path, batch_path)))
            time.sleep(SETTLE_S)
            after = memory(server.pid)
            cached = cache_bytes(server.url)
        print("measuring warm runs, variables against constants ...", flush=True)
        warm = warm_runs(paths[0], batch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report(cold, before, after, cached, frozen, warm, time.perf_counter() - started)


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


def report(cold, before, after, cached: float, frozen: list[int], warm: tuple[float, float], runtime: float) -> int:
    cold_ratio = max(server_s / plain_s for _, server_s, _, plain_s, _ in cold)
    first = " (the service's first)"
    cold_ok = cold_ratio <= TARGET_COLD_RATIO
    print_rows("cold: first :label of each version over HTTP, then a fresh process on the same .pb", [
        *[(f"v{v}{first if i == 0 else ''}",
           f"HTTP {s * 1000:.0f} ms (load {load:.0f} ms) - fresh process parse+import+Session+first run "
           f"{plain * 1000:.0f} ms, then holding {grew / MB:.0f} MB more - ratio {s / plain:.2f}")
          for i, (v, s, load, plain, grew) in enumerate(cold)],
        ("worst ratio", f"{cold_ratio:.2f}  (target <= {TARGET_COLD_RATIO})  {verdict(cold_ok)}"),
    ])
    frozen_mb = sum(frozen) / MB
    limit = TARGET_FIXED_MB + TARGET_PER_FROZEN * frozen_mb
    rss = total(after, "rss")
    memory_ok = rss <= limit
    rows = []
    for name in after:
        was = before.get(name)
        start = f"{was['rss']:.0f} MB before any load, " if was else "(started since), "
        rows.append((name, f"{start}{after[name]['rss']:.0f} MB with {len(frozen)} loaded (anonymous "
                           f"{after[name]['anon']:.0f} MB, PSS {after[name]['pss']:.0f} MB)"))
    print_rows(f"memory: server + inference workers, {len(frozen)} versions loaded "
               f"({frozen_mb:.0f} MB of frozen graphs)", [
        *rows,
        ("total RSS", f"{total(before, 'rss'):.0f} MB before, {rss:.0f} MB after "
                      f"({rss / frozen_mb:.1f}x the frozen bytes); PSS {total(after, 'pss'):.0f} MB"),
        ("target", f"<= {TARGET_FIXED_MB} MB + {TARGET_PER_FROZEN:g} x {frozen_mb:.0f} MB = {limit:.0f} MB  "
                   f"{verdict(memory_ok)}"),
    ])
    growth = (total(after, "rss", workers_only=True) - total(before, "rss", workers_only=True)) * MB
    share = cached / growth if growth > 0 else float("nan")
    accounting_ok = ACCOUNTING_RANGE[0] <= share <= ACCOUNTING_RANGE[1]
    print_rows("accounting: the graph cache's bytes against the workers' RSS growth", [
        ("cache (registry_graph_cache_bytes)", f"{cached / MB:.0f} MB for {len(frozen)} versions "
                                               f"({cached / MB / len(frozen):.0f} MB each)"),
        ("workers' RSS growth", f"{growth / MB:.0f} MB"),
        ("cache / growth", f"{share:.2f}  (target {ACCOUNTING_RANGE[0]}-{ACCOUNTING_RANGE[1]})  "
                           f"{verdict(accounting_ok)}"),
    ])
    print_rows(f"warm Session.run in one process, {WARM_SAMPLES} interleaved runs each (for information)", [
        ("weights as variables (the workers' load)", f"p50 {warm[0] * 1000:.1f} ms"),
        ("weights as constants (plain import)", f"p50 {warm[1] * 1000:.1f} ms"),
        ("ratio", f"{warm[0] / warm[1]:.3f}"),
    ])
    passed = cold_ok and memory_ok and accounting_ok
    print_rows("result", [("load average", " ".join(Path("/proc/loadavg").read_text().split()[:3])),
                          ("runtime", f"{runtime:.0f} s"), ("result", verdict(passed))])
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
