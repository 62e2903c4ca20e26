"""The demo model: on first start, seed ``digits`` with versions that really differ.

``registry serve`` (unless ``--no-demo`` or ``REGISTRY_DEMO=0``) calls
:func:`start_seeding` when the data directory holds no models yet.  In a
background thread, :func:`seed_demo`

1. runs ``python -m registry.demo train OUTDIR`` in a child process
   (:mod:`registry.demo.train`), which loads scikit-learn's bundled 8×8 digits,
   trains a small CNN for a few seconds on the CPU with ``tf.compat.v1`` and
   writes, per version, a TF1 checkpoint (``model.ckpt.meta/.index/.data-*``,
   ``tf.compat.v1.train.Saver``) and the inference graph, plus ``labels.txt``
   ("0".."9"), sample PNGs of held-out digits and ``expected.txt``;
2. pushes each version through the real push path (:func:`registry.uploads.pushing.push`),
   points ``production`` at the better version and ``staging`` at the newest;
3. copies the samples to ``REGISTRY_HOME/demo`` and writes ``demo/.seeded``, so
   that it never seeds twice.

The embedded converter then freezes and verifies the versions like any push.
This module imports no TensorFlow, numpy or scikit-learn: the web process only
ever runs this half; :mod:`registry.demo.train` runs in the child.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from registry import catalog
from registry.errors import NotFound
from registry.uploads.local import push_paths

log = logging.getLogger(__name__)

MODEL = "digits"
OUTPUT_NODE = "predictions/Softmax"
INPUT_NODE = "input"
MARKER = ".seeded"
TRAIN_TIMEOUT_SECONDS = 300.0
_lock = threading.Lock()  # one seeding at a time in this process


@dataclass
class DemoResult:
    model: str
    versions: list[int]
    aliases: dict[str, int]
    samples: list[Path]
    expected: list[str]
    train_seconds: float
    manifest: dict = field(default_factory=dict)


def demo_dir(settings) -> Path:
    return settings.home / "demo"


def should_seed(registry) -> bool:
    """The demo is on, it was never seeded here, and the registry has no models at all."""
    if not registry.settings.demo:
        return False
    if (demo_dir(registry.settings) / MARKER).exists():
        return False
    return not catalog.list_models(registry.db, page_size=1).items


def start_seeding(registry) -> threading.Thread | None:
    """Seed in a daemon thread when :func:`should_seed`; return the thread (None when not seeding)."""
    try:
        if not should_seed(registry):
            return None
    except Exception:
        log.warning("demo model: cannot tell whether to seed it; skipping", exc_info=True)
        return None
    thread = threading.Thread(target=seed_demo, args=(registry,), name="demo-seed", daemon=True)
    thread.start()
    return thread


def seed_demo(registry, *, timeout: float = TRAIN_TIMEOUT_SECONDS) -> DemoResult | None:
    """Train and register the demo model if :func:`should_seed`; None when skipped or failed.

    Never raises: a registry without the demo model still works, so any failure
    (no scikit-learn, a crash while training, a refused push) is logged as a warning.
    """
    with _lock:
        try:
            if not should_seed(registry):
                return None
            return _seed(registry, timeout)
        except Exception as exc:  # the registry must start anyway
            log.warning("demo model not seeded: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
            return None


def _seed(registry, timeout: float) -> DemoResult | None:
    settings = registry.settings
    log.info("demo model: training %r on scikit-learn's 8x8 digits in a child process", MODEL)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="registry-demo-") as tmp:
        out = Path(tmp)
        _train_in_child(out, timeout, registry.stop_workers)
        train_seconds = time.monotonic() - started
        manifest = json.loads((out / "manifest.json").read_text())
        try:  # another seeder (a second process on the same data) may have won the race
            catalog.get_model(registry.db, MODEL)
            log.info("demo model: %r exists already; not seeding it again", MODEL)
            return None
        except NotFound:
            pass
        numbers: dict[str, int] = {}
        for entry in manifest["versions"]:
            version = _push_version(registry, out / entry["dir"], out / manifest["labels"], entry["description"])
            numbers[entry["role"]] = version.version
            registry.notify_workers()
        aliases = {"production": numbers["better"], "staging": max(numbers.values())}
        for alias, number in aliases.items():
            catalog.set_alias(registry.db, MODEL, alias, number)
        target = demo_dir(settings)
        target.mkdir(parents=True, exist_ok=True)
        for name in [*manifest["samples"], "expected.txt"]:
            shutil.copyfile(out / "samples" / name, target / name)
        shutil.copyfile(out / manifest["labels"], target / "labels.txt")
    samples = [target / name for name in manifest["samples"]]
    result = DemoResult(MODEL, sorted(numbers.values()), aliases, samples, manifest["expected"], train_seconds,
                        manifest)
    marker = {
        "model": MODEL,
        "versions": [{"version": numbers[e["role"]], "role": e["role"], "heldout_accuracy": e["heldout_accuracy"],
                      "sample_accuracy": e["sample_accuracy"]} for e in manifest["versions"]],
        "aliases": aliases,
        "samples": manifest["samples"],
        "expected": manifest["expected"],
        "seeded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp_marker = target / f"{MARKER}.tmp"
    tmp_marker.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp_marker, target / MARKER)
    summary = ", ".join(f"v{numbers[e['role']]} {e['role']} {e['heldout_accuracy']:.1%}" for e in manifest["versions"])
    log.info("demo model: %r pushed in %.1f s (held-out accuracy %s); converting; samples in %s",
             MODEL, time.monotonic() - started, summary, target)
    return result


def _train_in_child(out: Path, timeout: float, stop: threading.Event | None = None) -> None:
    """Run ``python -m registry.demo train OUT``; kill it when ``stop`` is set (the server is stopping)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "registry.demo", "train", str(out)], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if stop is not None and stop.is_set():
                    raise RuntimeError("the registry is stopping")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"training took longer than {timeout:g} s")
                try:
                    proc.wait(0.2)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            stderr.seek(0)
            lines = [line for line in stderr.read().splitlines() if line.strip()]
            raise RuntimeError(f"training failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}")


def _push_version(registry, directory: Path, labels: Path, description: str):
    """One version through the real push path: every file streams into an upload sink over blob storage."""
    files = [("meta", directory / "model.ckpt.meta"), ("graph", directory / "inference_graph.pb"),
             ("index", directory / "model.ckpt.index")]
    files += [("data", p) for p in sorted(directory.glob("model.ckpt.data-*"))]
    files.append(("labels", labels))
    return push_paths(registry, MODEL, files, output_nodes=[OUTPUT_NODE], input_nodes=[INPUT_NODE],
                      description=description,
                      preprocessing={"input_height": 8, "input_width": 8, "input_mean": 0, "input_std": 255})
