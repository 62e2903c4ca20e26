"""The scale path, measured: S3 (moto's server over HTTP) and PostgreSQL.

In one run, each figure beside its baseline:

1. **Push memory on S3.** The 1 GiB checkpoint of ``upload_memory.py`` pushed
   to a real ``registry serve --workers 0`` whose storage is S3; the server's
   peak resident memory (VmHWM). Target: < 300 MB.
2. **Pull throughput.** A 256 MiB frozen graph pulled through the registry
   (``GET .../frozen.pb``, streamed from S3 through the server) against a plain
   boto3 ``download_fileobj`` of the same object, alternating, 5 rounds each.
   Target: registry >= 0.8x boto3.  With ``REGISTRY_S3_PRESIGN=true`` the
   registry answers a redirect: we count the round trips and the bytes the
   registry itself sent.
3. **Workers.** 40 small conversions queued in PostgreSQL (blobs in S3),
   drained by 1 warm ``registry worker`` process, then by 4, each on a fresh
   database.  The workers start first and their converter templates import
   TensorFlow; they are stopped (SIGSTOP) while the 40 versions are pushed,
   and the clock runs from when they continue until the last version is ready. Target on a machine with at least 4 cores: >= 3x; in general
   >= 0.75 x min(4, cores), since each conversion is a CPU-bound child process.

Exits 1 when a target is missed.  Run from the repository root:
``.venv/bin/python benchmarks/scale.py [--versions 40] [--skip-push] [--only-workers]``
(PostgreSQL from ``REGISTRY_BENCH_DATABASE_URL``, default the local server).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

from registry_server import REGISTRY_BIN, RegistryServer, free_port
from upload_memory import MB, Checkpoint, RssSampler, ensure_checkpoint, proc_status_kib

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from registry.client import RegistryClient, checkpoint_files  # noqa: E402

WORK = REPO / "benchmarks" / ".work" / "scale"
BUCKET = "bench"
PULL_ROUNDS = 5
BIG_FROZEN_SIDE = 8192  # an 8192 x 8192 float32 constant: 256 MiB
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# --------------------------------------------------------------------------
# Servers: moto's S3, a fresh PostgreSQL database.
# --------------------------------------------------------------------------

class MotoServer:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path

    def __enter__(self) -> "MotoServer":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start; see {self.log_path}")
                time.sleep(0.1)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=self.endpoint)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            os.environ.pop(name, None)
        import boto3

        self.client = boto3.client("s3")
        self.client.create_bucket(Bucket=BUCKET)
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class FreshDatabase:
    """A new PostgreSQL database, dropped on exit."""

    def __init__(self, base_url: str) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self.admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
        self.name = f"registry_bench_{uuid.uuid4().hex[:8]}"
        self.url = sa.make_url(base_url).set(database=self.name).render_as_string(hide_password=False)

    def __enter__(self) -> str:
        with self.admin.connect() as c:
            c.execute(self._sa.text(f'CREATE DATABASE "{self.name}"'))
        return self.url

    def __exit__(self, *exc) -> None:
        with self.admin.connect() as c:
            c.execute(self._sa.text(f'DROP DATABASE "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def postgres_answers(url: str) -> bool:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url)
        with engine.connect() as c:
            c.execute(sa.text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------
# Inputs: frozen graphs built by TensorFlow in a subprocess.
# --------------------------------------------------------------------------

def build_frozen_graphs() -> tuple[Path, Path]:
    big, small = WORK / "big_frozen.pb", WORK / "small_frozen.pb"
    if not (big.is_file() and small.is_file()):
        WORK.mkdir(parents=True, exist_ok=True)
        print("building the frozen graphs (once, in a subprocess) ...", flush=True)
        subprocess.run([sys.executable, __file__, "--build", str(big), str(small)], check=True)
    return big, small


def _build(big: Path, small: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    for path, side, out in ((big, BIG_FROZEN_SIDE, BIG_FROZEN_SIDE), (small, 16, 4)):
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [None, side], name="input")
            w = tf.constant(np.random.default_rng(0).standard_normal((side, out), dtype=np.float32) * 0.01)
            tf.nn.softmax(tf.matmul(x, w), name="output")
        path.write_bytes(graph.as_graph_def().SerializeToString())


# --------------------------------------------------------------------------
# 1. Push memory on S3.
# --------------------------------------------------------------------------

def push_memory(storage_url: str, home: Path) -> dict:
    checkpoint = Checkpoint("1GiB", hidden=16384)
    info = ensure_checkpoint(checkpoint)
    files = checkpoint_files(checkpoint.prefix)
    parts = [(role, path) for role, paths in files.items() for path in paths]
    with RegistryServer(home, workers=0, log_path=home.parent / "push.log",
                        env={"REGISTRY_STORAGE": storage_url}) as server:
        time.sleep(1.0)
        idle = proc_status_kib(server.pid, "VmRSS") * 1024
        client = RegistryClient(server.url)
        with RssSampler(server.pid):
            started = time.perf_counter()
            record = client.push("bench-1gib", parts, {})
            seconds = time.perf_counter() - started
        peak = proc_status_kib(server.pid, "VmHWM") * 1024
    stored = [f["sha256"] for f in record["files"] if f["role"] == "data"]
    return {"bytes": info.total_bytes, "idle": idle, "peak": peak, "seconds": seconds,
            "landed": stored == info.data_sha256 and record["status"] == "queued"}


# --------------------------------------------------------------------------
# 2. Pull throughput.
# --------------------------------------------------------------------------

def wait_ready(client: RegistryClient, name: str, version: int, timeout: float = 600) -> dict:
    record = client.wait(name, version, timeout=timeout)
    if record["status"] != "ready":
        raise RuntimeError(f"{name} v{version} is {record['status']}: {record['status_message']}")
    return record


class NullSink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        return len(data)


def timed_get(url: str) -> tuple[float, int, requests.Response]:
    """Seconds to stream ``url`` to nowhere, the bytes received, and the response."""
    started = time.perf_counter()
    with requests.get(url, stream=True, timeout=300) as response:
        response.raise_for_status()
        got = sum(len(chunk) for chunk in response.iter_content(1 << 20))
    return time.perf_counter() - started, got, response


def pull_throughput(storage_url: str, prefix: str, home: Path, moto: MotoServer, big: Path) -> dict:
    from registry.storage import blob_key

    with RegistryServer(home, workers=1, log_path=home.parent / "pull.log",
                        env={"REGISTRY_STORAGE": storage_url}) as server:
        client = RegistryClient(server.url)
        pushed = client.push("bench-pull", [("frozen", big)], {})
        record = wait_ready(client, "bench-pull", pushed["version"])
        digest, size = record["frozen"]["sha256"], record["frozen"]["size"]
        key = f"{prefix}/{blob_key(digest)}"
        url = f"{server.url}/api/v1/models/bench-pull/versions/{pushed['version']}/frozen.pb"
        registry_s, boto_s, stream_s = [], [], []
        for _ in range(PULL_ROUNDS):
            seconds, got, _ = timed_get(url)
            registry_s.append(seconds)
            assert got == size, (got, size)
            sink = NullSink()
            started = time.perf_counter()
            moto.client.download_fileobj(BUCKET, key, sink)
            boto_s.append(time.perf_counter() - started)
            assert sink.size == size
            started = time.perf_counter()
            body = moto.client.get_object(Bucket=BUCKET, Key=key)["Body"]
            got = sum(len(chunk) for chunk in iter(lambda: body.read(1 << 20), b""))
            stream_s.append(time.perf_counter() - started)
            assert got == size
    # Presigned: a server of its own with the setting on, same storage.
    with RegistryServer(home, workers=0, log_path=home.parent / "presign.log",
                        env={"REGISTRY_STORAGE": storage_url, "REGISTRY_S3_PRESIGN": "true"}) as server:
        url = f"{server.url}/api/v1/models/bench-pull/versions/{pushed['version']}/frozen.pb"
        presigned_s, hops, registry_bytes = [], 0, 0
        for _ in range(PULL_ROUNDS):
            seconds, got, response = timed_get(url)
            presigned_s.append(seconds)
            hops = len(response.history)
            registry_bytes = sum(len(r.content) for r in response.history)
            assert got == size and response.history[0].status_code == 302
    return {"size": size, "registry": statistics.median(registry_s), "boto3": statistics.median(boto_s),
            "get_object": statistics.median(stream_s),
            "presigned": statistics.median(presigned_s), "extra_round_trips": hops,
            "registry_bytes_presigned": registry_bytes}


# --------------------------------------------------------------------------
# 3. Workers: 1 against 4.
# --------------------------------------------------------------------------

def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])  # utime + stime


def _warm_templates(worker_pid: int) -> list[int]:
    """The warm converter templates a worker process started (``registry.converter.child --warm``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--warm" in cmdline and str(worker_pid).encode() in cmdline:
                found.append(int(entry.name))
    return found


def wait_until_warm(procs: list[subprocess.Popen], timeout: float = 120.0) -> None:
    """Until every worker's template has imported TensorFlow and waits (its CPU time stopped growing)."""
    deadline = time.monotonic() + timeout
    last: dict[int, int] = {}
    steady = 0
    while time.monotonic() < deadline:
        templates = [t for p in procs for t in _warm_templates(p.pid)]
        ticks = {t: _cpu_ticks(t) for t in templates}
        if len(templates) >= len(procs) and ticks == last and min(ticks.values()) > 100:  # > 1 s of CPU
            steady += 1
            if steady >= 3:
                return
        else:
            steady = 0
        last = ticks
        time.sleep(0.25)
    raise RuntimeError("the workers' converter templates did not get warm within "
                       f"{timeout:g} s (is REGISTRY_CONVERT_WARM off?)")


def drain_with_workers(workers: int, versions: int, pg_base: str, storage_url: str, home: Path,
                       small: Path) -> float:
    """Seconds ``workers`` warm ``registry worker`` processes take to drain ``versions`` queued
    conversions: the workers start and their templates import TensorFlow first, then they are
    stopped (SIGSTOP) while the versions are pushed, and the clock starts when they continue."""
    with FreshDatabase(pg_base) as database_url:
        # A private benchmark database: writes need no token here (REGISTRY_AUTH=off).
        env = {"REGISTRY_DATABASE_URL": database_url, "REGISTRY_STORAGE": storage_url, "REGISTRY_AUTH": "off"}
        with RegistryServer(home, workers=0, log_path=home.parent / f"queue-{workers}.log", env=env) as server:
            client = RegistryClient(server.url)
            worker_env = dict(os.environ, REGISTRY_HOME=str(home), REGISTRY_WORKER_POLL_SECONDS="0.1", **env)
            procs = [subprocess.Popen([str(REGISTRY_BIN), "worker"], env=worker_env, stdout=subprocess.DEVNULL,
                                      stderr=(home.parent / f"worker-{workers}-{i}.log").open("wb"))
                     for i in range(workers)]
            try:
                wait_until_warm(procs)
                for p in procs:
                    p.send_signal(signal.SIGSTOP)
                for _ in range(versions):
                    client.push("bench-small", [("frozen", small)], {})
                started = time.perf_counter()
                for p in procs:
                    p.send_signal(signal.SIGCONT)
                while True:
                    statuses = requests.get(f"{server.url}/api/v1/models/bench-small/versions",
                                            params={"status": "ready", "page_size": versions}, timeout=30).json()
                    if len(statuses["versions"]) == versions:
                        break
                    failed = requests.get(f"{server.url}/api/v1/models/bench-small/versions",
                                          params={"status": "failed"}, timeout=30).json()["versions"]
                    if failed:
                        raise RuntimeError(f"a conversion failed: {failed[0]['status_message']}")
                    if any(p.poll() is not None for p in procs):
                        raise RuntimeError("a worker exited")
                    time.sleep(0.05)
                elapsed = time.perf_counter() - started
            finally:
                for p in procs:
                    p.send_signal(signal.SIGCONT)
                    p.terminate()
                for p in procs:
                    p.wait(timeout=60)
    return elapsed


# --------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=40)
    parser.add_argument("--skip-push", action="store_true", help="leave out the 1 GiB push")
    parser.add_argument("--only-workers", action="store_true", help="measure only the workers (3.)")
    args = parser.parse_args()
    pg_base = os.environ.get("REGISTRY_BENCH_DATABASE_URL", DEFAULT_PG)
    big, small = build_frozen_graphs()
    run = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    results: list[tuple[str, bool]] = []
    try:
        with MotoServer(run / "moto.log") as moto:
            if not (args.skip_push or args.only_workers):
                print("1. pushing the 1 GiB checkpoint to a registry on S3 ...", flush=True)
                push = push_memory(f"s3://{BUCKET}/push", run / "push-home")
                ok = push["peak"] < 300 * MB and push["landed"]
                results.append(("push memory", ok))
                print(f"   {push['bytes'] / MB:,.1f} MB in {push['seconds']:.1f} s "
                      f"({push['bytes'] / MB / push['seconds']:.0f} MB/s); server RSS idle "
                      f"{push['idle'] / MB:.1f} MB, peak {push['peak'] / MB:.1f} MB (target < 300 MB); "
                      f"landed: {'yes' if push['landed'] else 'NO'}")

            if not args.only_workers:
                print(f"2. pulling a {big.stat().st_size / MB:.0f} MB frozen graph, {PULL_ROUNDS} rounds each ...",
                      flush=True)
                pull = pull_throughput(f"s3://{BUCKET}/pull", "pull", run / "pull-home", moto, big)
                ratio = pull["boto3"] / pull["registry"]
                results.append(("pull throughput", ratio >= 0.8))
                for label, seconds in (("through the registry", pull["registry"]),
                                       ("boto3 download_fileobj", pull["boto3"]),
                                       ("boto3 get_object, one stream", pull["get_object"]),
                                       ("registry, presigned redirect", pull["presigned"])):
                    print(f"   {label:30s} {seconds:6.3f} s  {pull['size'] / MB / seconds:7.1f} MB/s")
                print(f"   registry / boto3 throughput: {ratio:.3f} (target >= 0.8); "
                      f"registry / one get_object stream: {pull['get_object'] / pull['registry']:.3f}")
                print(f"   presigned: {pull['extra_round_trips']} extra round trip, "
                      f"{pull['registry_bytes_presigned']} bytes of body from the registry")

            if postgres_answers(pg_base):
                cores = os.cpu_count() or 1
                print(f"3. {args.versions} conversions on PostgreSQL + S3, 1 worker then 4 "
                      f"({cores} cores) ...", flush=True)
                one = drain_with_workers(1, args.versions, pg_base, f"s3://{BUCKET}/w1", run / "w1-home", small)
                four = drain_with_workers(4, args.versions, pg_base, f"s3://{BUCKET}/w4", run / "w4-home", small)
                speedup = one / four
                target = 0.75 * min(4, cores)
                results.append(("workers", speedup >= target))
                print(f"   1 worker  {one:7.1f} s  ({args.versions / one:.2f} conversions/s)")
                print(f"   4 workers {four:7.1f} s  ({args.versions / four:.2f} conversions/s)")
                print(f"   speedup {speedup:.2f}x (target >= {target:.2f}x = 0.75 x min(4 workers, {cores} cores))")
            else:
                print(f"3. skipped: PostgreSQL does not answer at {pg_base} (set REGISTRY_BENCH_DATABASE_URL)")
    finally:
        shutil.rmtree(run, ignore_errors=True)
    print("\nresult: " + ", ".join(f"{name} {'PASS' if ok else 'FAIL'}" for name, ok in results))
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]:
        _build(Path(sys.argv[2]), Path(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
