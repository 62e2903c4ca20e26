"""Server memory while a checkpoint is pushed.

Builds (once, cached under ``benchmarks/.work``) two tf.compat.v1 checkpoints
of about 100 MiB and 1 GiB, starts the real server (``registry serve --workers
0``, so no conversion runs) on a fresh ``REGISTRY_HOME`` for each, pushes the
checkpoint with the project's own client and samples the server's resident
memory (VmRSS) every 50 ms; the kernel's peak (VmHWM) is read when the push has
answered.  The small push is the in-run comparison: the peak must not grow
with the size of the upload.

Target: pushing the 1 GiB checkpoint keeps the server's peak RSS under 300 MB.
Exits 1 when the target is missed or an upload did not land.

Run from the repository root: ``.venv/bin/python benchmarks/upload_memory.py``
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from registry_server import RegistryServer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from registry.client import RegistryClient, checkpoint_files  # noqa: E402

TARGET_PEAK_BYTES = 300 * 1000**2
SAMPLE_SECONDS = 0.05
INPUT_WIDTH = 4096
CHECKPOINT_VERSION = 1  # bump when the graph below changes, to rebuild the cache
WORK = REPO / "benchmarks" / ".work" / "upload_memory"
MB = 1000**2
MIB = 1024**2


# --------------------------------------------------------------------------
# The checkpoints: four dense layers of float32 weights.
# --------------------------------------------------------------------------

@dataclass
class Checkpoint:
    label: str
    hidden: int  # four [4096, hidden] / [hidden, 4096] weight matrices
    prefix: Path = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = WORK / self.label / "model.ckpt"

    @property
    def info_path(self) -> Path:
        return self.prefix.parent / "checkpoint.json"  # written last: marks a complete cache


@dataclass
class CheckpointInfo:
    data_bytes: int
    total_bytes: int
    data_sha256: list[str]
    version: int = CHECKPOINT_VERSION


def build_checkpoint(checkpoint: Checkpoint) -> None:
    """Save a checkpoint and its .meta with tf.compat.v1 in graph mode."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    checkpoint.prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        x = tf.compat.v1.placeholder(tf.float32, [None, INPUT_WIDTH], name="input")
        widths = [INPUT_WIDTH, checkpoint.hidden, INPUT_WIDTH, checkpoint.hidden, INPUT_WIDTH]
        for layer, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
            weights = tf.compat.v1.get_variable(
                f"dense_{layer}/weights", [fan_in, fan_out], tf.float32,
                tf.compat.v1.random_uniform_initializer(-0.01, 0.01), use_resource=False,
            )
            biases = tf.compat.v1.get_variable(f"dense_{layer}/biases", [fan_out], tf.float32,
                                               tf.compat.v1.zeros_initializer(), use_resource=False)
            x = tf.nn.bias_add(tf.matmul(x, weights), biases)
            if layer < len(widths) - 2:
                x = tf.nn.relu(x)
        tf.nn.softmax(x, name="output")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(checkpoint.prefix))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def describe(checkpoint: Checkpoint) -> CheckpointInfo:
    files = checkpoint_files(checkpoint.prefix)
    return CheckpointInfo(
        data_bytes=sum(p.stat().st_size for p in files["data"]),
        total_bytes=sum(p.stat().st_size for paths in files.values() for p in paths),
        data_sha256=[sha256_of(p) for p in files["data"]],
    )


def ensure_checkpoint(checkpoint: Checkpoint) -> CheckpointInfo:
    files = checkpoint_files(checkpoint.prefix)
    if checkpoint.info_path.is_file() and {"meta", "index", "data"} <= files.keys():
        info = CheckpointInfo(**json.loads(checkpoint.info_path.read_text()))
        if info.version == CHECKPOINT_VERSION:
            return info
    print(f"building the {checkpoint.label} checkpoint in {checkpoint.prefix.parent.relative_to(REPO)} "
          "(once, in a subprocess) ...", flush=True)
    started = time.perf_counter()
    # A subprocess, so that TensorFlow's memory is gone before anything is measured.
    subprocess.run([sys.executable, __file__, "--build", checkpoint.label, str(checkpoint.hidden)], check=True)
    info = describe(checkpoint)
    checkpoint.info_path.write_text(json.dumps(asdict(info)))
    print(f"  built in {time.perf_counter() - started:.1f} s")
    return info


# --------------------------------------------------------------------------
# The server and its memory.
# --------------------------------------------------------------------------

def proc_status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` memory figure (VmRSS, VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


class RssSampler:
    """Samples a process's VmRSS in a background thread."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        self.pid = pid
        self.interval = interval
        self.samples_kib: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples_kib.append(proc_status_kib(self.pid, "VmRSS"))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_bytes(self) -> int:
        return max(self.samples_kib) * 1024


def Server(home: Path) -> RegistryServer:
    return RegistryServer(home, workers=0, log_path=home.parent / f"{home.name}.log")


# --------------------------------------------------------------------------
# One measured push.
# --------------------------------------------------------------------------

@dataclass
class PushResult:
    label: str
    data_bytes: int
    total_bytes: int
    idle_rss_bytes: int
    peak_rss_bytes: int  # VmHWM: the kernel's own peak, over the server's whole life
    sampled_peak_bytes: int
    samples: int
    seconds: float
    blobs_ok: bool
    status: str
    server_exit_code: int | None

    @property
    def throughput_mb_s(self) -> float:
        return self.total_bytes / MB / self.seconds

    @property
    def landed(self) -> bool:
        return self.blobs_ok and self.status == "queued"


def blobs_landed(home: Path, record: dict, info: CheckpointInfo, data_paths: list[Path]) -> bool:
    """Each .data shard is stored under its sha256, with the size and digest of the local file."""
    stored = [f for f in record["files"] if f["role"] == "data"]
    if [f["sha256"] for f in stored] != info.data_sha256:
        return False
    for f, local in zip(stored, data_paths):
        digest = f["sha256"]
        blob = home / "blobs" / "sha256" / digest[:2] / digest[2:4] / digest
        if not blob.is_file() or blob.stat().st_size != local.stat().st_size:
            return False
    return True


def measure_push(checkpoint: Checkpoint, info: CheckpointInfo, home: Path) -> PushResult:
    files = checkpoint_files(checkpoint.prefix)
    parts = [(role, path) for role, paths in files.items() for path in paths]
    name = f"bench-{checkpoint.label}"
    with Server(home) as server:
        time.sleep(1.0)  # let the server settle before the idle reading
        idle = proc_status_kib(server.pid, "VmRSS") * 1024
        client = RegistryClient(server.url)
        with RssSampler(server.pid) as sampler:
            started = time.perf_counter()
            pushed = client.push(name, parts, {})
            seconds = time.perf_counter() - started
        peak = proc_status_kib(server.pid, "VmHWM") * 1024
        record = client.get_version(name, pushed["version"])
    return PushResult(
        label=checkpoint.label,
        data_bytes=info.data_bytes,
        total_bytes=info.total_bytes,
        idle_rss_bytes=idle,
        peak_rss_bytes=peak,
        sampled_peak_bytes=sampler.peak_bytes,
        samples=len(sampler.samples_kib),
        seconds=seconds,
        blobs_ok=blobs_landed(home, record, info, files["data"]),
        status=record["status"],
        server_exit_code=server.process.returncode,
    )


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------

def print_table(results: list[PushResult]) -> None:
    header = ("checkpoint", "data MB", "idle RSS MB", "peak RSS MB", "sampled MB", "peak/data",
              "push s", "MB/s", "landed")
    rows = [(
        r.label,
        f"{r.data_bytes / MB:.1f}",
        f"{r.idle_rss_bytes / MB:.1f}",
        f"{r.peak_rss_bytes / MB:.1f}",
        f"{r.sampled_peak_bytes / MB:.1f}",
        f"{r.peak_rss_bytes / r.data_bytes:.3f}",
        f"{r.seconds:.2f}",
        f"{r.throughput_mb_s:.0f}",
        "yes" if r.landed else f"NO (status {r.status}, blobs {'ok' if r.blobs_ok else 'wrong'})",
    ) for r in results]
    widths = [max(len(c) for c in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  " + "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def main() -> int:
    checkpoints = [Checkpoint("100MiB", hidden=1600), Checkpoint("1GiB", hidden=16384)]
    infos = [ensure_checkpoint(c) for c in checkpoints]
    if infos[-1].data_bytes < 1024**3:
        raise RuntimeError(f"the large checkpoint holds {infos[-1].data_bytes} bytes, less than 1 GiB")

    results = []
    homes = Path(tempfile.mkdtemp(prefix="homes-", dir=WORK))
    try:
        for checkpoint, info in zip(checkpoints, infos):
            print(f"pushing {checkpoint.label} ({info.total_bytes / MB:.1f} MB in all) to a fresh server ...", flush=True)
            results.append(measure_push(checkpoint, info, homes / checkpoint.label))
    finally:
        shutil.rmtree(homes, ignore_errors=True)

    small_result, large_result = results
    growth = large_result.peak_rss_bytes - small_result.peak_rss_bytes
    data_growth = large_result.data_bytes - small_result.data_bytes
    stopped_cleanly = all(r.server_exit_code == 0 for r in results)
    passed = large_result.peak_rss_bytes < TARGET_PEAK_BYTES and all(r.landed for r in results) and stopped_cleanly

    print("\nserver memory while pushing a checkpoint (registry serve --workers 0; RSS from /proc/<pid>/status)")
    print_table(results)
    print(f"\n  peak RSS grew {growth / MB:+.1f} MB for {data_growth / MB:+.1f} MB more data "
          f"({growth / data_growth * 100:+.2f}% of the extra upload)")
    print(f"  VmRSS samples every {SAMPLE_SECONDS * 1000:.0f} ms during the pushes: "
          + ", ".join(f"{r.samples} ({r.label})" for r in results))
    print("  servers stopped cleanly on SIGTERM: "
          + ("yes" if stopped_cleanly else f"NO (exit codes {[r.server_exit_code for r in results]})"))
    print(f"  target: peak RSS pushing {large_result.label} < {TARGET_PEAK_BYTES / MB:.0f} MB: "
          f"{large_result.peak_rss_bytes / MB:.1f} MB")
    print(f"  result: {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]:
        label, hidden = sys.argv[2], int(sys.argv[3])
        build_checkpoint(Checkpoint(label, hidden))
        sys.exit(0)
    sys.exit(main())
