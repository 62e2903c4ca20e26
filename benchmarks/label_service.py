"""Label service latency and throughput against a plain ``Session.run``.

Builds (once, cached under ``benchmarks/.work/label_service``) three versions
of the Inception-v3-shaped CNN of ``freeze_vs_freeze_graph.py`` (same
architecture, different seeds, ~112 MB checkpoints each), starts a real
``registry serve`` on a free port with a fresh ``REGISTRY_HOME``, pushes them
with ``RegistryClient`` (checkpoint + inference graph + labels, output node
given), waits until they are ready and pulls the frozen graphs.  Then, in the
same run and alternating so that the server and the plain run never compete
for the CPU, it measures:

* cold: the first ``:label`` of a version not loaded yet, against the plain
  cold cost (parse + ``import_graph_def`` + ``Session`` + first run);
* warm ``:label`` over HTTP (a 640x480 JPEG) against an in-process run of
  label_image.py's own two steps on the same image file and pulled ``.pb``: its
  ``read_tensor_from_image_file`` graph's ``Session.run`` (read, decode, cast,
  expand, ``resize_bilinear``, mean/std), then the model's ``Session.run`` on the
  result.  Measured for the Inception-v3-sized version (~60 ms a run) and for
  a small CNN (224x224, ~8 ms a run, pushed as a frozen graph once the rest is
  measured), with the part of each request spent outside
  ``LabelService.label`` (HTTP, Flask, resolving, JSON).  The warm targets are
  measured through ``registry serve --gunicorn`` (the production HTTP server,
  keep-alive; one process, 8 threads) on the same home; the same through
  ``registry serve``'s threaded werkzeug server, which opens a connection and a
  thread per request, is printed beside for comparison;
* ``:compare`` of the three versions on one image against the sum of the
  three plain runs;
* 16 concurrent ``:label`` clients against the best plain batched throughput
  (batches of 1, 2, 4, 8 and 16 preprocessed images, swept before and after
  the clients; the best images/s of all counts).

Targets: warm ``:label`` p50 <= 1.05x label_image.py's two steps' p50, for both
models (issue 14); ``:compare`` p50 <= 1.2x the
sum of the plain p50s; 16 concurrent clients without errors at >= 0.8x the best
plain images/s; and the server's predictions equal the plain run's.  Exits 1
when a target is missed.

Run from the repository root: ``.venv/bin/python benchmarks/label_service.py``
(``--small-only``: only the small CNN's warm ``:label``, in about a minute).

Over 400 lines: one run builds and caches its models, then measures cold, warm
(two models), compare and throughput, each against its own in-process baseline,
so that every ratio comes from the same run.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import requests  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import graph_pb2  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import freeze_vs_freeze_graph as inception  # noqa: E402
from registry_server import RegistryServer  # noqa: E402
from registry.client import RegistryClient  # noqa: E402

TARGET_LABEL_RATIO = 1.05
TARGET_OUTSIDE_MS = 1.5  # HTTP, Flask, resolve and JSON around LabelService.label (reported)
TARGET_COMPARE_RATIO = 1.2
TARGET_THROUGHPUT_RATIO = 0.8
SEEDS = (11, 22, 33)
MODEL_VERSION = 1  # bump when the models below change, to rebuild the cache
MODEL_NAME = "inception-bench"
SMALL_NAME = "small-cnn-bench"
SMALL_SIZE = 224
SMALL_CHANNELS = (32, 64, 96)  # three 3x3 conv + ReLU + 2x2 max-pool, mean, 1001-way softmax: ~8 ms a run
SMALL_SEED = 5
WARM_UP = 5
LABEL_SAMPLES = 50
COMPARE_SAMPLES = 30
CLIENTS = 16
REQUESTS_PER_CLIENT = 8
BATCH_SIZES = (1, 2, 4, 8, 16)
MIN_BATCH_IMAGES = 48  # images timed per plain batch size (at least 3 runs)
IMAGE_WIDTH, IMAGE_HEIGHT = 640, 480
TOP_K = 5
SCORE_TOLERANCE = 1e-5

WORK = REPO / "benchmarks" / ".work" / "label_service"
INPUT_TENSOR = f"{inception.INPUT_NODE}:0"
OUTPUT_TENSOR = f"{inception.OUTPUT_NODE}:0"


# --------------------------------------------------------------------------
# Inputs: three checkpoints, a labels file, a JPEG.
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelFiles:
    seed: int

    @property
    def directory(self) -> Path:
        return WORK / f"seed-{self.seed}"

    @property
    def prefix(self) -> Path:
        return self.directory / "model.ckpt"

    @property
    def graph(self) -> Path:
        return self.directory / "inference_graph.pb"

    @property
    def marker(self) -> Path:
        return self.directory / "model.json"  # written last: marks a complete cache

    def data_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"{self.prefix.name}.data-*-of-*"))

    def push_files(self, labels: Path) -> list[tuple[str, Path]]:
        return ([("index", Path(f"{self.prefix}.index"))] + [("data", p) for p in self.data_files()]
                + [("graph", self.graph), ("labels", labels)])

    def cached(self) -> bool:
        if not (self.marker.is_file() and self.graph.is_file() and self.data_files()):
            return False
        info = json.loads(self.marker.read_text())
        return info.get("version") == MODEL_VERSION and info.get("seed") == self.seed


def build_model(model: ModelFiles) -> None:
    """Inception-v3's topology with weights drawn from ``model.seed``: checkpoint and inference graph."""
    model.directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(model.seed)
        images = tf.compat.v1.placeholder(tf.float32, [None, inception.IMAGE_SIZE, inception.IMAGE_SIZE, 3],
                                          name=inception.INPUT_NODE)
        predictions = inception.inception_v3(images)
        assert predictions.op.name == inception.OUTPUT_NODE, predictions.op.name
        graph_def = graph.as_graph_def()
        saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(model.prefix), write_meta_graph=False)
    tf.io.write_graph(graph_def, str(model.directory), model.graph.name, as_text=False)
    model.marker.write_text(json.dumps({"version": MODEL_VERSION, "seed": model.seed,
                                        "data_bytes": sum(p.stat().st_size for p in model.data_files())}))


def ensure_models() -> list[ModelFiles]:
    models = [ModelFiles(seed) for seed in SEEDS]
    for model in models:
        if model.cached():
            continue
        print(f"building the seed-{model.seed} model in {model.directory.relative_to(REPO)} (once) ...", flush=True)
        started = time.perf_counter()
        build_model(model)
        print(f"  built in {time.perf_counter() - started:.1f} s", flush=True)
    return models


def ensure_labels() -> Path:
    path = WORK / "labels.txt"
    if not path.is_file():
        path.write_text("".join(f"class-{i:04d}\n" for i in range(inception.NUM_CLASSES)))
    return path


def ensure_jpeg() -> Path:
    """A 640x480 JPEG of smooth synthetic content with a little seeded noise."""
    path = WORK / "image.jpg"
    if path.is_file():
        return path
    y, x = np.mgrid[0:IMAGE_HEIGHT, 0:IMAGE_WIDTH].astype(np.float32)
    channels = [
        128 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0),
        128 + 90 * np.cos((x + y) / 71.0),
        255 * (x / IMAGE_WIDTH) * (1 - y / IMAGE_HEIGHT),
    ]
    noise = np.random.default_rng(7).normal(0, 12, (IMAGE_HEIGHT, IMAGE_WIDTH, 3))
    pixels = np.clip(np.stack(channels, axis=-1) + noise, 0, 255).astype(np.uint8)
    path.write_bytes(tf.io.encode_jpeg(pixels, quality=90).numpy())
    return path


def ensure_small_cnn() -> Path:
    """The small CNN as a frozen graph (seeded constants): input [None, 224, 224, 3], output 'output'."""
    path = WORK / f"small-cnn-{MODEL_VERSION}-{'-'.join(map(str, SMALL_CHANNELS))}.pb"
    if path.is_file():
        return path
    rng = np.random.default_rng(SMALL_SEED)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, SMALL_SIZE, SMALL_SIZE, 3], name="input")
        channels = 3
        for depth in SMALL_CHANNELS:
            kernel = rng.normal(0, np.sqrt(2 / (9 * channels)), (3, 3, channels, depth)).astype(np.float32)
            x = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME")), 2, 2, "SAME")
            channels = depth
        weights = rng.normal(0, np.sqrt(1 / channels), (channels, inception.NUM_CLASSES)).astype(np.float32)
        tf.nn.softmax(tf.matmul(tf.reduce_mean(x, [1, 2]), weights), name="output")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def preprocess(jpeg: bytes, height: int, width: int, mean: float, std: float) -> np.ndarray:
    """label_image.py's steps (decode, cast, batch, resize_bilinear, normalise), outside the server."""
    image = tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)
    resized = tf.compat.v1.image.resize_bilinear(tf.expand_dims(image, 0), [height, width])
    return ((resized - mean) / std).numpy()


# --------------------------------------------------------------------------
# The server.
# --------------------------------------------------------------------------

def Server(home: Path) -> RegistryServer:
    return RegistryServer(home, workers=1, log_path=WORK / "server.log")


def Gunicorn(home: Path) -> RegistryServer:
    """The registry's production HTTP server on the same home: ``registry serve --gunicorn`` (one
    process, 8 threads, keep-alive).  The warm targets apply to it; werkzeug's threaded server, which
    ``registry serve`` runs, closes every connection, and its figures are printed beside for comparison."""
    return RegistryServer(home, workers=0, log_path=WORK / "gunicorn.log",
                          args=("--gunicorn", "--processes", "1", "--threads", "8"))


def push_and_pull(client: RegistryClient, models: list[ModelFiles], labels: Path, dest: Path) -> list[Path]:
    """Push each checkpoint as the next version, wait until all are ready, pull their frozen graphs."""
    versions = []
    for model in models:
        record = client.push(MODEL_NAME, model.push_files(labels), {"output_nodes": inception.OUTPUT_NODE})
        versions.append(record["version"])
        print(f"  pushed seed {model.seed} as version {record['version']}", flush=True)
    pulled = []
    for version in versions:
        record = client.wait(MODEL_NAME, version, timeout=600)
        if record["status"] != "ready":
            raise RuntimeError(f"version {version} is {record['status']}: {record['status_message']}")
        path = dest / f"v{version}.pb"
        client.pull(MODEL_NAME, str(version), path)
        pulled.append(path)
        print(f"  version {version} ready, frozen.pb {path.stat().st_size / 1e6:.1f} MB pulled", flush=True)
    return pulled


class LabelClient:
    """``:label`` over ``http.client`` (the client's own cost stays small, as in tf_serving_api.py) and
    ``:compare`` over a ``requests`` session (multipart), timed from the client."""

    def __init__(self, url: str, jpeg: bytes, model: str = MODEL_NAME) -> None:
        self.url = f"{url}/v1/models/{model}"
        self.path = f"/v1/models/{model}"
        self.jpeg = jpeg
        self.session = requests.Session()
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=300)

    def _post(self, path: str) -> tuple[int, bytes]:
        self.connection.request("POST", path, self.jpeg, {"Content-Type": "image/jpeg"})
        response = self.connection.getresponse()
        return response.status, response.read()

    def label(self, version: int) -> tuple[float, dict]:
        path = f"{self.path}/versions/{version}:label?top_k={TOP_K}"
        started = time.perf_counter()
        try:
            status, body = self._post(path)
        except (ConnectionError, http.client.RemoteDisconnected):
            self.connection.close()  # the server let the connection go: once more, on a new one
            status, body = self._post(path)
        seconds = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f":label answered {status}: {body[:200]!r}")
        return seconds, json.loads(body)

    def compare(self, versions: list[int]) -> tuple[float, dict]:
        started = time.perf_counter()
        response = self.session.post(f"{self.url}:compare",
                                     data={"versions": ",".join(map(str, versions)), "top_k": str(TOP_K)},
                                     files=[("image", ("image.jpg", self.jpeg, "image/jpeg"))], timeout=300)
        seconds = time.perf_counter() - started
        response.raise_for_status()
        return seconds, response.json()


# --------------------------------------------------------------------------
# The plain run.
# --------------------------------------------------------------------------

class PlainGraph:
    """A frozen graph imported with ``import_graph_def`` into a default-config Session."""

    def __init__(self, path: Path, input_tensor: str = INPUT_TENSOR, output_tensor: str = OUTPUT_TENSOR) -> None:
        graph_def = graph_pb2.GraphDef()
        graph_def.ParseFromString(path.read_bytes())
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        self.session = tf.compat.v1.Session(graph=self.graph)
        self.input = self.graph.get_tensor_by_name(input_tensor)
        self.output = self.graph.get_tensor_by_name(output_tensor)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self.output, {self.input: batch})


class LabelImage:
    """label_image.py's two steps in this process, on an image file and a pulled frozen graph: the
    ``read_tensor_from_image_file`` graph (built once) and its ``Session.run``, then the model's.

    The one change to label_image.py's ops: the file name is fed, not a constant.  With a constant
    name grappler folds the whole preprocessing (read, decode, resize) into a constant on the first
    run, and every later run would only copy the result; label_image.py builds a new graph per image,
    so it decodes every time.
    """

    def __init__(self, plain: PlainGraph, image: Path, preprocessing: dict) -> None:
        tf1 = tf.compat.v1
        self.plain = plain
        self.image = str(image)
        graph = tf.Graph()
        with graph.as_default():  # label_image.py's read_tensor_from_image_file, but for the fed name
            self.file_name = tf1.placeholder(tf.string, [], name="file_name")
            file_reader = tf1.read_file(self.file_name, "file_reader")
            if image.suffix == ".png":
                image_reader = tf.image.decode_png(file_reader, channels=3, name="png_reader")
            elif image.suffix == ".gif":
                image_reader = tf.squeeze(tf.image.decode_gif(file_reader, name="gif_reader"))
            elif image.suffix == ".bmp":
                image_reader = tf.image.decode_bmp(file_reader, name="bmp_reader")
            else:
                image_reader = tf.image.decode_jpeg(file_reader, channels=3, name="jpeg_reader")
            float_caster = tf.cast(image_reader, tf.float32)
            dims_expander = tf.expand_dims(float_caster, 0)
            resized = tf1.image.resize_bilinear(dims_expander, [int(preprocessing["input_height"]),
                                                                int(preprocessing["input_width"])])
            self.normalized = tf.divide(tf.subtract(resized, [float(preprocessing["input_mean"])]),
                                        [float(preprocessing["input_std"])])
        self.session = tf1.Session(graph=graph)

    def preprocess(self) -> np.ndarray:
        return self.session.run(self.normalized, {self.file_name: self.image})

    def run(self) -> np.ndarray:
        return self.plain.run(self.preprocess())


def plain_cold(path: Path, batch: np.ndarray) -> tuple[PlainGraph, float, float]:
    """Read + parse + import + Session, then the first run: the graph and both durations."""
    started = time.perf_counter()
    plain = PlainGraph(path)
    loaded = time.perf_counter()
    plain.run(batch)
    return plain, loaded - started, time.perf_counter() - loaded


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# --------------------------------------------------------------------------
# Measurements.
# --------------------------------------------------------------------------

@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.seconds.append(seconds)

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p90(self) -> float:
        return float(np.percentile(self.seconds, 90))

    def ms(self) -> str:
        return f"p50 {self.p50 * 1000:7.1f} ms  p90 {self.p90 * 1000:7.1f} ms  (n={len(self.seconds)})"


@dataclass
class Cold:
    version: int
    server_s: float
    server_load_ms: float
    server_inference_ms: float
    plain_load_s: float
    plain_first_run_s: float

    @property
    def plain_s(self) -> float:
        return self.plain_load_s + self.plain_first_run_s


def measure_cold(client: LabelClient, versions: list[int], paths: list[Path], batch: np.ndarray,
                 plains: dict[int, PlainGraph]) -> list[Cold]:
    """First :label of each version, then the plain cold cost of the same graph, one after the other."""
    results = []
    for version, path in zip(versions, paths):
        server_s, answer = client.label(version)
        plains[version], plain_load_s, plain_first_run_s = plain_cold(path, batch)
        timing = answer["timing_ms"]
        results.append(Cold(version, server_s, timing["load"], timing["inference"], plain_load_s,
                            plain_first_run_s))
    return results


@dataclass
class Warm:
    model: str
    http: Samples
    plain: Samples
    server_ms: dict[str, list[float]]
    model_only: Samples  # the model's Session.run alone, on the preprocessed tensor (for information)

    @property
    def ratio(self) -> float:
        return self.http.p50 / self.plain.p50

    @property
    def outside_ms(self) -> float:
        """HTTP, Flask, resolving and JSON: the client's p50 less the server's own median total."""
        return self.http.p50 * 1000 - statistics.median(self.server_ms["total"])


def measure_warm(client: LabelClient, version: int, label_image: LabelImage, model: str = "Inception-v3-sized",
                 samples: int = LABEL_SAMPLES) -> Warm:
    """Warm both up, then alternate one HTTP :label and one run of label_image.py's two steps (order
    swapped every round)."""
    tensor = label_image.preprocess()
    for _ in range(WARM_UP):
        client.label(version)
        label_image.run()
    http, base, model_only = Samples(), Samples(), Samples()
    server_ms: dict[str, list[float]] = {"preprocess": [], "inference": [], "total": []}

    def sample_http() -> None:
        seconds, answer = client.label(version)
        http.add(seconds)
        for key, values in server_ms.items():
            values.append(answer["timing_ms"][key])

    def sample_plain() -> None:
        base.add(timed(label_image.run))
        model_only.add(timed(lambda: label_image.plain.run(tensor)))

    for i in range(samples):
        for step in (sample_http, sample_plain) if i % 2 == 0 else (sample_plain, sample_http):
            step()
    return Warm(model, http, base, server_ms, model_only)


@dataclass
class Compare:
    http: Samples
    plain: dict[int, Samples]
    server_latency_ms: dict[int, list[float]]
    preprocess_ms: list[float]

    @property
    def plain_sum(self) -> float:
        return sum(s.p50 for s in self.plain.values())

    @property
    def ratio(self) -> float:
        return self.http.p50 / self.plain_sum


def measure_compare(client: LabelClient, versions: list[int], plains: dict[int, PlainGraph],
                    batch: np.ndarray) -> Compare:
    for _ in range(max(2, WARM_UP // 2)):
        client.compare(versions)
        for version in versions:
            plains[version].run(batch)
    http = Samples()
    base = {v: Samples() for v in versions}
    latency: dict[int, list[float]] = {v: [] for v in versions}
    preprocess_ms: list[float] = []
    for _ in range(COMPARE_SAMPLES):
        seconds, answer = client.compare(versions)
        http.add(seconds)
        preprocess_ms.append(answer["timing_ms"]["preprocess"])
        for entry in answer["versions"]:
            latency[entry["version"]].append(entry["latency_ms"])
        for version in versions:
            base[version].add(timed(lambda: plains[version].run(batch)))
    return Compare(http, base, latency, preprocess_ms)


@dataclass
class Throughput:
    plain_images_s: dict[int, float]
    server_images_s: float
    requests: int
    errors: list[str]
    latency: Samples
    inference_ms: list[float]

    @property
    def best_plain(self) -> tuple[int, float]:
        size = max(self.plain_images_s, key=self.plain_images_s.get)
        return size, self.plain_images_s[size]

    @property
    def ratio(self) -> float:
        return self.server_images_s / self.best_plain[1]


def plain_batched(plain: PlainGraph, batch: np.ndarray) -> dict[int, float]:
    """Images/s of plain Session.run per batch size (one warm-up run per size)."""
    result = {}
    for size in BATCH_SIZES:
        images = np.repeat(batch, size, axis=0)
        plain.run(images)
        runs = max(3, MIN_BATCH_IMAGES // size)
        seconds = sum(timed(lambda: plain.run(images)) for _ in range(runs))
        result[size] = runs * size / seconds
    return result


@dataclass
class ClientRun:
    seconds: float
    latency: Samples
    inference_ms: list[float]
    errors: list[str]


def concurrent_clients(url: str, jpeg: bytes, version: int, clients: int, per_client: int) -> ClientRun:
    """``clients`` threads, each with its own connection, send ``per_client`` :label requests in a row."""
    start = threading.Barrier(clients + 1)
    latency, inference_ms, errors = Samples(), [], []
    lock = threading.Lock()

    def client_thread() -> None:
        client = LabelClient(url, jpeg)
        start.wait()
        for _ in range(per_client):
            try:
                seconds, answer = client.label(version)
            except Exception as exc:  # noqa: BLE001 - every failure counts as an error
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                latency.add(seconds)
                inference_ms.append(answer["timing_ms"]["inference"])

    threads = [threading.Thread(target=client_thread) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return ClientRun(time.perf_counter() - started, latency, inference_ms, errors)


def measure_throughput(url: str, jpeg: bytes, version: int, plain: PlainGraph, batch: np.ndarray) -> Throughput:
    """Plain sweeps before and after the clients (the better of the two per batch size), the clients between."""
    before = plain_batched(plain, batch)
    concurrent_clients(url, jpeg, version, CLIENTS, 2)  # warm-up: the batch shapes the server will see
    run = concurrent_clients(url, jpeg, version, CLIENTS, REQUESTS_PER_CLIENT)
    after = plain_batched(plain, batch)
    plain_rates = {size: max(before[size], after[size]) for size in BATCH_SIZES}
    done = len(run.latency.seconds)
    return Throughput(plain_rates, done / run.seconds, CLIENTS * REQUESTS_PER_CLIENT, run.errors, run.latency,
                      run.inference_ms)


def predictions_match(client: LabelClient, versions: list[int], plains: dict[int, PlainGraph],
                      batch: np.ndarray) -> dict[int, bool]:
    """The server's top-k indices and scores equal the plain run's, per version."""
    result = {}
    for version in versions:
        _, answer = client.label(version)
        scores = plains[version].run(batch).reshape(-1)
        served = answer["predictions"]
        expected = np.argsort(scores, kind="stable")[::-1][:TOP_K]
        result[version] = ([p["index"] for p in served] == [int(i) for i in expected]
                           and all(abs(p["score"] - float(scores[p["index"]])) <= SCORE_TOLERANCE for p in served))
    return result


def versions_differ(plains: dict[int, PlainGraph], batch: np.ndarray) -> tuple[float, dict[int, int]]:
    """The smallest max |score difference| between two versions on the image, and each version's top-1."""
    outputs = {v: p.run(batch).reshape(-1) for v, p in plains.items()}
    scores = list(outputs.values())
    smallest = min(float(np.max(np.abs(a - b))) for i, a in enumerate(scores) for b in scores[i + 1:])
    return smallest, {v: int(np.argmax(o)) for v, o in outputs.items()}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def inference_workers(parent: int) -> list[int]:
    """The server's inference worker processes (where the graphs are loaded)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and b"registry.serving.inference" in (entry / "cmdline").read_bytes()
                    and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def server_rss_mb(pid: int) -> float:
    """The server's resident memory plus its inference workers'."""
    return rss_mb(pid) + sum(rss_mb(worker) for worker in inference_workers(pid))


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------

def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ms"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


@dataclass
class Results:
    first: Cold
    cold: list[Cold]
    warm: Warm
    warm_small: Warm
    warm_threaded: list[Warm]  # the same on registry serve's threaded server, for comparison
    compare: Compare
    throughput: Throughput
    matches: dict[int, bool]
    min_diff: float
    top1: dict[int, int]
    server_rss_mb: float

    @property
    def label_ok(self) -> bool:
        return self.warm.ratio <= TARGET_LABEL_RATIO and self.warm_small.ratio <= TARGET_LABEL_RATIO

    @property
    def compare_ok(self) -> bool:
        return self.compare.ratio <= TARGET_COMPARE_RATIO

    @property
    def throughput_ok(self) -> bool:
        return not self.throughput.errors and self.throughput.ratio >= TARGET_THROUGHPUT_RATIO

    @property
    def checks_ok(self) -> bool:
        return all(self.matches.values()) and self.min_diff > 0

    @property
    def passed(self) -> bool:
        return self.label_ok and self.compare_ok and self.throughput_ok and self.checks_ok


def print_cold(first: Cold, cold: list[Cold]) -> None:
    print_rows("cold: first request for a version not loaded yet", [
        (f"server's first :label (v{first.version}, TF import)",
         f"{first.server_s * 1000:.0f} ms (load {first.server_load_ms:.0f} ms) - plain cold in this process "
         f"{first.plain_s * 1000:.0f} ms (for information)"),
        *[(f"v{c.version} :label over HTTP", f"{c.server_s * 1000:.0f} ms (load {c.server_load_ms:.0f} ms, "
           f"first run {c.server_inference_ms:.0f} ms)") for c in cold],
        *[(f"v{c.version} plain", f"{c.plain_s * 1000:.0f} ms (read+parse+import+Session "
           f"{c.plain_load_s * 1000:.0f} ms, first run {c.plain_first_run_s * 1000:.0f} ms); "
           f"ratio HTTP / plain {c.server_s / c.plain_s:.2f}") for c in cold],
    ])


def print_warm(warms: list[Warm], targets: int = 1) -> None:
    """The first ``targets`` measurements are held to the targets (gunicorn); the rest are for comparison."""
    for warm in warms:
        print_rows(f"warm :label on the {warm.model} model, batch 1, {len(warm.http.seconds)} interleaved "
                   "samples each", [
            (f"HTTP :label ({IMAGE_WIDTH}x{IMAGE_HEIGHT} JPEG)", warm.http.ms()),
            ("label_image.py's two Session.runs", warm.plain.ms()),
            ("  the model's Session.run alone", warm.model_only.ms() + "  (for information)"),
            ("server timing_ms, medians", f"preprocess {median_ms(warm.server_ms['preprocess'])}, inference "
                                          f"(decode to scores, one run) {median_ms(warm.server_ms['inference'])}, "
                                          f"total {median_ms(warm.server_ms['total'])}"),
            ("outside LabelService.label", f"{warm.outside_ms:.2f} ms (HTTP, Flask, resolve, JSON; p50 less the "
                                           f"server's median total; issue 14 asks < {TARGET_OUTSIDE_MS} ms)"),
        ])
    print_rows("warm :label ratios, p50 HTTP / label_image.py's two steps, side by side", [
        (warm.model, f"{warm.ratio:.3f}  (target <= {TARGET_LABEL_RATIO})  {verdict(warm.ratio <= TARGET_LABEL_RATIO)}"
         if i < targets else f"{warm.ratio:.3f}  (for comparison)") for i, warm in enumerate(warms)])


def print_compare(compare: Compare, ok: bool) -> None:
    latencies = ", ".join(f"v{v} {median_ms(ms)}" for v, ms in compare.server_latency_ms.items())
    print_rows(f":compare of {len(compare.plain)} versions, one image, {COMPARE_SAMPLES} samples", [
        ("HTTP :compare", compare.http.ms()),
        *[(f"plain Session.run v{v}", s.ms()) for v, s in compare.plain.items()],
        ("sum of plain p50s", f"{compare.plain_sum * 1000:.1f} ms"),
        ("server latency_ms, medians", f"{latencies}; preprocess {median_ms(compare.preprocess_ms)}"),
        ("ratio p50 / sum", f"{compare.ratio:.3f}  (target <= {TARGET_COMPARE_RATIO})  {verdict(ok)}"),
    ])


def print_throughput(throughput: Throughput, ok: bool) -> None:
    size, best = throughput.best_plain
    answered = len(throughput.latency.seconds)
    print_rows(f"throughput: {CLIENTS} concurrent clients x {REQUESTS_PER_CLIENT} :label requests", [
        *[(f"plain Session.run, batch {b}", f"{r:.2f} images/s") for b, r in throughput.plain_images_s.items()],
        ("best plain", f"{best:.2f} images/s (batch {size})"),
        (f"HTTP :label, {CLIENTS} clients", f"{throughput.server_images_s:.2f} images/s, "
                                           f"{answered}/{throughput.requests} answered, "
                                           f"{len(throughput.errors)} errors"),
        ("request latency", throughput.latency.ms() if answered else "-"),
        ("server inference_ms, median", median_ms(throughput.inference_ms) if answered else "-"),
        ("ratio server / best plain", f"{throughput.ratio:.3f}  (target >= {TARGET_THROUGHPUT_RATIO}, no errors)  "
                                      f"{verdict(ok)}"),
        *[("error", e) for e in throughput.errors[:5]],
    ])


def report(results: Results, loads: tuple[str, str], runtime: float) -> None:
    print_cold(results.first, results.cold)
    print_warm([results.warm, results.warm_small, *results.warm_threaded], targets=2)
    print_compare(results.compare, results.compare_ok)
    print_throughput(results.throughput, results.throughput_ok)
    print_rows("checks", [
        ("server top-5 == plain top-5", ", ".join(f"v{v} {'yes' if ok else 'NO'}"
                                                  for v, ok in results.matches.items())),
        ("versions differ", f"min max|score diff| between versions {results.min_diff:.3g}; top-1 "
                            + ", ".join(f"v{v} {i}" for v, i in results.top1.items())),
        (f"server + inference workers RSS, {len(results.top1)} versions loaded", f"{results.server_rss_mb:.0f} MB"),
        ("load average (1, 5, 15 min)", f"{loads[0]} (start), {loads[1]} (end)"),
        ("runtime", f"{runtime:.0f} s"),
        ("result", verdict(results.passed)),
    ])


def measure(server: Server, gunicorn: RegistryServer, models: list[ModelFiles], labels: Path, jpeg: bytes,
            scratch: Path) -> Results:
    """Push, pull, then every measurement, in an order that keeps each version cold until its first request."""
    registry = RegistryClient(server.url)
    paths = push_and_pull(registry, models, labels, scratch)
    versions = [int(p.stem[1:]) for p in paths]
    p = registry.get_version(MODEL_NAME, str(versions[0]))["preprocessing"]
    batch = preprocess(jpeg, int(p["input_height"]), int(p["input_width"]), float(p["input_mean"]),
                       float(p["input_std"]))
    client = LabelClient(server.url, jpeg)
    plains: dict[int, PlainGraph] = {}
    print("measuring cold requests ...", flush=True)
    first, *cold = measure_cold(client, versions, paths, batch, plains)
    print("measuring warm :label ...", flush=True)
    label_image = LabelImage(plains[versions[0]], WORK / "image.jpg", p)
    warm = measure_warm(LabelClient(gunicorn.url, jpeg), versions[0], label_image, "Inception-v3-sized, gunicorn")
    warm_threaded = measure_warm(client, versions[0], label_image, "Inception-v3-sized, registry serve")
    print("measuring :compare ...", flush=True)
    compare = measure_compare(client, versions, plains, batch)
    print("measuring throughput ...", flush=True)
    throughput = measure_throughput(server.url, jpeg, versions[0], plains[versions[0]], batch)
    matches = predictions_match(client, versions, plains, batch)
    min_diff, top1 = versions_differ(plains, batch)
    rss = server_rss_mb(server.process.pid)  # before the small CNN: three Inception-sized versions loaded
    print("measuring warm :label on the small CNN ...", flush=True)
    warm_small, small_threaded = measure_small(registry, [gunicorn.url, server.url], jpeg, scratch)
    return Results(first, cold, warm, warm_small, [warm_threaded, small_threaded], compare, throughput, matches,
                   min_diff, top1, rss)


def measure_small(registry: RegistryClient, urls: list[str], jpeg: bytes, scratch: Path) -> list[Warm]:
    """Push the small CNN's frozen graph, pull it back, then the warm :label measurement on it through
    each server in ``urls`` (gunicorn, then registry serve's threaded server)."""
    record = registry.push(SMALL_NAME, [("frozen", ensure_small_cnn())], {"output_nodes": "output"})
    record = registry.wait(SMALL_NAME, record["version"], timeout=300)
    if record["status"] != "ready":
        raise RuntimeError(f"the small CNN is {record['status']}: {record['status_message']}")
    path = scratch / "small.pb"
    registry.pull(SMALL_NAME, str(record["version"]), path)
    label_image = LabelImage(PlainGraph(path, "input:0", "output:0"), WORK / "image.jpg",
                             registry.get_version(SMALL_NAME, str(record["version"]))["preprocessing"])
    warms = []
    for url, server in zip(urls, ("gunicorn", "registry serve")):
        client = LabelClient(url, jpeg, SMALL_NAME)
        client.label(record["version"])  # load it
        warms.append(measure_warm(client, record["version"], label_image,
                                  f"small CNN ({SMALL_SIZE}x{SMALL_SIZE}), {server}", samples=4 * LABEL_SAMPLES))
    return warms


def small_only() -> int:
    """``--small-only``: just the small CNN's warm :label against label_image.py (a minute, no Inception)."""
    WORK.mkdir(parents=True, exist_ok=True)
    jpeg = ensure_jpeg().read_bytes()
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    try:
        with Server(scratch / "home") as server, Gunicorn(scratch / "home") as gunicorn:
            warm, threaded = measure_small(RegistryClient(server.url), [gunicorn.url, server.url], jpeg, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_warm([warm, threaded], targets=1)
    return 0 if warm.ratio <= TARGET_LABEL_RATIO else 1


def main() -> int:
    if "--small-only" in sys.argv[1:]:
        return small_only()
    started = time.perf_counter()
    load_start = load_average()
    WORK.mkdir(parents=True, exist_ok=True)
    models = ensure_models()
    labels, jpeg = ensure_labels(), ensure_jpeg().read_bytes()
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    try:
        with Server(scratch / "home") as server, Gunicorn(scratch / "home") as gunicorn:
            print(f"server on {server.url} (gunicorn on {gunicorn.url}), REGISTRY_HOME {server.home}; pushing "
                  f"{len(models)} versions ...", flush=True)
            results = measure(server, gunicorn, models, labels, jpeg, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(results, (load_start, load_average()), time.perf_counter() - started)
    return 0 if results.passed else 1


if __name__ == "__main__":
    sys.exit(main())
