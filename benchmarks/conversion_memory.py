"""Converter memory: the peak resident memory of converting a 1 GiB checkpoint.

Builds (once, cached under ``benchmarks/.work``) a tf.compat.v1 checkpoint of
about 1 GiB with resource variables: three strided convolutions and four
8192x8192 dense layers, saved with its ``.meta``.  Then converts it the way a
worker does: the checkpoint is copied into a fresh work directory under
``/tmp`` and ``registry.converter.runner.run_conversion`` runs the converter
child (cold, under the default ``REGISTRY_CONVERT_MEMORY_MB`` and the
sandbox), freezing, writing and verifying it.  The child reports its own
resident memory at the end of each stage (the request's ``memory_trace``:
``/proc/self/status``, each stage's peak being the kernel's ``VmHWM``), so the
figures are the child's, not the sampling's.  Then the version's SavedModel
is built from the frozen graph (the follow-on job, under the same limit),
its peak sampled from ``/proc``.

Target: the conversion's peak RSS at most 3x the checkpoint's size, the frozen
graph's sha256 the same on every run (``benchmarks/.work`` keeps the first),
both jobs done under the default memory limit.  Exits 1 when one is missed.
Needs 4 GB free in /tmp (skips, exit 0, when it has less).

Run from the repository root: ``.venv/bin/python benchmarks/conversion_memory.py``
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
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from registry.config import Settings  # noqa: E402
from registry.converter.runner import run_conversion  # noqa: E402

TARGET_RATIO = 3.0
MIN_FREE_TMP = 4 * 1000**3
TIMEOUT_SECONDS = 180.0
MODEL_VERSION = 1  # bump when the model below changes, to rebuild the cache
IMAGE_SIZE = 64
DENSE_WIDTH = 8192
DENSE_LAYERS = 4
CLASSES = 1000
OUTPUT_NODE = "predictions"
WORK = REPO / "benchmarks" / ".work" / "conversion_memory"
PREFIX = WORK / "model" / "model.ckpt"
INFO = WORK / "model" / "model.json"  # written last: marks a complete cache
SHA_FILE = WORK / "frozen.sha256"  # the first run's frozen graph: later runs must give the same bytes
GIB = 1024**3
MIB = 1024**2


# --------------------------------------------------------------------------
# The checkpoint: strided convolutions, then four 8192x8192 dense layers (1 GiB of float32).
# --------------------------------------------------------------------------

@dataclass
class ModelInfo:
    checkpoint_bytes: int  # the .data shards and the .index
    variables: int
    version: int = MODEL_VERSION


def build() -> None:
    """Initialise the model with seeded random values and save it with a tf.compat.v1 Saver (and its .meta)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf1 = tf.compat.v1
    PREFIX.parent.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        x = tf1.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3], name="images")
        for layer, depth in enumerate((64, 128, 128)):  # 64 → 32 → 16 → 8
            with tf1.variable_scope(f"conv{layer}"):
                w = tf1.get_variable("weights", [3, 3, x.shape[-1], depth], use_resource=True,
                                     initializer=tf1.variance_scaling_initializer())
                b = tf1.get_variable("biases", [depth], use_resource=True, initializer=tf1.zeros_initializer())
                x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, w, 2, "SAME"), b))
        x = tf.reshape(x, [-1, 8 * 8 * 128])
        for layer in range(DENSE_LAYERS):
            with tf1.variable_scope(f"dense{layer}"):
                w = tf1.get_variable("weights", [x.shape[-1], DENSE_WIDTH], use_resource=True,
                                     initializer=tf1.random_uniform_initializer(-0.02, 0.02))
                b = tf1.get_variable("biases", [DENSE_WIDTH], use_resource=True, initializer=tf1.zeros_initializer())
                x = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, w), b))
        with tf1.variable_scope("logits"):
            w = tf1.get_variable("weights", [DENSE_WIDTH, CLASSES], use_resource=True,
                                 initializer=tf1.random_uniform_initializer(-0.02, 0.02))
            logits = tf.matmul(x, w)
        tf.nn.softmax(logits, name=OUTPUT_NODE)
        saver = tf1.train.Saver()
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            saver.save(session, str(PREFIX))
        variables = len(tf1.global_variables())
    files = [p for p in PREFIX.parent.iterdir() if p.name.startswith(f"{PREFIX.name}.data-") or p.name.endswith(".index")]
    INFO.write_text(json.dumps(asdict(ModelInfo(sum(p.stat().st_size for p in files), variables))))


def ensure_model() -> ModelInfo:
    if INFO.is_file():
        info = ModelInfo(**json.loads(INFO.read_text()))
        if info.version == MODEL_VERSION:
            print(f"using the cached checkpoint in {PREFIX.parent.relative_to(REPO)}")
            return info
    print(f"building the checkpoint in {PREFIX.parent.relative_to(REPO)} (once, in a subprocess) ...", flush=True)
    started = time.perf_counter()
    shutil.rmtree(PREFIX.parent, ignore_errors=True)
    SHA_FILE.unlink(missing_ok=True)
    # A subprocess: nothing of TensorFlow stays in this process.
    subprocess.run([sys.executable, __file__, "--build"], check=True)
    print(f"  built in {time.perf_counter() - started:.1f} s")
    return ModelInfo(**json.loads(INFO.read_text()))


# --------------------------------------------------------------------------
# The converter child's memory, from /proc.
# --------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += children
            pending += children
    return found


def peaks(pid: int) -> tuple[int, int]:
    """(VmHWM, VmPeak) of ``pid``: its peak resident memory and address space, in bytes."""
    figures = {"VmHWM": 0, "VmPeak": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in figures:
                figures[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return figures["VmHWM"], figures["VmPeak"]


class PeakSampler:
    """The largest VmHWM and VmPeak among this process's descendants (the converter child and its
    sandbox's processes), read every 20 ms."""

    def __init__(self) -> None:
        self.peak = self.address_space = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for pid in descendants(me):
                rss, address_space = peaks(pid)
                self.peak, self.address_space = max(self.peak, rss), max(self.address_space, address_space)
            self._stop.wait(0.02)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# The two jobs.
# --------------------------------------------------------------------------

def convert(workdir: Path, memory_mb: int) -> tuple[dict | None, str, float, int]:
    """Convert the checkpoint as a worker does; (result, error, seconds, sampled peak)."""
    for source in PREFIX.parent.iterdir():
        if source.name.startswith(PREFIX.name):
            shutil.copyfile(source, workdir / source.name)
    prefix = workdir / PREFIX.name
    request = {
        "source": "checkpoint+meta",
        "files": {"meta": f"{prefix}.meta", "checkpoint_prefix": str(prefix)},
        "output_nodes": [OUTPUT_NODE],
        "input_nodes": [],
        "output_path": str(workdir / "frozen.pb"),
        "verify_tolerance": Settings.verify_tolerance,
        "allowed_ops": [],
        "signatures": [],
        "memory_trace": True,
    }
    started = time.perf_counter()
    with PeakSampler() as sampler:
        outcome = run_conversion(request, workdir, timeout=TIMEOUT_SECONDS, memory_mb=memory_mb, warm_start=False)
    seconds = time.perf_counter() - started
    return outcome.result, outcome.message, seconds, sampler.peak


def build_saved_model(workdir: Path, signatures: dict, memory_mb: int) -> tuple[bool, str, float, PeakSampler]:
    """The version's SavedModel from its frozen graph (the follow-on job); (ok, error, seconds, sampled peaks)."""
    request = {"task": "saved_model", "frozen_path": str(workdir / "frozen.pb"), "signatures": signatures,
               "saved_model_path": str(workdir / "saved_model.tar")}
    started = time.perf_counter()
    with PeakSampler() as sampler:
        outcome = run_conversion(request, workdir, timeout=TIMEOUT_SECONDS, memory_mb=memory_mb, warm_start=False)
    return outcome.ok, outcome.message, time.perf_counter() - started, sampler


def main() -> int:
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < MIN_FREE_TMP:
        print(f"skipped: {tempfile.gettempdir()} has {free / 1000**3:.1f} GB free, and the conversion needs "
              f"{MIN_FREE_TMP / 1000**3:.0f} GB (a copy of the checkpoint, the frozen graph, the SavedModel)")
        return 0
    info = ensure_model()
    memory_mb = int(os.environ.get("REGISTRY_CONVERT_MEMORY_MB", Settings.convert_memory_mb))
    checkpoint = info.checkpoint_bytes
    print(f"checkpoint: {checkpoint / GIB:.2f} GiB, {info.variables} resource variables; "
          f"memory limit {memory_mb} MB (address space)")
    workdir = Path(tempfile.mkdtemp(prefix="registry-conversion-memory-"))
    failures: list[str] = []
    try:
        result, error, seconds, sampled = convert(workdir, memory_mb)
        if not result or not result.get("ok"):
            print(f"the conversion failed after {seconds:.1f} s: {error or result}")
            return 1
        conversion = result["conversion"]
        memory = conversion["memory"]
        peak = memory["peak_rss_bytes"]
        print(f"\nconversion: {seconds:.1f} s, verification {conversion['verification']['status']} "
              f"(max |diff| {conversion['verification'].get('max_abs_diff')})")
        print(f"  {'stage':<22}{'RSS at its end':>16}{'peak in it' if memory['peaks'] == 'per stage' else 'peak so far':>14}"
              f"{'x checkpoint':>14}")
        for stage in memory["stages"]:
            print(f"  {stage['stage']:<22}{stage['rss_bytes'] / MIB:>13.0f} MiB{stage['peak_rss_bytes'] / MIB:>10.0f} MiB"
                  f"{stage['peak_rss_bytes'] / checkpoint:>13.2f}x")
        ratio = peak / checkpoint
        print(f"  peak RSS {peak / MIB:.0f} MiB = {ratio:.2f}x the checkpoint (target <= {TARGET_RATIO:g}x); "
              f"sampled from /proc: {sampled / MIB:.0f} MiB; address space peak (VmPeak, what "
              f"REGISTRY_CONVERT_MEMORY_MB limits) {memory['address_space_peak_bytes'] / MIB:.0f} MiB")
        if ratio > TARGET_RATIO:
            failures.append(f"peak RSS {ratio:.2f}x the checkpoint, above {TARGET_RATIO:g}x")

        digest = sha256_of(workdir / "frozen.pb")
        expected = SHA_FILE.read_text().strip() if SHA_FILE.is_file() else None
        print(f"  frozen graph: {(workdir / 'frozen.pb').stat().st_size / MIB:.0f} MiB, sha256 {digest}"
              + ("" if expected is None else " (the same as the first run's)" if digest == expected
                 else f" (the first run's was {expected})"))
        if expected is None:
            SHA_FILE.write_text(digest + "\n")
        elif digest != expected:
            failures.append("the frozen graph's bytes changed")

        ok, error, seconds, sampled = build_saved_model(workdir, result["signatures"], memory_mb)
        print(f"\nSavedModel build: {'done' if ok else 'FAILED: ' + error} in {seconds:.1f} s, peak RSS (sampled) "
              f"{sampled.peak / MIB:.0f} MiB = {sampled.peak / checkpoint:.2f}x the checkpoint; address space "
              f"peak {sampled.address_space / MIB:.0f} MiB")
        if not ok:
            failures.append(f"the SavedModel build failed under {memory_mb} MB: {error}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + ("target missed: " + "; ".join(failures) if failures else "target met"))
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--build"]:
        build()
        sys.exit(0)
    sys.exit(main())
