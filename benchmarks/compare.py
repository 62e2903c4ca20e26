"""Comparing three versions on a stored image set against the three versions' plain batched runs.

Issue 16's first performance target: comparing 3 versions on a 1,000-image set takes <= 1.2x the sum
of the three versions' plain batched ``Session.run`` times on the preprocessed images, with each image
decoded once per preprocessing setting.

Builds (once, cached under ``benchmarks/.work/compare``) three versions of a realistic image classifier
(224x224x3 input, six 3x3 conv + ReLU layers of 32-512 channels, five of them stride 2, global mean,
a batch normalisation whose statistics come from calibration images, a 1001-way dense + softmax:
~4.4 M parameters, ~0.36 GMAC an image, MobileNet-v1's class; seeds 11, 22, 33, so they differ) as
frozen graphs, and 1,000 deterministic JPEGs of varied sizes (160x120 to 800x600).  Starts a fresh
embedded registry in this process (``registry.app.create_app``, a live threaded werkzeug server, one
embedded converter worker, one inference worker process), pushes the graphs with a labels file, waits
until they are ready and pulls them back.  The set is stored through ``POST /api/v1/models/NAME/
eval-sets/SET`` as a .zip with ``expected.txt``.  ``REGISTRY_COMPARE_SYNC_MAX`` is raised (settings)
above the set's size so that ``:compare`` answers 200 when done: the HTTP time is the comparison's.

Then, alternating within each round (ABBA over rounds, so a drift of the machine's speed cancels):

* the comparison: ``POST /v1/models/NAME:compare`` ``{"versions": ["1","2","3"], "eval_set": ...}``,
  timed from the client until the report is back;
* the same comparison of one version (v1): what one pass over the set costs besides the model;
* the baseline: the three pulled graphs imported into plain default ``Session``s in this process,
  each run on the preprocessed images in batches of ``REGISTRY_COMPARE_MAX_IMAGES`` (the comparison's
  batch size), timing only the ``Session.run`` calls, summed over the three.  Each image is decoded
  and preprocessed once, up front, exactly as label_image.py does (read_file, decode_jpeg, cast,
  expand_dims, resize_bilinear, (x - mean) / std, with the version's preprocessing settings); that
  decoding is timed and shown, not counted;
* one decoding pass: the registry's own preprocessing (``registry.serving.preprocess``: decode +
  resize in a map_fn, as the inference worker runs it) alone in this process on the same batches of
  encoded images, so that the ratio's excess can be split into decoding and the rest.  The
  comparison decodes each batch once in the inference worker (versions that share a preprocessing
  setting and a worker get one call: ``WorkerPool.run_shared``) and feeds the tensor to every
  version, so one pass is what the comparison pays.

The ratio is the median of the rounds' ratios.  The last report's per-version p50/p95 and top-1
accuracy are printed beside the plain run's accuracy on the same expected labels (a check that the
comparison computed what the plain run did).  Exits 1 when the target is missed.

    .venv/bin/python benchmarks/compare.py [--images 1000] [--rounds 7]

Over 400 lines: one run builds and caches its models and images, runs a registry, and measures the
comparison, its baseline and the split of the difference in the same rounds, so every figure comes
from the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import requests  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import graph_pb2  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from registry.client import RegistryClient  # noqa: E402

TARGET_RATIO = 1.2
MODEL = "compare-bench"
SET = "bench"
WARM_SET = "warmup"
SEEDS = (11, 22, 33)
SIZE = 224
CHANNELS = ((32, 2), (64, 2), (128, 2), (256, 2), (512, 2), (512, 1))  # (depth, stride) of each 3x3 conv
CLASSES = 1001
MODEL_VERSION = 2  # bump when the models change, to rebuild the cache
IMAGES_VERSION = 1  # bump when the images change
WORK = REPO / "benchmarks" / ".work" / "compare"
INPUT, OUTPUT = "input", "output"
tf1 = tf.compat.v1
tf.get_logger().setLevel("ERROR")  # resize_bilinear's deprecation notice
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise


# -- inputs: three frozen graphs, a labels file, the images -------------------------------------------

def ensure_model(seed: int) -> Path:
    """The CNN with seeded He-initialised constants, frozen: input [None, 224, 224, 3] -> output (softmax).

    Untrained, the pooled features are mostly the same for every image, and every image would get the
    same class; a batch normalisation in front of the dense layer, its statistics measured on calibration
    images (as training would have left them), makes the top-1 class depend on the image."""
    path = WORK / f"cnn-{MODEL_VERSION}-seed{seed}.pb"
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    calibration = calibration_images()  # eagerly, before the graph is the default
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name=INPUT)
        channels = 3
        for depth, stride in CHANNELS:
            kernel = rng.normal(0, np.sqrt(2 / (9 * channels)), (3, 3, channels, depth)).astype(np.float32)
            bias = rng.normal(0, 0.05, depth).astype(np.float32)
            x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, stride, "SAME"), bias))
            channels = depth
        pooled = tf.reduce_mean(x, [1, 2])
        with tf1.Session() as session:
            features = session.run(pooled, {graph.get_tensor_by_name(f"{INPUT}:0"): calibration})
        mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
        normalised = (pooled - mean.astype(np.float32)) / std.astype(np.float32)
        weights = rng.normal(0, 2 * np.sqrt(1 / channels), (channels, CLASSES)).astype(np.float32)
        bias = rng.normal(0, 0.05, CLASSES).astype(np.float32)
        tf.nn.softmax(tf.nn.bias_add(tf.matmul(normalised, weights), bias), name=OUTPUT)
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def calibration_images(count: int = 48) -> np.ndarray:
    """Images not in the set (indices from 100,000), preprocessed as the versions' defaults say."""
    decoded = [tf.cast(tf.io.decode_jpeg(jpeg(100_000 + i), channels=3), tf.float32)[None] for i in range(count)]
    return np.concatenate([tf1.image.resize_bilinear(d, [SIZE, SIZE]).numpy() / 255.0 for d in decoded])


def parameters() -> int:
    count, channels = 0, 3
    for depth, _ in CHANNELS:
        count += 9 * channels * depth + depth
        channels = depth
    return count + channels * CLASSES + CLASSES


def ensure_labels() -> Path:
    path = WORK / "labels.txt"
    if not path.is_file():
        path.write_text("".join(f"class-{i:04d}\n" for i in range(CLASSES)))
    return path


def jpeg(index: int) -> bytes:
    """Image ``index``: a seeded size in 160x120-800x600 and seeded smooth content with a little noise."""
    rng = np.random.default_rng(1000 + index)
    width, height = int(rng.integers(160, 801)), int(rng.integers(120, 601))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b, c, d = rng.uniform(10, 90, 4)
    channels = [128 + 100 * np.sin(x / a + d) * np.cos(y / b),
                128 + 90 * np.cos((x + y) / c),
                255 * (x / width) * (1 - y / height)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    return tf.io.encode_jpeg(np.clip(pixels, 0, 255).astype(np.uint8), quality=int(rng.integers(75, 96))).numpy()


def ensure_images(count: int) -> Path:
    """``count`` JPEGs in a folder (img-0000.jpg ...), sorted names in index order."""
    folder = WORK / f"images-{IMAGES_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (folder / f"img-{i:05d}.jpg").is_file()]
    if missing:
        print(f"writing {len(missing)} JPEGs to {folder.relative_to(REPO)} (once) ...", flush=True)
        for i in missing:
            (folder / f"img-{i:05d}.jpg").write_bytes(jpeg(i))
    return folder


def write_set(path: Path, files: list[Path], expected: list[str]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zipped:
        for file in files:
            zipped.write(file, file.name)
        zipped.writestr("expected.txt", "\n".join(expected) + "\n")


# -- the registry, in this process ----------------------------------------------------------------

class Embedded:
    """``create_app`` on a fresh home behind a live threaded werkzeug server, one embedded converter worker."""

    def __init__(self, home: Path, sync_max: int) -> None:
        from werkzeug.serving import make_server

        from registry.app import create_app
        from registry.config import Settings

        self.settings = Settings(home=home, database_url=f"sqlite:///{home / 'registry.db'}",
                                 storage_url=(home / "blobs").as_uri(), server_url="http://127.0.0.1:0",
                                 embedded_workers=1, worker_poll_seconds=0.2, demo=False, compare_sync_max=sync_max,
                                 gc_interval_seconds=0)
        home.mkdir(parents=True, exist_ok=True)
        self.app = create_app(self.settings, start_workers=True)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        registry = self.app.extensions["registry"]
        registry.stop_workers.set()
        for worker in registry.workers:
            worker.join(timeout=30)
        labels = getattr(registry, "_labels", None)  # the label service, if a request made it
        if labels is not None:
            labels.close()  # its inference worker processes
        registry.db.dispose()


def compare(url: str, versions: list[str], eval_set: str) -> tuple[float, dict]:
    started = time.perf_counter()
    response = requests.post(f"{url}/v1/models/{MODEL}:compare", json={"versions": versions, "eval_set": eval_set},
                             timeout=3600)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f":compare answered {response.status_code}: {response.text[:300]}")
    return seconds, response.json()


# -- the baseline, in this process ----------------------------------------------------------------

class LabelImage:
    """label_image.py's read_tensor_from_image_file, built once with the file name fed (a constant name
    would let grappler fold the whole preprocessing into a constant)."""

    def __init__(self, p: dict) -> None:
        graph = tf.Graph()
        with graph.as_default():
            self.name = tf1.placeholder(tf.string, [])
            reader = tf1.read_file(self.name, "file_reader")
            decoded = tf.image.decode_jpeg(reader, channels=3, name="jpeg_reader")
            expanded = tf.expand_dims(tf.cast(decoded, tf.float32), 0)
            resized = tf1.image.resize_bilinear(expanded, [int(p["input_height"]), int(p["input_width"])])
            self.normalized = tf.divide(tf.subtract(resized, [float(p["input_mean"])]), [float(p["input_std"])])
        self.session = tf1.Session(graph=graph)

    def __call__(self, path: Path) -> np.ndarray:
        return self.session.run(self.normalized, {self.name: str(path)})[0]


class Plain:
    """A pulled frozen graph imported into a default ``Session``."""

    def __init__(self, path: Path) -> None:
        graph_def = graph_pb2.GraphDef()
        graph_def.ParseFromString(path.read_bytes())
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        self.session = tf1.Session(graph=graph)
        self.run = self.session.make_callable(f"{OUTPUT}:0", [f"{INPUT}:0"])

    def timed(self, batches: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        """Seconds inside ``Session.run`` over all batches, and the outputs."""
        seconds, outputs = 0.0, []
        for batch in batches:
            started = time.perf_counter()
            outputs.append(self.run(batch))
            seconds += time.perf_counter() - started
        return seconds, outputs


class RegistryDecode:
    """The registry's own preprocessing (registry.serving.preprocess: decode_image + resize_bilinear in a
    map_fn, as the inference worker fuses it in front of a version), alone, on the same batches of encoded
    images: what one decoding pass costs."""

    def __init__(self, p: dict, files: list[Path], batch_size: int) -> None:
        from registry.serving import preprocess
        from registry.serving.images import LabelFeed

        graph = tf.Graph()
        with graph.as_default():
            tf1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name=INPUT)
        feed = LabelFeed(f"{INPUT}:0", int(p["input_height"]), int(p["input_width"]), float(p["input_mean"]),
                         float(p["input_std"]))
        images, output = preprocess.build(graph, feed)
        self.session = tf1.Session(graph=graph)
        self.run = self.session.make_callable(output, [images])
        self.encoded = [np.array([f.read_bytes() for f in files[i:i + batch_size]], dtype=object)
                        for i in range(0, len(files), batch_size)]
        self.run(self.encoded[0])  # warm up

    def seconds(self) -> float:
        total = 0.0
        for batch in self.encoded:
            started = time.perf_counter()
            self.run(batch)
            total += time.perf_counter() - started
        return total


def set_read_seconds(registry: Embedded, batch_size: int) -> float:
    """One pass of reading the stored set in batches (registry.evaluation.reader), as the comparison does
    twice: once to check the expected labels against the labels files, once to run."""
    from registry.evaluation.reader import read_batches
    from registry.evaluation.sets import get_eval_set

    context = registry.app.extensions["registry"]
    info = get_eval_set(context.db, MODEL, SET)
    started = time.perf_counter()
    for _ in read_batches(context.storage, info, batch_size):
        pass
    return time.perf_counter() - started


# -- the run --------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images in the evaluation set (default 1000)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="rounds of (3-version comparison, 1-version comparison, one decoding pass, baseline), "
                             "ABBA order (default 7)")
    args = parser.parse_args()
    if args.images < 1 or args.rounds < 1:
        parser.error("--images and --rounds must be at least 1")
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    frozen = [ensure_model(seed) for seed in SEEDS]
    labels = ensure_labels()
    folder = ensure_images(args.images)
    files = [folder / f"img-{i:05d}.jpg" for i in range(args.images)]
    scratch = Path(tempfile.mkdtemp(prefix="compare-", dir=WORK))
    registry = Embedded(scratch / "home", sync_max=args.images + 1)
    try:
        return run(args, registry, frozen, labels, files, scratch, started)
    finally:
        registry.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def run(args, registry: Embedded, frozen: list[Path], labels: Path, files: list[Path], scratch: Path,
        started: float) -> int:
    batch_size = max(1, registry.settings.compare_max_images)
    client = RegistryClient(registry.url)
    print(f"registry on {registry.url} (in-process, REGISTRY_COMPARE_SYNC_MAX={registry.settings.compare_sync_max}, "
          f"REGISTRY_COMPARE_MAX_IMAGES={batch_size}); pushing {len(frozen)} versions ...", flush=True)
    for path in frozen:
        client.push(MODEL, [("frozen", path), ("labels", labels)], {"output_nodes": OUTPUT})
    pulled = []
    for number in range(1, len(frozen) + 1):
        record = client.wait(MODEL, number, timeout=600)
        if record["status"] != "ready":
            raise RuntimeError(f"version {number} is {record['status']}: {record['status_message']}")
        pulled.append(scratch / f"v{number}.pb")
        client.pull(MODEL, str(number), pulled[-1])
    settings = [client.get_version(MODEL, str(n))["preprocessing"] for n in (1, 2, 3)]
    if any(s != settings[0] for s in settings):
        raise RuntimeError(f"the versions' preprocessing settings differ: {settings}")
    p = settings[0]
    print(f"  ready; preprocessing {p}", flush=True)

    print(f"decoding and preprocessing {len(files)} images once, as label_image.py does ...", flush=True)
    label_image = LabelImage(p)
    label_image(files[0])
    began = time.perf_counter()
    tensors = [label_image(f) for f in files]
    plain_decode_s = time.perf_counter() - began
    batches = [np.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]
    del tensors
    plains = [Plain(path) for path in pulled]
    for plain in plains:
        plain.run(batches[0])  # warm up
    _, first = plains[0].timed(batches)
    top1 = np.concatenate(first).argmax(axis=1)
    names = labels.read_text().split()
    # expected: v1's own top-1, wrong on every 10th image, so accuracies differ and can be checked
    expected = [names[int(t)] if i % 10 else names[(int(t) + 1) % CLASSES] for i, t in enumerate(top1)]
    write_set(scratch / "set.zip", files, expected)
    write_set(scratch / "warm.zip", files[:batch_size], expected[:batch_size])
    client.add_eval_set(MODEL, SET, scratch / "set.zip")
    client.add_eval_set(MODEL, WARM_SET, scratch / "warm.zip")
    compare(registry.url, ["1", "2", "3"], WARM_SET)  # loads the three graphs into the inference worker

    print(f"measuring {args.rounds} round(s) ...", flush=True)
    decoder = RegistryDecode(p, files, batch_size)
    three: list[float] = []
    one: list[float] = []
    decode: list[float] = []
    plain: list[list[float]] = []
    reports: list[dict] = []
    outputs: list[list[np.ndarray]] = []
    for r in range(args.rounds):
        steps = ("compare3", "compare1", "decode", "plain") if r % 2 == 0 else ("plain", "decode", "compare1",
                                                                               "compare3")
        for step in steps:
            if step == "compare3":
                seconds, report = compare(registry.url, ["1", "2", "3"], SET)
                three.append(seconds)
                reports.append(report)
            elif step == "compare1":
                one.append(compare(registry.url, ["1"], SET)[0])
            elif step == "decode":
                decode.append(decoder.seconds())
            else:
                timed = [pl.timed(batches) for pl in plains]
                plain.append([t for t, _ in timed])
                outputs = [o for _, o in timed]
        print(f"  round {r + 1}: compare 3 versions {three[-1]:.2f} s, compare v1 {one[-1]:.2f} s, plain "
              f"{' + '.join(f'{s:.2f}' for s in plain[-1])} = {sum(plain[-1]):.2f} s, "
              f"one decoding pass {decode[-1]:.2f} s", flush=True)
    read_s = min(set_read_seconds(registry, batch_size) for _ in range(3))
    plain_acc = [float(np.mean([names[int(t)] == e for t, e in zip(np.concatenate(o).argmax(axis=1), expected)]))
                 for o in outputs]
    return report_figures(args, batch_size, three, one, plain, reports, plain_decode_s, decode, read_s, plain_acc,
                          time.perf_counter() - started)


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


def report_figures(args, batch_size, three, one, plain, reports, plain_decode_s, decode, read_s, plain_acc,
                   runtime) -> int:
    n = args.images
    plain_sum = [sum(p) for p in plain]
    ratios = [c / s for c, s in zip(three, plain_sum)]
    ratio = statistics.median(ratios)
    compare_s, sum_s = statistics.median(three), statistics.median(plain_sum)
    one_s, v1_s = statistics.median(one), statistics.median(p[0] for p in plain)
    passed = ratio <= TARGET_RATIO
    print_rows(f"{n} JPEGs (160x120-800x600), 3 versions of a {SIZE}x{SIZE} CNN ({parameters() / 1e6:.1f} M "
               f"parameters), batches of {batch_size}, {args.rounds} round(s), medians", [
        ("compare 3 versions (HTTP :compare)", f"{compare_s:.2f} s  ({compare_s / n * 1000:.1f} ms an image)"),
        ("plain Session.run, sum of 3", f"{sum_s:.2f} s  (" + " + ".join(
            f"v{i + 1} {statistics.median(p[i] for p in plain):.2f}" for i in range(3)) + ")"),
        ("ratio", f"{ratio:.2f}  (rounds: {', '.join(f'{x:.2f}' for x in ratios)})"),
        ("target", f"<= {TARGET_RATIO}x  {'PASS' if passed else 'FAIL'}"),
    ])
    decodes = 1  # the worker decodes each batch once and feeds every version (WorkerPool.run_shared)
    report = reports[-1]
    # Per round, then the median over rounds (a sum of medians from different rounds would not add up).
    # inside: the worker calls (the reports' latency_ms, summed: bytes to the inference worker, one decoding,
    # each version's Session.run, scores back); outside: the rest of the HTTP request.
    inside = [sum(v["latency_ms"] for v in r["versions"]) / 1000 for r in reports]
    rounds = list(zip(three, one, plain_sum, [p[0] for p in plain], inside, decode))
    med = statistics.median
    print_rows(f"where the comparison's time goes (per round, medians over the {len(rounds)} rounds)", [
        ("plain Session.run (the baseline)", f"{sum_s:.2f} s"),
        ("inside the worker calls", f"baseline + {med(i - s for _, _, s, _, i, _ in rounds):.2f} s: "
                                                f"decoding + resizing {decodes}x "
                                                f"~{med(decodes * d for *_, d in rounds):.2f} s, the rest (bytes to "
                                                f"the worker process, scores back, the batcher) "
                                                f"~{med(i - s - decodes * d for _, _, s, _, i, d in rounds):.2f} s"),
        ("decoding + resizing alone, 1 pass", f"{med(decode):.2f} s  (the registry's preprocessing graph in this "
                                               f"process, batches of {batch_size} encoded images, no model)"),
        ("outside the worker calls", f"{med(c3 - i for c3, _, _, _, i, _ in rounds):.2f} s  (of which reading the "
                                     f"set 2x ~{2 * read_s:.2f} s: checking the expected labels, then running; "
                                     "the rest: metrics, storing the report, HTTP)"),
        ("compare v1 alone", f"{one_s:.2f} s = plain v1 {v1_s:.2f} s + "
                             f"{med(c1 - v1 for _, c1, _, v1, _, _ in rounds):.2f} s (one decoding pass + "
                             f"{med(c1 - v1 - d for _, c1, _, v1, _, d in rounds):.2f} s)"),
        ("label_image.py decoding (not counted)", f"{plain_decode_s:.2f} s for {n} images, one at a time"),
    ])
    rows = []
    for entry, acc in zip(report["versions"], plain_acc):
        latency = entry["latency"]
        top1 = (entry.get("accuracy") or {}).get("top1")
        rows.append((f"v{entry['version']}", f"batch p50 {latency['p50_ms']:.0f} ms, p95 {latency['p95_ms']:.0f} ms "
                     f"(per image p50 {latency['per_input_p50_ms']:.1f} ms, p95 {latency['per_input_p95_ms']:.1f} ms), "
                     f"{latency['inputs_per_second']:.0f} images/s; top-1 accuracy {top1} (plain run: {acc:.3f})"))
    pairs = report["agreement"]["pairs"]
    rows.append(("agreement", ", ".join(f"v{q['a']}-v{q['b']} top-1 {q['top1_agreement']:.3f}" for q in pairs)))
    rows.append(("report timing_ms", json.dumps(report["timing_ms"])))
    print_rows("the last 3-version report, per version", rows)
    print_rows("result", [("load average", " ".join(Path("/proc/loadavg").read_text().split()[:3])),
                          ("runtime", f"{runtime:.0f} s"), ("result", "PASS" if passed else "FAIL")])
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
