"""Freezing speed: the registry's converter against TensorFlow's ``freeze_graph``.

Builds (once, cached under ``benchmarks/.work``) an Inception-v3-sized CNN with
legacy ``VariableV2`` variables, a checkpoint of more than 100 MB and its binary
inference GraphDef, then freezes it with both tools in the same process,
alternating, and compares the median wall-clock times of one whole call each.
Each is also timed once more end to end as a fresh subprocess (TensorFlow
import included).  The two frozen graphs must hold bit-identical constants and
give exactly equal outputs on the same input batch.

Target: ``registry.converter.child.convert`` takes at most 0.5x the time of
``tensorflow.python.tools.freeze_graph.freeze_graph``, with bit-identical
results.  Exits 1 when the target is missed.

Run from the repository root: ``.venv/bin/python benchmarks/freeze_vs_freeze_graph.py``
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import graph_pb2, node_def_pb2  # noqa: E402
from tensorflow.python.framework import tensor_util  # noqa: E402
from tensorflow.python.tools import freeze_graph  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from registry.converter.child import convert  # noqa: E402

TARGET_RATIO = 0.5
MIN_CHECKPOINT_BYTES = 100 * 1000**2
REPETITIONS = 5
SUBPROCESS_REPETITIONS = 3
MODEL_VERSION = 1  # bump when the model below changes, to rebuild the cache
IMAGE_SIZE = 299
NUM_CLASSES = 1001
INPUT_NODE = "input"
OUTPUT_NODE = "InceptionV3/Predictions/Reshape_1"
BN_EPSILON = 1e-3
SEED = 1234

WORK = REPO / "benchmarks" / ".work" / "freeze_vs_freeze_graph"
MODEL_DIR = WORK / "model"
CHECKPOINT_PREFIX = MODEL_DIR / "model.ckpt"
INFERENCE_GRAPH = MODEL_DIR / "inference_graph.pb"
MODEL_INFO = MODEL_DIR / "model.json"  # written last: marks a complete cache
OUT_DIR = WORK / "out"


# --------------------------------------------------------------------------
# The model: Inception-v3's topology, written with tf.compat.v1 and tf.nn.
# --------------------------------------------------------------------------

def _variable(name: str, shape: list[int], initializer) -> tf.Tensor:
    return tf.compat.v1.get_variable(name, shape, tf.float32, initializer, use_resource=False)


def conv_bn(x: tf.Tensor, depth: int, kernel: tuple[int, int], scope: str,
            stride: int = 1, padding: str = "SAME") -> tf.Tensor:
    """Conv2D without bias, inference-mode batch norm, ReLU."""
    channels = x.shape[-1]
    with tf.compat.v1.variable_scope(scope):
        weights = _variable("weights", [*kernel, channels, depth],
                            tf.compat.v1.variance_scaling_initializer(scale=2.0))
        with tf.compat.v1.variable_scope("BatchNorm"):
            gamma = _variable("gamma", [depth], tf.compat.v1.random_uniform_initializer(0.9, 1.1))
            beta = _variable("beta", [depth], tf.compat.v1.random_uniform_initializer(-0.1, 0.1))
            mean = _variable("moving_mean", [depth], tf.compat.v1.random_uniform_initializer(-0.1, 0.1))
            variance = _variable("moving_variance", [depth], tf.compat.v1.random_uniform_initializer(0.9, 1.1))
        y = tf.nn.conv2d(x, weights, strides=[1, stride, stride, 1], padding=padding, name="Conv2D")
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(y, gamma, beta, mean, variance, epsilon=BN_EPSILON,
                                                   is_training=False, name="BatchNorm/FusedBatchNorm")
        return tf.nn.relu(y, name="Relu")


def max_pool(x: tf.Tensor, scope: str, stride: int = 2, padding: str = "VALID") -> tf.Tensor:
    return tf.nn.max_pool2d(x, 3, stride, padding, name=scope)


def avg_pool(x: tf.Tensor, scope: str, size: int = 3, padding: str = "SAME") -> tf.Tensor:
    return tf.nn.avg_pool2d(x, size, 1, padding, name=scope)


def concat(branches: list[tf.Tensor]) -> tf.Tensor:
    return tf.concat(branches, axis=3, name="concat")


def block_35(x: tf.Tensor, scope: str, pool_depth: int) -> tf.Tensor:
    """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and pooled branches."""
    with tf.compat.v1.variable_scope(scope):
        with tf.compat.v1.variable_scope("Branch_0"):
            b0 = conv_bn(x, 64, (1, 1), "Conv2d_0a_1x1")
        with tf.compat.v1.variable_scope("Branch_1"):
            b1 = conv_bn(conv_bn(x, 48, (1, 1), "Conv2d_0a_1x1"), 64, (5, 5), "Conv2d_0b_5x5")
        with tf.compat.v1.variable_scope("Branch_2"):
            b2 = conv_bn(x, 64, (1, 1), "Conv2d_0a_1x1")
            b2 = conv_bn(conv_bn(b2, 96, (3, 3), "Conv2d_0b_3x3"), 96, (3, 3), "Conv2d_0c_3x3")
        with tf.compat.v1.variable_scope("Branch_3"):
            b3 = conv_bn(avg_pool(x, "AvgPool_0a_3x3"), pool_depth, (1, 1), "Conv2d_0b_1x1")
        return concat([b0, b1, b2, b3])


def reduction_a(x: tf.Tensor) -> tf.Tensor:
    with tf.compat.v1.variable_scope("Mixed_6a"):
        with tf.compat.v1.variable_scope("Branch_0"):
            b0 = conv_bn(x, 384, (3, 3), "Conv2d_1a_1x1", stride=2, padding="VALID")
        with tf.compat.v1.variable_scope("Branch_1"):
            b1 = conv_bn(conv_bn(x, 64, (1, 1), "Conv2d_0a_1x1"), 96, (3, 3), "Conv2d_0b_3x3")
            b1 = conv_bn(b1, 96, (3, 3), "Conv2d_1a_1x1", stride=2, padding="VALID")
        with tf.compat.v1.variable_scope("Branch_2"):
            b2 = max_pool(x, "MaxPool_1a_3x3")
        return concat([b0, b1, b2])


def block_17(x: tf.Tensor, scope: str, depth: int) -> tf.Tensor:
    """Mixed_6b..6e: factorised 7x7 convolutions."""
    with tf.compat.v1.variable_scope(scope):
        with tf.compat.v1.variable_scope("Branch_0"):
            b0 = conv_bn(x, 192, (1, 1), "Conv2d_0a_1x1")
        with tf.compat.v1.variable_scope("Branch_1"):
            b1 = conv_bn(x, depth, (1, 1), "Conv2d_0a_1x1")
            b1 = conv_bn(b1, depth, (1, 7), "Conv2d_0b_1x7")
            b1 = conv_bn(b1, 192, (7, 1), "Conv2d_0c_7x1")
        with tf.compat.v1.variable_scope("Branch_2"):
            b2 = conv_bn(x, depth, (1, 1), "Conv2d_0a_1x1")
            b2 = conv_bn(b2, depth, (7, 1), "Conv2d_0b_7x1")
            b2 = conv_bn(b2, depth, (1, 7), "Conv2d_0c_1x7")
            b2 = conv_bn(b2, depth, (7, 1), "Conv2d_0d_7x1")
            b2 = conv_bn(b2, 192, (1, 7), "Conv2d_0e_1x7")
        with tf.compat.v1.variable_scope("Branch_3"):
            b3 = conv_bn(avg_pool(x, "AvgPool_0a_3x3"), 192, (1, 1), "Conv2d_0b_1x1")
        return concat([b0, b1, b2, b3])


def reduction_b(x: tf.Tensor) -> tf.Tensor:
    with tf.compat.v1.variable_scope("Mixed_7a"):
        with tf.compat.v1.variable_scope("Branch_0"):
            b0 = conv_bn(x, 192, (1, 1), "Conv2d_0a_1x1")
            b0 = conv_bn(b0, 320, (3, 3), "Conv2d_1a_3x3", stride=2, padding="VALID")
        with tf.compat.v1.variable_scope("Branch_1"):
            b1 = conv_bn(x, 192, (1, 1), "Conv2d_0a_1x1")
            b1 = conv_bn(b1, 192, (1, 7), "Conv2d_0b_1x7")
            b1 = conv_bn(b1, 192, (7, 1), "Conv2d_0c_7x1")
            b1 = conv_bn(b1, 192, (3, 3), "Conv2d_1a_3x3", stride=2, padding="VALID")
        with tf.compat.v1.variable_scope("Branch_2"):
            b2 = max_pool(x, "MaxPool_1a_3x3")
        return concat([b0, b1, b2])


def block_8(x: tf.Tensor, scope: str) -> tf.Tensor:
    """Mixed_7b/7c: expanded filter banks with split 1x3/3x1 convolutions."""
    with tf.compat.v1.variable_scope(scope):
        with tf.compat.v1.variable_scope("Branch_0"):
            b0 = conv_bn(x, 320, (1, 1), "Conv2d_0a_1x1")
        with tf.compat.v1.variable_scope("Branch_1"):
            b1 = conv_bn(x, 384, (1, 1), "Conv2d_0a_1x1")
            b1 = tf.concat([conv_bn(b1, 384, (1, 3), "Conv2d_0b_1x3"),
                            conv_bn(b1, 384, (3, 1), "Conv2d_0b_3x1")], axis=3)
        with tf.compat.v1.variable_scope("Branch_2"):
            b2 = conv_bn(conv_bn(x, 448, (1, 1), "Conv2d_0a_1x1"), 384, (3, 3), "Conv2d_0b_3x3")
            b2 = tf.concat([conv_bn(b2, 384, (1, 3), "Conv2d_0c_1x3"),
                            conv_bn(b2, 384, (3, 1), "Conv2d_0d_3x1")], axis=3)
        with tf.compat.v1.variable_scope("Branch_3"):
            b3 = conv_bn(avg_pool(x, "AvgPool_0a_3x3"), 192, (1, 1), "Conv2d_0b_1x1")
        return concat([b0, b1, b2, b3])


def fully_connected(x: tf.Tensor, units: int, scope: str, activation: bool) -> tf.Tensor:
    with tf.compat.v1.variable_scope(scope):
        weights = _variable("weights", [x.shape[-1], units], tf.compat.v1.variance_scaling_initializer())
        biases = _variable("biases", [units], tf.compat.v1.zeros_initializer())
        y = tf.nn.bias_add(tf.matmul(x, weights), biases)
        return tf.nn.relu(y) if activation else y


def inception_v3(images: tf.Tensor) -> tf.Tensor:
    """Inception-v3's inference graph plus a 2048-wide pre-logits layer, which
    lifts the weights the frozen graph holds past 100 MB."""
    with tf.compat.v1.variable_scope("InceptionV3"):
        x = conv_bn(images, 32, (3, 3), "Conv2d_1a_3x3", stride=2, padding="VALID")
        x = conv_bn(x, 32, (3, 3), "Conv2d_2a_3x3", padding="VALID")
        x = conv_bn(x, 64, (3, 3), "Conv2d_2b_3x3")
        x = max_pool(x, "MaxPool_3a_3x3")
        x = conv_bn(x, 80, (1, 1), "Conv2d_3b_1x1", padding="VALID")
        x = conv_bn(x, 192, (3, 3), "Conv2d_4a_3x3", padding="VALID")
        x = max_pool(x, "MaxPool_5a_3x3")
        x = block_35(x, "Mixed_5b", pool_depth=32)
        x = block_35(x, "Mixed_5c", pool_depth=64)
        x = block_35(x, "Mixed_5d", pool_depth=64)
        x = reduction_a(x)
        for scope, depth in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = block_17(x, scope, depth)
        x = reduction_b(x)
        x = block_8(x, "Mixed_7b")
        x = block_8(x, "Mixed_7c")
        with tf.compat.v1.variable_scope("Logits"):
            x = tf.reduce_mean(x, axis=[1, 2], name="GlobalPool")
        x = fully_connected(x, 2048, "PreLogits", activation=True)
        logits = fully_connected(x, NUM_CLASSES, "Logits/FullyConnected", activation=False)
        with tf.name_scope("Predictions"):
            flat = tf.reshape(logits, [-1, NUM_CLASSES])
            return tf.reshape(tf.nn.softmax(flat), tf.shape(logits))


# --------------------------------------------------------------------------
# Building and caching the inputs.
# --------------------------------------------------------------------------

@dataclass
class ModelInfo:
    checkpoint_bytes: int
    parameters: int
    graph_nodes: int
    version: int = MODEL_VERSION


def checkpoint_data_files() -> list[Path]:
    return sorted(MODEL_DIR.glob(f"{CHECKPOINT_PREFIX.name}.data-*-of-*"))


def build_model() -> ModelInfo:
    """Initialise the model with seeded random weights; save the checkpoint and inference graph."""
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(SEED)
        images = tf.compat.v1.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3], name=INPUT_NODE)
        predictions = inception_v3(images)
        assert predictions.op.name == OUTPUT_NODE, predictions.op.name
        inference_graph = graph.as_graph_def()
        variables = tf.compat.v1.global_variables()
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(CHECKPOINT_PREFIX), write_meta_graph=False)
    tf.io.write_graph(inference_graph, str(MODEL_DIR), INFERENCE_GRAPH.name, as_text=False)
    info = ModelInfo(
        checkpoint_bytes=sum(p.stat().st_size for p in checkpoint_data_files()),
        parameters=sum(int(np.prod(v.shape)) for v in variables),
        graph_nodes=len(inference_graph.node),
    )
    MODEL_INFO.write_text(json.dumps(asdict(info)))
    return info


def ensure_model() -> ModelInfo:
    if MODEL_INFO.is_file() and INFERENCE_GRAPH.is_file() and checkpoint_data_files():
        info = ModelInfo(**json.loads(MODEL_INFO.read_text()))
        if info.version == MODEL_VERSION:
            print(f"using the cached model in {MODEL_DIR.relative_to(REPO)}")
            return info
    print(f"building the model in {MODEL_DIR.relative_to(REPO)} (once) ...", flush=True)
    started = time.perf_counter()
    info = build_model()
    print(f"  built in {time.perf_counter() - started:.1f} s")
    return info


# --------------------------------------------------------------------------
# The two freezers.
# --------------------------------------------------------------------------

def run_freeze_graph(output: Path) -> None:
    # freeze_graph imports into the default graph: give each call a fresh one.
    with tf.Graph().as_default():
        freeze_graph.freeze_graph(
            input_graph=str(INFERENCE_GRAPH), input_saver="", input_binary=True,
            input_checkpoint=str(CHECKPOINT_PREFIX), output_node_names=OUTPUT_NODE,
            restore_op_name="", filename_tensor_name="", output_graph=str(output),
            clear_devices=True, initializer_nodes="",
        )


def registry_request(output: Path) -> dict:
    return {
        "source": "checkpoint+graph",
        "files": {"graph": str(INFERENCE_GRAPH), "checkpoint_prefix": str(CHECKPOINT_PREFIX)},
        "output_nodes": [OUTPUT_NODE],
        "input_nodes": [],
        "output_path": str(output),
        "verify_tolerance": 1e-5,
        "verify": False,
    }


def run_registry(output: Path) -> None:
    result = convert(registry_request(output))
    if not result.get("ok"):
        raise RuntimeError(f"the registry's converter failed: {result}")


def time_call(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def time_alternating(runs: dict[str, Callable[[], None]], repetitions: int,
                     warm_up: bool = True) -> dict[str, list[float]]:
    """An untimed warm-up each (unless told not to), then ``repetitions`` timed rounds, alternating."""
    if warm_up:
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repetitions):
        for name, fn in runs.items():
            times[name].append(time_call(fn))
        print(f"  round {round_ + 1}/{repetitions}: "
              + ", ".join(f"{name} {times[name][-1]:.2f} s" for name in runs), flush=True)
    return times


def freeze_graph_command(output: Path) -> list[str]:
    return [
        sys.executable, "-m", "tensorflow.python.tools.freeze_graph",
        f"--input_graph={INFERENCE_GRAPH}", "--input_binary=true",
        f"--input_checkpoint={CHECKPOINT_PREFIX}", f"--output_node_names={OUTPUT_NODE}",
        f"--output_graph={output}",
    ]


def run_command(command: list[str]) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stderr[-2000:]}")


def run_freeze_graph_subprocess(output: Path) -> None:
    run_command(freeze_graph_command(output))


def run_registry_subprocess(output: Path) -> None:
    """The converter child exactly as the registry's worker starts it."""
    request_path, result_path = OUT_DIR / "request.json", OUT_DIR / "result.json"
    request_path.write_text(json.dumps(dict(registry_request(output), result_path=str(result_path))))
    run_command([sys.executable, "-m", "registry.converter.child", str(request_path)])
    result = json.loads(result_path.read_text())
    if not result.get("ok"):
        raise RuntimeError(f"the registry's converter failed: {result}")


# --------------------------------------------------------------------------
# Comparing the frozen graphs.
# --------------------------------------------------------------------------

@dataclass
class Comparison:
    nodes_theirs: int
    nodes_ours: int
    same_node_names: bool
    differing_nodes: list[str]
    constants: int
    constant_bytes: int
    differing_constants: list[str]
    outputs_equal: bool
    outputs_finite: bool

    @property
    def identical(self) -> bool:
        return (self.same_node_names and not self.differing_nodes and not self.differing_constants
                and self.outputs_equal and self.outputs_finite)


def load_graph_def(path: Path) -> graph_pb2.GraphDef:
    graph_def = graph_pb2.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return graph_def


def constants(graph_def: graph_pb2.GraphDef) -> dict[str, np.ndarray]:
    return {n.name: tensor_util.MakeNdarray(n.attr["value"].tensor) for n in graph_def.node if n.op == "Const"}


def without_colocation(node: node_def_pb2.NodeDef) -> node_def_pb2.NodeDef:
    """The node without its ``_class`` colocation hint, which the registry drops on purpose."""
    copy = node_def_pb2.NodeDef()
    copy.CopyFrom(node)
    if "_class" in copy.attr:
        del copy.attr["_class"]
    return copy


def differing_nodes(theirs: graph_pb2.GraphDef, ours: graph_pb2.GraphDef) -> list[str]:
    """Names of nodes present in both graphs whose op, inputs or attributes differ."""
    ours_by_name = {n.name: n for n in ours.node}
    return sorted(n.name for n in theirs.node
                  if n.name in ours_by_name and without_colocation(n) != without_colocation(ours_by_name[n.name]))


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def run_frozen(graph_def: graph_pb2.GraphDef, batch: np.ndarray) -> np.ndarray:
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run(f"{OUTPUT_NODE}:0", {f"{INPUT_NODE}:0": batch})


def compare(theirs_path: Path, ours_path: Path) -> Comparison:
    theirs, ours = load_graph_def(theirs_path), load_graph_def(ours_path)
    theirs_consts, ours_consts = constants(theirs), constants(ours)
    differing = sorted(name for name in theirs_consts.keys() | ours_consts.keys()
                       if name not in theirs_consts or name not in ours_consts
                       or not same_array(theirs_consts[name], ours_consts[name]))
    batch = np.random.default_rng(SEED).uniform(-1.0, 1.0, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    theirs_out, ours_out = run_frozen(theirs, batch), run_frozen(ours, batch)
    return Comparison(
        nodes_theirs=len(theirs.node),
        nodes_ours=len(ours.node),
        same_node_names={n.name for n in theirs.node} == {n.name for n in ours.node},
        differing_nodes=differing_nodes(theirs, ours),
        constants=len(theirs_consts),
        constant_bytes=sum(v.nbytes for v in theirs_consts.values()),
        differing_constants=differing,
        outputs_equal=np.array_equal(theirs_out, ours_out),
        outputs_finite=bool(np.isfinite(theirs_out).all() and np.isfinite(ours_out).all()),
    )


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------

def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


def main() -> int:
    tf.compat.v1.disable_eager_execution()
    tf.get_logger().setLevel("ERROR")  # freeze_graph's deprecation warnings
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    info = ensure_model()
    theirs_out, ours_out = OUT_DIR / "frozen_freeze_graph.pb", OUT_DIR / "frozen_registry.pb"

    print(f"\nin-process timing: 1 warm-up + {REPETITIONS} alternating rounds each")
    times = time_alternating({"freeze_graph": lambda: run_freeze_graph(theirs_out),
                              "registry": lambda: run_registry(ours_out)}, REPETITIONS)
    theirs_median, ours_median = statistics.median(times["freeze_graph"]), statistics.median(times["registry"])
    ratio = ours_median / theirs_median

    print(f"\nsubprocess timing (TensorFlow import included): {SUBPROCESS_REPETITIONS} alternating rounds each")
    sub_times = time_alternating({"freeze_graph": lambda: run_freeze_graph_subprocess(theirs_out),
                                  "registry": lambda: run_registry_subprocess(ours_out)},
                                 SUBPROCESS_REPETITIONS, warm_up=False)
    sub_theirs, sub_ours = statistics.median(sub_times["freeze_graph"]), statistics.median(sub_times["registry"])

    print("\ncomparing the frozen graphs ...", flush=True)
    result = compare(theirs_out, ours_out)
    big_enough = info.checkpoint_bytes >= MIN_CHECKPOINT_BYTES
    passed = ratio <= TARGET_RATIO and result.identical and big_enough

    print("\nfreeze: registry converter vs tensorflow.python.tools.freeze_graph")
    print_table([
        ("checkpoint data", f"{info.checkpoint_bytes / 1e6:.1f} MB ({info.parameters / 1e6:.2f}M float32 parameters)"),
        ("inference graph nodes", str(info.graph_nodes)),
        ("frozen graph nodes", f"{result.nodes_theirs} (freeze_graph), {result.nodes_ours} (registry)"),
        ("frozen graph size", f"{theirs_out.stat().st_size / 1e6:.1f} MB (freeze_graph), "
                              f"{ours_out.stat().st_size / 1e6:.1f} MB (registry)"),
        ("freeze_graph, median", f"{theirs_median:.3f} s  (all: {', '.join(f'{t:.2f}' for t in times['freeze_graph'])})"),
        ("registry, median", f"{ours_median:.3f} s  (all: {', '.join(f'{t:.2f}' for t in times['registry'])})"),
        ("ratio registry/freeze_graph", f"{ratio:.3f}  (target <= {TARGET_RATIO})"),
        ("subprocess, median", f"{sub_theirs:.2f} s (freeze_graph), {sub_ours:.2f} s (registry), "
                               f"ratio {sub_ours / sub_theirs:.3f} (for information)"),
        ("same node names", "yes" if result.same_node_names else "NO"),
        ("same ops, inputs, attributes", (f"{result.nodes_theirs - len(result.differing_nodes)}/{result.nodes_theirs}"
                                          " nodes (ignoring _class colocation hints)")
                                         + (f"; differ: {', '.join(result.differing_nodes[:5])}"
                                            if result.differing_nodes else "")),
        ("constants bit-identical", f"{result.constants - len(result.differing_constants)}/{result.constants} "
                                    f"({result.constant_bytes / 1e6:.1f} MB)"
                                    + (f"; differ: {', '.join(result.differing_constants[:5])}"
                                       if result.differing_constants else "")),
        ("outputs exactly equal", ("yes" if result.outputs_equal else "NO")
                                  + ("" if result.outputs_finite else " (outputs are not finite)")),
        ("checkpoint >= 100 MB", "yes" if big_enough else "NO"),
        ("result", "PASS" if passed else "FAIL"),
    ])
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
