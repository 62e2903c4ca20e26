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


# -- Inception-shaped classifiers: a prediction head and an auxiliary head ------------------------

INCEPTION_OUTPUT = "InceptionV3/Predictions/Reshape_1"
INCEPTION_AUX = "InceptionV3/AuxLogits/SpatialSqueeze"
INCEPTION_CLASSES = 7
INCEPTION_SIZE = 32


def _slim_conv(x, scope: str, depth: int, kernel: int, stride: int = 1, padding: str = "SAME", *,
               logits: bool = False):
    """TF-slim's conv2d as inception_v3_arg_scope sets it up, with its variable names: weights,
    then batch norm without scale (moving averages, inference) and relu; a logits layer has
    biases instead (and larger weights, so that the classes' scores are well apart)."""
    def variable(name: str, shape, low: float, high: float, trainable: bool = True):
        return tf1.get_variable(name, shape, use_resource=False, trainable=trainable,
                                initializer=tf1.random_uniform_initializer(low, high))

    with tf1.variable_scope(scope):
        spread = tf1.random_normal_initializer(stddev=1.0) if logits else None
        weights = tf1.get_variable("weights", [kernel, kernel, x.shape[-1], depth], use_resource=False,
                                   initializer=spread)
        y = tf.nn.conv2d(x, weights, [1, stride, stride, 1], padding)
        if logits:
            return tf.nn.bias_add(y, variable("biases", [depth], -0.1, 0.1))
        with tf1.variable_scope("BatchNorm"):
            beta = variable("beta", [depth], -0.1, 0.1)
            mean = variable("moving_mean", [depth], -0.1, 0.1, trainable=False)
            variance = variable("moving_variance", [depth], 0.5, 1.5, trainable=False)
            y, _, _ = tf1.nn.fused_batch_norm(y, tf.ones([depth]), beta, mean, variance, epsilon=1e-3,
                                              is_training=False)
        return tf.nn.relu(y)


def _mixed(x, scope: str, depth: int = 8):
    """An Inception block: 1x1, 1x1 → 3x3 and avg pool → 1x1 branches, concatenated."""
    with tf1.variable_scope(scope):
        with tf1.variable_scope("Branch_0"):
            b0 = _slim_conv(x, "Conv2d_0a_1x1", depth, 1)
        with tf1.variable_scope("Branch_1"):
            b1 = _slim_conv(_slim_conv(x, "Conv2d_0a_1x1", depth, 1), "Conv2d_0b_3x3", depth, 3)
        with tf1.variable_scope("Branch_2"):
            b2 = _slim_conv(tf.nn.avg_pool2d(x, 3, 1, "SAME", name="AvgPool_0a_3x3"), "Conv2d_0b_1x1", depth, 1)
        return tf.concat([b0, b1, b2], 3, name="concat")


def _reduction(x, scope: str, depth: int = 8):
    """An Inception grid reduction: a stride-2 3x3 conv beside a stride-2 max pool."""
    with tf1.variable_scope(scope):
        with tf1.variable_scope("Branch_0"):
            b0 = _slim_conv(x, "Conv2d_1a_3x3", depth, 3, 2)
        with tf1.variable_scope("Branch_1"):
            b1 = tf.nn.max_pool2d(x, 3, 2, "SAME", name="MaxPool_1a_3x3")
        return tf.concat([b0, b1], 3, name="concat")


def inception_network(x, *, aux_scope: str = "AuxLogits", classes: int = INCEPTION_CLASSES):
    """inception_v3(is_training=False) in miniature, with plain tf.compat.v1 ops: a conv trunk
    (Mixed_5b, Mixed_6a, Mixed_6e, Mixed_7a..7c), an auxiliary head branching off after Mixed_6e
    and ending in SpatialSqueeze, and the main head Logits → Predictions/Softmax → Reshape_1
    (reshaped back to the logits' shape, as slim.softmax does).  Returns (predictions, aux logits)."""
    with tf1.variable_scope("InceptionV3"):
        net = _slim_conv(x, "Conv2d_1a_3x3", 8, 3, 2)                   # 16x16
        net = _mixed(net, "Mixed_5b")
        net = _reduction(net, "Mixed_6a")                                # 8x8
        net = _mixed(net, "Mixed_6e")
        with tf1.variable_scope(aux_scope):
            aux = tf.nn.avg_pool2d(net, 5, 3, "VALID", name="AvgPool_1a_5x5")  # 2x2
            aux = _slim_conv(aux, "Conv2d_1b_1x1", 8, 1)
            aux = _slim_conv(aux, "Conv2d_2a_5x5", 16, 2, padding="VALID")  # 1x1
            aux = _slim_conv(aux, "Conv2d_2b_1x1", classes, 1, logits=True)
            aux = tf.squeeze(aux, [1, 2], name="SpatialSqueeze")
        net = _reduction(net, "Mixed_7a")                                # 4x4
        net = _mixed(net, "Mixed_7b")
        net = _mixed(net, "Mixed_7c")
        with tf1.variable_scope("Logits"):
            net = tf.nn.avg_pool2d(net, 4, 1, "VALID", name="AvgPool_1a_4x4")
            net = tf.identity(net, name="Dropout_1b/Identity")  # slim.dropout at inference
            logits = _slim_conv(net, "Conv2d_1c_1x1", classes, 1, logits=True)
            logits = tf.squeeze(logits, [1, 2], name="SpatialSqueeze")
        with tf1.variable_scope("Predictions"):
            softmax = tf.nn.softmax(tf.reshape(logits, [-1, classes]), name="Softmax")
            predictions = tf.reshape(softmax, tf.shape(logits), name="Reshape_1")
    return predictions, aux


def inception_graph_def(*, aux_scope: str = "AuxLogits") -> tf1.GraphDef:
    """The inference GraphDef of the miniature Inception (variables uninitialised), as
    export_inference_graph.py writes it."""
    graph = tf.Graph()
    with graph.as_default():
        inception_network(tf1.placeholder(tf.float32, [None, INCEPTION_SIZE, INCEPTION_SIZE, 3], name="input"),
                          aux_scope=aux_scope)
    return graph.as_graph_def()


def build_inception(directory: Path, *, seed: int = 17) -> BuiltModel:
    """The miniature Inception as TF-slim's scripts leave it: a checkpoint (+ .meta) of a training
    graph whose loss reads both heads (0.4 × the auxiliary loss, as train_image_classifier.py
    weighs it), and the inference graph with both heads.  ``frozen_graph`` is TensorFlow's own
    freeze of both heads."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "model.ckpt"
    shape = [None, INCEPTION_SIZE, INCEPTION_SIZE, 3]
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        x = tf1.placeholder(tf.float32, shape, name="input")
        labels = tf1.placeholder(tf.int64, [None], name="labels")
        _, aux = inception_network(x)
        logits = graph.get_tensor_by_name("InceptionV3/Logits/SpatialSqueeze:0")
        loss = (tf1.losses.sparse_softmax_cross_entropy(labels, logits)
                + 0.4 * tf1.losses.sparse_softmax_cross_entropy(labels, aux, scope="aux_loss"))
        tf1.train.GradientDescentOptimizer(0.01).minimize(loss, name="train")
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            tf1.train.Saver().save(session, str(prefix))
    test_input = np.random.default_rng(19).random((2, INCEPTION_SIZE, INCEPTION_SIZE, 3), dtype=np.float32)
    inference = tf.Graph()
    with inference.as_default():
        x = tf1.placeholder(tf.float32, shape, name="input")
        inception_network(x)
        with tf1.Session(graph=inference) as session:
            tf1.train.Saver().restore(session, str(prefix))
            expected = session.run(INCEPTION_OUTPUT + ":0", {x: test_input})
            frozen = tf1.graph_util.convert_variables_to_constants(session, inference.as_graph_def(),
                                                                   [INCEPTION_OUTPUT, INCEPTION_AUX])
    tf.io.write_graph(inference.as_graph_def(), str(directory), "inference_graph.pb", as_text=False)
    (directory / "both_heads_frozen.pb").write_bytes(frozen.SerializeToString())
    return BuiltModel(prefix=prefix, output=INCEPTION_OUTPUT, test_input=test_input, expected=expected,
                      inference_graph=directory / "inference_graph.pb",
                      frozen_graph=directory / "both_heads_frozen.pb")


def two_head_graph_def(*, branch: str = "end", second_classes: int = CLASSES, two_inputs: bool = False,
                       second_scope: str = "second") -> tf1.GraphDef:
    """An inference GraphDef with two genuine outputs, ``first/probs`` and ``<second_scope>/scores``.

    The trunk is a conv and two residual blocks.  ``branch`` = "end": both heads hang off
    the trunk's last node (the first through slim.softmax's Reshape, the second through an
    l2-normalisation, whose input feeds two ops); "mid": the second head branches off before
    the residual blocks.  ``two_inputs``: each head has its own input placeholder and trunk."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        with tf1.variable_scope("trunk"):
            block1 = _slim_conv(x, "block1", 4, 3)
            net = block1
            for name in ("unit_1", "unit_2"):
                with tf1.variable_scope(name):
                    net = tf.nn.relu(net + _slim_conv(_slim_conv(net, "conv1", 4, 3), "conv2", 4, 3))
            final = tf.reduce_mean(net, [1, 2], name="pool")
        if two_inputs:
            other = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="other_input")
            with tf1.variable_scope("other_trunk"):
                second_source = tf.reduce_mean(_slim_conv(other, "block1", 4, 3), [1, 2], name="pool")
        elif branch == "mid":
            second_source = tf.reduce_mean(block1, [1, 2], name="early_pool")
        else:
            second_source = final
        with tf1.variable_scope("first"):
            logits = tf.matmul(final, tf1.get_variable("weights", [4, CLASSES], use_resource=False))
            tf.reshape(tf.nn.softmax(tf.reshape(logits, [-1, CLASSES])), tf.shape(logits), name="probs")
        with tf1.variable_scope(second_scope):
            scores = tf.matmul(second_source, tf1.get_variable("weights", [4, second_classes], use_resource=False))
            tf.identity(tf.math.l2_normalize(scores, axis=1), name="scores")
    return graph.as_graph_def()


HALF_PLUS_TWO_SIGNATURES = ("serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x_to_y2",
                            "regress_x2_to_y3")


def build_half_plus_two(export: Path) -> Path:
    """A TF1 SavedModel built the way TF Serving's ``saved_model_half_plus_two.py`` builds its test model
    (written here after reading it): serialized tf.Examples → ParseExample → ``x`` (required) and
    ``x2`` (default 0); ``y = a*x + b``, ``y2 = a*x + c``, ``y3 = a2*x2 + c2`` with a=0.5, b=2, c=3
    in variables; an asset file and an init op that assigns a variable the checkpoint does not hold;
    five signatures: predict ``x→y`` (serving_default), classify ``x→y``, regress ``x→y``,
    regress ``x→y2``, regress ``x2→y3``.  Returns the export folder."""
    graph = tf.Graph()
    assets = export.parent / f"{export.name}-assets"
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "foo.txt").write_text("asset-file-contents")
    with graph.as_default(), tf1.Session(graph=graph) as session:
        a = tf1.Variable(0.5, name="a")
        b = tf1.Variable(2.0, name="b")
        c = tf1.Variable(3.0, name="c")
        serialized = tf1.placeholder(tf.string, name="tf_example", shape=[None])
        parsed = tf1.io.parse_example(serialized, {
            "x": tf1.io.FixedLenFeature([1], dtype=tf.float32),
            "x2": tf1.io.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0]),
        })
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(tf.add(tf.multiply(a, x), b), name="y")
        y2 = tf.identity(tf.add(tf.multiply(a, x), c), name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        a2 = tf1.Variable(0.5, name="a2")
        c2 = tf1.Variable(3.0, name="c2")
        y3 = tf.identity(tf.add(tf.multiply(a2, x2), c2), name="y3")
        asset_path = tf.constant(str(assets / "foo.txt"))
        tf1.add_to_collection(tf1.GraphKeys.ASSET_FILEPATHS, asset_path)
        filename = tf1.Variable("foo.txt", name="filename_tensor", trainable=False, collections=[])
        assign_filename = filename.assign("foo.txt")

        info = tf1.saved_model.utils.build_tensor_info
        build = tf1.saved_model.signature_def_utils.build_signature_def
        constants = tf1.saved_model.signature_constants

        def regression(inputs, outputs):
            return build({constants.REGRESS_INPUTS: info(inputs)}, {constants.REGRESS_OUTPUTS: info(outputs)},
                         constants.REGRESS_METHOD_NAME)

        signatures = {
            "regress_x_to_y": regression(serialized, y),
            "regress_x_to_y2": regression(serialized, y2),
            "regress_x2_to_y3": regression(x2, y3),
            "classify_x_to_y": build({constants.CLASSIFY_INPUTS: info(serialized)},
                                     {constants.CLASSIFY_OUTPUT_SCORES: info(y)}, constants.CLASSIFY_METHOD_NAME),
            "serving_default": build({"x": info(x)}, {"y": info(y)}, constants.PREDICT_METHOD_NAME),
        }
        session.run(tf1.global_variables_initializer())
        builder = tf1.saved_model.Builder(str(export))
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map=signatures,
            assets_collection=tf1.get_collection(tf1.GraphKeys.ASSET_FILEPATHS), main_op=tf.group(assign_filename))
        builder.save()
    return export


def saved_model_signature_defs(export: Path) -> dict:
    """The SignatureDefs of a SavedModel's 'serve' MetaGraph as TF Serving's REST metadata writes them."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((export / "saved_model.pb").read_bytes())
    meta = next(m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags)
    return {name: json_format.MessageToDict(sig, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for name, sig in meta.signature_def.items()}


def build_multi_io(export: Path) -> Path:
    """A TF1 SavedModel with several named inputs and outputs, strings among them: ``serving_default``
    takes ``a`` (float [batch, 2]), ``b`` (float [batch]) and ``text`` (string [batch]) and answers
    ``total = sum(a) + b``, ``echo = text + "!"`` and ``raw_bytes = text + b"\\xff"`` (not UTF-8);
    ``sum_only`` takes ``a`` and ``b`` and answers ``total``."""
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        a = tf1.placeholder(tf.float32, [None, 2], name="a")
        b = tf1.placeholder(tf.float32, [None], name="b")
        text = tf1.placeholder(tf.string, [None], name="text")
        total = tf.identity(tf.reduce_sum(a, axis=1) + b, name="total")
        echo = tf.strings.join([text, tf.constant("!")], name="echo")
        raw = tf.strings.join([text, tf.constant(b"\xff")], name="raw")
        info = tf1.saved_model.utils.build_tensor_info
        build = tf1.saved_model.signature_def_utils.build_signature_def
        signatures = {
            "serving_default": build({"a": info(a), "b": info(b), "text": info(text)},
                                     {"total": info(total), "echo": info(echo), "raw_bytes": info(raw)},
                                     "tensorflow/serving/predict"),
            "sum_only": build({"a": info(a), "b": info(b)}, {"total": info(total)}, "tensorflow/serving/predict"),
        }
        builder = tf1.saved_model.Builder(str(export))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    return export


VOCABULARY_WORDS = ["apple", "banana", "cherry"]
VOCABULARY_CLASSES = ["pome", "berry", "drupe"]


def build_vocabulary_classifier(root: Path) -> Path:
    """An Estimator-style classifier whose vocabularies are files (assets of the SavedModel): the
    categorical feature ``word`` looked up in ``words.txt`` (one out-of-vocabulary bucket), one-hot
    times weights → logits over three classes; the class names read from ``classes.txt`` by line
    number.  Signatures: ``classification`` (classify: ``classes`` [batch, 3] strings, ``scores``
    softmax) and ``serving_default`` (predict: the scores).  Returns the export folder."""
    words, classes_file = root / "words.txt", root / "classes.txt"
    words.write_text("\n".join(VOCABULARY_WORDS) + "\n")
    classes_file.write_text("\n".join(VOCABULARY_CLASSES) + "\n")
    export = root / "vocabulary_classifier"
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf1.placeholder(tf.string, [None], name="input_example_tensor")
        column = tf1.feature_column.categorical_column_with_vocabulary_file("word", str(words), num_oov_buckets=1)
        features = tf1.io.parse_example(serialized, tf1.feature_column.make_parse_example_spec([column]))
        one_hot = tf1.feature_column.input_layer(features, [tf1.feature_column.indicator_column(column)])
        weights = tf1.get_variable("weights", initializer=tf.constant(
            [[2.0, 0.5, -1.0], [0.1, 1.5, 0.2], [-0.5, 0.3, 2.5], [0.0, 0.0, 0.0]]))
        logits = tf.matmul(one_hot, weights, name="logits")
        scores = tf.nn.softmax(logits, name="scores")
        names_path = tf.constant(str(classes_file), name="class_vocabulary/asset_path")
        table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            names_path, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")
        ids = tf.tile(tf.range(len(VOCABULARY_CLASSES), dtype=tf.int64)[None, :], [tf.shape(logits)[0], 1])
        classes = tf.identity(table.lookup(ids), name="classes")
        with tf1.Session(graph=graph) as session:
            session.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
            info = tf1.saved_model.utils.build_tensor_info
            build = tf1.saved_model.signature_def_utils.build_signature_def
            signatures = {
                "classification": build({"inputs": info(serialized)},
                                        {"classes": info(classes), "scores": info(scores)},
                                        "tensorflow/serving/classify"),
                "serving_default": build({"examples": info(serialized)}, {"scores": info(scores)},
                                         "tensorflow/serving/predict"),
            }
            assets = [op.outputs[0] for op in graph.get_operations() if op.name.endswith("/asset_path")]
            builder = tf1.saved_model.Builder(str(export))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures,
                                                 main_op=tf1.tables_initializer(), assets_collection=assets)
            builder.save()
    words.unlink()  # only the SavedModel's own copies remain
    classes_file.unlink()
    return export


def run_signature(export: Path, name: str, feeds: dict) -> dict:
    """What TensorFlow's own loader computes for signature ``name`` of a SavedModel (feeds by input key)."""
    with tf1.Session(graph=tf.Graph()) as session:
        signature = tf1.saved_model.loader.load(session, ["serve"], str(export)).signature_def[name]
        return session.run({k: v.name for k, v in signature.outputs.items()},
                           {signature.inputs[k].name: v for k, v in feeds.items()})


def example(**features) -> bytes:
    """A serialized tf.Example: a str feature as a bytes_list, any other value as a float_list."""
    message = tf.train.Example()
    for key, value in features.items():
        if isinstance(value, str):
            message.features.feature[key].bytes_list.value.append(value.encode())
        else:
            message.features.feature[key].float_list.value.append(value)
    return message.SerializeToString()


EXAMPLE_CLASSES = ["low", "mid", "high"]


def build_example_classifier(export: Path, seed: int) -> Path:
    """A tf.Example classifier: feature ``x`` (2 floats) parsed from serialized examples, softmax of
    ``x·W`` over three classes (W from ``seed``); signatures ``classification`` (classify: ``classes``,
    ``scores``) and ``serving_default`` (predict: the scores)."""
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        serialized = tf1.placeholder(tf.string, [None], name="input_example_tensor")
        features = tf1.io.parse_example(serialized, {"x": tf1.io.FixedLenFeature([2], tf.float32)})
        weights = tf1.Variable(rng.normal(size=(2, 3)).astype(np.float32), name="weights")
        scores = tf.nn.softmax(tf.matmul(features["x"], weights), name="scores")
        classes = tf.tile(tf.constant([EXAMPLE_CLASSES])[:1], [tf.shape(scores)[0], 1], name="classes")
        session.run(tf1.global_variables_initializer())
        info = tf1.saved_model.utils.build_tensor_info
        build = tf1.saved_model.signature_def_utils.build_signature_def
        builder = tf1.saved_model.Builder(str(export))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "classification": build({"inputs": info(serialized)}, {"classes": info(classes), "scores": info(scores)},
                                    "tensorflow/serving/classify"),
            "serving_default": build({"examples": info(serialized)}, {"scores": info(scores)},
                                     "tensorflow/serving/predict")})
        builder.save()
    return export
