"""Real TensorFlow graphs and checkpoints, built at test time.

Each builder trains nothing: it initialises a small CNN with seeded random
values, saves a real checkpoint with ``tf.compat.v1.train.Saver``, and records
what the checkpoint-restored graph outputs on a fixed input, so that tests can
check a frozen graph against the checkpoint it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1
INPUT_SHAPE = (2, 8, 8, 3)
CLASSES = 5
OUTPUT = "predictions/Softmax"


@dataclass
class BuiltModel:
    prefix: Path  # checkpoint prefix: <dir>/model.ckpt
    output: str
    test_input: np.ndarray
    expected: np.ndarray  # what the checkpoint-restored graph outputs on test_input
    inference_graph: Path | None = None
    frozen_graph: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def meta(self) -> Path:
        return Path(f"{self.prefix}.meta")

    @property
    def index(self) -> Path:
        return Path(f"{self.prefix}.index")

    @property
    def data(self) -> list[Path]:
        return sorted(self.prefix.parent.glob(f"{self.prefix.name}.data-*"))


def _cnn(x, *, resource: bool, dropout: bool, width: int = 4, devices: tuple[str, str] | None = None):
    """conv → batch norm → relu → [dropout] → dense → softmax."""
    first, second = devices or (None, None)
    with tf.device(first):
        with tf1.variable_scope("conv1"):
            w = tf1.get_variable("weights", [3, 3, 3, width], use_resource=resource)
            b = tf1.get_variable("biases", [width], use_resource=resource,
                                 initializer=tf1.random_uniform_initializer(-0.1, 0.1))
            y = tf.nn.conv2d(x, w, [1, 1, 1, 1], "SAME") + b
        with tf1.variable_scope("bn1"):
            mean = tf1.get_variable("moving_mean", [width], use_resource=resource, trainable=False,
                                    initializer=tf1.random_uniform_initializer(-0.1, 0.1))
            var = tf1.get_variable("moving_variance", [width], use_resource=resource, trainable=False,
                                   initializer=tf1.random_uniform_initializer(0.5, 1.5))
            y = tf.nn.relu(tf.nn.batch_normalization(y, mean, var, None, None, 1e-3))
    with tf.device(second):
        y = tf.reshape(y, [-1, 8 * 8 * width])
        if dropout:
            y = tf1.nn.dropout(y, rate=0.5)
        with tf1.variable_scope("logits"):
            w2 = tf1.get_variable("weights", [8 * 8 * width, CLASSES], use_resource=resource)
            logits = tf.matmul(y, w2)
    with tf1.variable_scope("predictions"):
        return logits, tf.nn.softmax(logits, name="Softmax")


def _test_input(seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).random(INPUT_SHAPE, dtype=np.float32)


def build_checkpoint(
    directory: Path, *, resource: bool, shards: int = 1, inference_graph: str | None = None,
    seed: int = 1, width: int = 4, saver_names=None, dropout: bool = False,
) -> BuiltModel:
    """A training graph with a train op, saved as a checkpoint (+ .meta).

    ``inference_graph`` = "binary" or "text" also writes the inference graph
    (no dropout) as a GraphDef, as export_inference_graph.py does.
    ``dropout`` puts an unseeded dropout in the training graph.
    """
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "model.ckpt"
    test_input = _test_input()
    devices = ("/cpu:0", "/cpu:1") if shards > 1 else None
    graph = tf.Graph()
    with graph.as_default():
        if not dropout:
            tf1.set_random_seed(seed)
        x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        labels = tf1.placeholder(tf.int64, [None], name="labels")
        logits, _ = _cnn(x, resource=resource, dropout=dropout, width=width, devices=devices)
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
        tf1.train.GradientDescentOptimizer(0.01).minimize(loss, name="train")
        var_list = saver_names(tf1.global_variables()) if saver_names else None
        saver = tf1.train.Saver(var_list=var_list, sharded=shards > 1)
        config = tf1.ConfigProto(device_count={"CPU": max(shards, 1)})
        with tf1.Session(graph=graph, config=config) as session:
            session.run(tf1.global_variables_initializer())
            saver.save(session, str(prefix))
    # What the checkpoint computes, through an inference graph restored by TF itself.
    inference = tf.Graph()
    with inference.as_default():
        x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        _cnn(x, resource=resource, dropout=False, width=width)
        var_list = saver_names(tf1.global_variables()) if saver_names else None
        saver = tf1.train.Saver(var_list=var_list)
        with tf1.Session(graph=inference) as session:
            saver.restore(session, str(prefix))
            expected = session.run(OUTPUT + ":0", {"input:0": test_input})
        graph_path = None
        if inference_graph:
            name = "inference_graph.pbtxt" if inference_graph == "text" else "inference_graph.pb"
            tf.io.write_graph(inference.as_graph_def(), str(directory), name, as_text=inference_graph == "text")
            graph_path = directory / name
    return BuiltModel(prefix=prefix, output=OUTPUT, test_input=test_input, expected=expected,
                      inference_graph=graph_path)


def build_frozen(directory: Path, *, seed: int = 3) -> BuiltModel:
    """An already-frozen GraphDef, made with TensorFlow's own convert_variables_to_constants."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        _cnn(x, resource=False, dropout=False)
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            test_input = _test_input()
            expected = session.run(OUTPUT + ":0", {"input:0": test_input})
            frozen = tf1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), [OUTPUT])
    path = directory / "frozen.pb"
    path.write_bytes(frozen.SerializeToString())
    return BuiltModel(prefix=directory / "none", output=OUTPUT, test_input=test_input, expected=expected,
                      frozen_graph=path)


def build_hostile_frozen(directory: Path, target: Path, *, in_function: bool = False) -> Path:
    """A frozen graph whose output depends on writing ``target`` (top level or inside a function)."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4], name="input")
        if in_function:
            @tf.function
            def leak(v):
                tf.io.write_file(str(target), tf.strings.as_string(tf.reduce_sum(v)))
                return v * 2.0
            y = leak(x)
        else:
            write = tf.io.write_file(str(target), tf.strings.as_string(tf.reduce_sum(x)))
            with tf.control_dependencies([write]):
                y = x * 2.0
        tf.identity(y, name="output")
    path = directory / ("hostile_fn.pb" if in_function else "hostile.pb")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def run_frozen(path: Path, output: str, test_input: np.ndarray, *, input_name: str = "input") -> np.ndarray:
    """Load a frozen .pb the way label_image.py does and run it."""
    graph_def = tf1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf1.Session(graph=graph) as session:
        return session.run(output + ":0", {f"{input_name}:0": test_input})


def build_embedding(directory: Path) -> BuiltModel:
    """Token ids → embedding lookup on a resource variable (ResourceGather) → softmax."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "model.ckpt"
    ids = np.array([[1, 2, 3], [0, 4, 4]], dtype=np.int32)
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(11)
        x = tf1.placeholder(tf.int32, [None, 3], name="input")
        table = tf1.get_variable("embedding", [5, 4], use_resource=True)
        pooled = tf.reduce_mean(tf.nn.embedding_lookup(table, x), axis=1)
        w = tf1.get_variable("dense", [4, CLASSES], use_resource=True)
        tf.nn.softmax(tf.matmul(pooled, w), name="probs")
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            expected = session.run("probs:0", {"input:0": ids})
            tf1.train.Saver().save(session, str(prefix))
    return BuiltModel(prefix=prefix, output="probs", test_input=ids, expected=expected)


def _reads(source: Path, x):
    """``x * 2`` plus the length of the file at ``source``: the output depends on reading it."""
    content = tf.io.read_file(str(source))
    return x * 2.0 + tf.cast(tf.strings.length(content), tf.float32)


def build_reading_frozen(directory: Path, source: Path, *, in_function: bool = False) -> Path:
    """A frozen graph (input [None, 4] → output) whose output reads ``source`` with ReadFile,
    at top level or inside a tf.function body (the graph's function library)."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4], name="input")
        y = tf.function(lambda v: _reads(source, v))(x) if in_function else _reads(source, x)
        tf.identity(y, name="output")
    path = directory / ("reads_fn.pb" if in_function else "reads.pb")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def build_python_frozen(directory: Path, callback, *, eager: bool) -> tuple[Path, tf.Graph]:
    """A frozen graph whose output goes through Python: tf.numpy_function (PyFunc) or, with
    ``eager``, tf.py_function (EagerPyFunc).  The GraphDef names ``callback`` by a token of this
    process; the returned graph keeps it registered, so a process that ran the graph here would
    call it."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4], name="input")
        wrap = tf.py_function if eager else tf.numpy_function
        y = wrap(callback, [x], tf.float32)
        tf.identity(tf.reshape(y, [-1, 4]), name="output")
    path = directory / ("py_function.pb" if eager else "numpy_function.pb")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path, graph


def build_reading_checkpoint(directory: Path, source: Path) -> BuiltModel:
    """A checkpoint (+ .meta) of a graph whose output reads ``source``: verifying the freeze
    would have to run that ReadFile."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "model.ckpt"
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(13)
        x = tf1.placeholder(tf.float32, [None, 4], name="input")
        w = tf1.get_variable("weights", [4, 4], use_resource=True)
        tf.identity(_reads(source, tf.matmul(x, w)), name="output")
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())  # runs the initialisers only, never ReadFile
            tf1.train.Saver().save(session, str(prefix))
    return BuiltModel(prefix=prefix, output="output", test_input=np.ones((1, 4), np.float32),
                      expected=np.zeros((1, 4), np.float32))


def build_large_frozen(directory: Path, megabytes: int) -> Path:
    """A valid frozen graph carrying a constant of about ``megabytes`` MB."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4], name="input")
        rows = megabytes * 1024 * 1024 // 16
        table = tf.constant(np.random.default_rng(5).random((rows, 4), dtype=np.float32))
        tf.identity(x + tf.reduce_sum(table, axis=0), name="output")
    path = directory / f"large-{megabytes}mb.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def build_slow_frozen(directory: Path) -> Path:
    """A frozen graph whose running time the caller picks: ``output = input * n`` where n
    is counted up by a while loop of ``iterations`` steps (an optional input, default 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 1], name="input")
        iterations = tf1.placeholder_with_default(tf.constant(1, tf.int64), [], name="iterations")
        counted = tf1.while_loop(lambda i: i < iterations, lambda i: i + 1, [tf.constant(0, tf.int64)])
        tf.multiply(x, tf.cast(counted, tf.float32), name="output")
    path = directory / "slow.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path
