"""The demo model: on first start, seed ``digits`` with versions that really differ.

``registry serve`` (unless ``--no-demo`` or ``REGISTRY_DEMO=0``) calls
:func:`start_seeding` when the data directory holds no models yet.  In a
background thread, :func:`seed_demo`

1. runs ``python -m registry.demo train OUTDIR`` in a child process, which loads
   scikit-learn's bundled 8×8 digits, trains a small CNN for a few seconds on
   the CPU with ``tf.compat.v1`` and writes, per version, a TF1 checkpoint
   (``model.ckpt.meta/.index/.data-*``, ``tf.compat.v1.train.Saver``) and the
   inference graph, plus ``labels.txt`` ("0".."9"), sample PNGs of held-out
   digits and ``expected.txt``;
2. pushes each version through the real push path (:func:`registry.uploads.push`),
   points ``production`` at the better version and ``staging`` at the newest;
3. copies the samples to ``REGISTRY_HOME/demo`` and writes ``demo/.seeded``, so
   that it never seeds twice.

The embedded converter then freezes and verifies the versions like any push.
This module imports no TensorFlow, numpy or scikit-learn at import time: the web
process only ever runs the parent half; the ``train`` half runs in the child.
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

log = logging.getLogger(__name__)

MODEL = "digits"
OUTPUT_NODE = "predictions/Softmax"
INPUT_NODE = "input"
MARKER = ".seeded"
TRAIN_TIMEOUT_SECONDS = 300.0
CHUNK = 256 * 1024
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
    from registry import catalog

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
    from registry import catalog
    from registry.errors import NotFound

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
    from registry import uploads

    files = [("meta", directory / "model.ckpt.meta"), ("graph", directory / "inference_graph.pb"),
             ("index", directory / "model.ckpt.index")]
    files += [("data", p) for p in sorted(directory.glob("model.ckpt.data-*"))]
    files.append(("labels", labels))
    received: list[uploads.ReceivedFile] = []
    try:
        for role, path in files:
            sink = uploads.UploadSink(registry.storage.writer(), scan=role in uploads.GRAPH_FIELDS)
            received.append(uploads.ReceivedFile(role, path.name, sink))
            with open(path, "rb") as stream:
                while chunk := stream.read(CHUNK):
                    sink.write(chunk)
    except BaseException:
        uploads.abort(received)
        raise
    request = uploads.PushRequest(
        files=received, output_nodes=[OUTPUT_NODE], input_nodes=[INPUT_NODE], description=description,
        preprocessing={"input_height": 8, "input_width": 8, "input_mean": 0, "input_std": 255},
    )
    return uploads.push(registry.db, registry.storage, MODEL, request,
                        max_attempts=registry.settings.job_max_attempts)


# -- the child: TensorFlow and scikit-learn live only below, inside functions -------------

SEED = 20240607
TEST_FRACTION = 0.2
BATCH = 32
LEARNING_RATE = 0.01
EARLY_STEPS = 12
BETTER_STEPS = 800
SAMPLES_DISAGREE = 4  # held-out digits on which the early and the better version disagree
SAMPLES_TOTAL = 10
SAMPLE_SIZE = 64  # pixels: 8×8 digits upscaled by nearest neighbour (exact back at 8×8 with resize_bilinear)


def _cnn(x):
    """conv 3×3×16 → relu → max pool → dense 64 → relu → dense 10 → softmax."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    with tf1.variable_scope("conv1"):
        w = tf1.get_variable("weights", [3, 3, 3, 16], use_resource=True)
        b = tf1.get_variable("biases", [16], use_resource=True, initializer=tf1.zeros_initializer())
        y = tf.nn.relu(tf.nn.conv2d(x, w, [1, 1, 1, 1], "SAME") + b)
        y = tf.nn.max_pool2d(y, 2, 2, "VALID")
    y = tf.reshape(y, [-1, 4 * 4 * 16])
    with tf1.variable_scope("fc1"):
        w = tf1.get_variable("weights", [4 * 4 * 16, 64], use_resource=True)
        b = tf1.get_variable("biases", [64], use_resource=True, initializer=tf1.zeros_initializer())
        y = tf.nn.relu(tf.matmul(y, w) + b)
    with tf1.variable_scope("logits"):
        w = tf1.get_variable("weights", [64, 10], use_resource=True)
        b = tf1.get_variable("biases", [10], use_resource=True, initializer=tf1.zeros_initializer())
        logits = tf.matmul(y, w) + b
    with tf1.variable_scope("predictions"):
        return logits, tf.nn.softmax(logits, name="Softmax")


def _digits():
    """scikit-learn's 1,797 8×8 digits as the label service sees their PNGs: 0..255 pixels, 3 channels, /255."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)  # what a PNG of the digit holds
    order = np.random.default_rng(SEED).permutation(len(pixels))
    n_test = int(round(len(pixels) * TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return pixels, data.target.astype(np.int64), train, test


def _as_input(pixels):
    import numpy as np

    return np.repeat(pixels[..., None].astype(np.float32), 3, axis=-1) / 255.0


def train(out: Path) -> dict:
    """Train the CNN once, saving an early and a later checkpoint; write samples and a manifest."""
    import numpy as np
    import tensorflow as tf

    tf1 = tf.compat.v1
    tf.config.experimental.enable_op_determinism()
    started = time.monotonic()
    pixels, targets, train_idx, test_idx = _digits()
    inputs = _as_input(pixels)
    out.mkdir(parents=True, exist_ok=True)
    config = tf1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1)

    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(SEED)
        x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name=INPUT_NODE)
        labels = tf1.placeholder(tf.int64, [None], name="labels")
        logits, probs = _cnn(x)
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
        train_op = tf1.train.AdamOptimizer(LEARNING_RATE).minimize(loss, name="train")
        saver = tf1.train.Saver()
        rng = np.random.default_rng(SEED)
        checkpoints = {"early": EARLY_STEPS, "better": BETTER_STEPS}
        predictions: dict[str, np.ndarray] = {}
        with tf1.Session(graph=graph, config=config) as session:
            session.run(tf1.global_variables_initializer())
            for step in range(1, BETTER_STEPS + 1):
                batch = rng.choice(train_idx, BATCH, replace=False)
                session.run(train_op, {x: inputs[batch], labels: targets[batch]})
                for role, steps in checkpoints.items():
                    if step == steps:
                        directory = out / f"v_{role}"
                        directory.mkdir()
                        saver.save(session, str(directory / "model.ckpt"))
                        predictions[role] = session.run(probs, {x: inputs[test_idx]}).argmax(axis=1)
    # The inference graph, as export_inference_graph.py writes it: input → softmax, no training ops.
    inference = tf.Graph()
    with inference.as_default():
        tf1.set_random_seed(SEED)  # initialisers are never run, but determinism wants a seed
        tf1.placeholder(tf.float32, [None, 8, 8, 3], name=INPUT_NODE)
        _cnn(inference.get_tensor_by_name(f"{INPUT_NODE}:0"))
    for role in checkpoints:
        tf.io.write_graph(inference.as_graph_def(), str(out / f"v_{role}"), "inference_graph.pb", as_text=False)
    train_seconds = time.monotonic() - started

    truth = targets[test_idx]
    accuracy = {role: float((predictions[role] == truth).mean()) for role in checkpoints}
    chosen = _choose_samples(truth, predictions["early"], predictions["better"])
    samples_dir = out / "samples"
    samples_dir.mkdir()
    names, expected = [], []
    for i, position in enumerate(chosen, start=1):
        image = np.repeat(np.repeat(pixels[test_idx[position]], SAMPLE_SIZE // 8, 0), SAMPLE_SIZE // 8, 1)
        png = tf.io.encode_png(np.repeat(image[..., None], 3, axis=-1)).numpy()
        name = f"sample-{i:02d}.png"
        (samples_dir / name).write_bytes(png)
        names.append(name)
        expected.append(str(int(truth[position])))
    (samples_dir / "expected.txt").write_text("\n".join(expected) + "\n")
    (out / "labels.txt").write_text("\n".join(str(d) for d in range(10)) + "\n")

    # The samples through label_image.py's preprocessing and the saved checkpoints, as the label service will.
    sample_accuracy = {role: _sample_accuracy(out / f"v_{role}", samples_dir, names, expected)
                       for role in checkpoints}
    n_test, n_train = len(test_idx), len(train_idx)
    describe = {
        "early": f"early: small CNN on scikit-learn's 8x8 digits after only {EARLY_STEPS} training steps "
                 f"(batch {BATCH}); held-out accuracy {accuracy['early']:.1%} on {n_test} test digits",
        "better": f"better: the same CNN after {BETTER_STEPS} training steps (batch {BATCH}, Adam); "
                  f"held-out accuracy {accuracy['better']:.1%} on {n_test} test digits",
    }
    manifest = {
        "model": MODEL,
        "dataset": f"sklearn.datasets.load_digits: {n_train} training and {n_test} held-out 8x8 digits",
        "labels": "labels.txt",
        "versions": [
            {"role": role, "dir": f"v_{role}", "steps": checkpoints[role], "description": describe[role],
             "heldout_accuracy": accuracy[role], "sample_accuracy": sample_accuracy[role]}
            for role in checkpoints
        ],
        "samples": names,
        "expected": expected,
        "heldout_disagreements": int((predictions["early"] != predictions["better"]).sum()),
        "train_seconds": round(train_seconds, 2),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _choose_samples(truth, early, better) -> list[int]:
    """Held-out positions: first where the versions disagree (the better one right), then where both are
    right, each digit once while possible, so that a compare shows both agreement and disagreement."""
    chosen: list[int] = []
    digits: set[int] = set()

    def take(candidates, count: int) -> None:
        for distinct in (True, False):
            for position in candidates:
                if len(chosen) >= count:
                    return
                if position in chosen or (distinct and int(truth[position]) in digits):
                    continue
                chosen.append(int(position))
                digits.add(int(truth[position]))

    positions = range(len(truth))
    take([p for p in positions if early[p] != better[p] and better[p] == truth[p]], SAMPLES_DISAGREE)
    take([p for p in positions if early[p] == better[p] == truth[p]], SAMPLES_TOTAL)
    return sorted(chosen)


def _sample_accuracy(directory: Path, samples_dir: Path, names: list[str], expected: list[str]) -> float:
    """Top-1 accuracy of a checkpoint on the sample PNGs, preprocessed like label_image.py."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(SEED)
        data = tf1.placeholder(tf.string, [])
        image = tf.expand_dims(tf.cast(tf.io.decode_png(data, channels=3), tf.float32), 0)
        batch = tf.divide(tf.subtract(tf1.image.resize_bilinear(image, [8, 8]), [0.0]), [255.0])
        x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name=INPUT_NODE)
        _, probs = _cnn(x)
        with tf1.Session(graph=graph) as session:
            tf1.train.Saver().restore(session, str(directory / "model.ckpt"))
            right = 0
            for name, label in zip(names, expected):
                pixels = session.run(batch, {data: (samples_dir / name).read_bytes()})
                right += int(session.run(probs, {x: pixels}).argmax()) == int(label)
    return right / len(names)


def _exit_when_orphaned() -> None:
    """Stop training when the registry that started us is gone (it kills us when it stops, unless killed itself)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "train":
        print("usage: python -m registry.demo train OUTDIR", file=sys.stderr)
        return 2
    _exit_when_orphaned()
    manifest = train(Path(argv[1]))
    print(json.dumps({v["role"]: {"heldout": v["heldout_accuracy"], "samples": v["sample_accuracy"]}
                      for v in manifest["versions"]} | {"train_seconds": manifest["train_seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
