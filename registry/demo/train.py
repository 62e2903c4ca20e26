"""The demo's training half, run as ``python -m registry.demo train OUTDIR`` in a child process.

Loads scikit-learn's bundled 8×8 digits, trains a small CNN for a few seconds on
the CPU with ``tf.compat.v1`` and writes, per version, a TF1 checkpoint
(``model.ckpt.meta/.index/.data-*``, ``tf.compat.v1.train.Saver``) and the
inference graph, plus ``labels.txt`` ("0".."9"), sample PNGs of held-out digits,
``expected.txt`` and ``manifest.json`` for :mod:`registry.demo.seed` to push.
TensorFlow, numpy and scikit-learn load here, in the child, never in the web process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

from registry.demo.seed import INPUT_NODE, MODEL

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
    data = load_digits()
    pixels = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)  # what a PNG of the digit holds
    order = np.random.default_rng(SEED).permutation(len(pixels))
    n_test = int(round(len(pixels) * TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return pixels, data.target.astype(np.int64), train, test


def _as_input(pixels):
    return np.repeat(pixels[..., None].astype(np.float32), 3, axis=-1) / 255.0


def train(out: Path) -> dict:
    """Train the CNN once, saving an early and a later checkpoint; write samples and a manifest."""
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
