"""The conversion's memory: the frozen graph is written as it is built (the same bytes as serializing it
whole), verification holds one graph at a time and feeds the frozen graph its weights from the file,
and the converter child's peak stays within a small multiple of the checkpoint
(benchmarks/conversion_memory.py measures it on 1 GiB)."""

from __future__ import annotations

import copy
import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from registry.errors import ConversionError

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1

from registry.converter import graphs  # noqa: E402
from registry.converter.checkpoint_keys import restore_key_map  # noqa: E402
from registry.converter.freeze import freeze  # noqa: E402
from registry.converter.graphfile import GraphWriter, read_graph_def  # noqa: E402
from registry.converter.verify import FED_CONSTANT_BYTES, load_frozen, verify_signatures  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIGNATURES = {"serving_default": {"method": "tensorflow/serving/predict",
                                  "inputs": {"x": {"name": "x:0"}}, "outputs": {"probs": {"name": "probs:0"}}}}


def build_dense(directory: Path, width: int) -> Path:
    """x [batch, width] → a resource-variable dense layer → a legacy-variable dense layer → softmax;
    two float32 [width, width] weights (8 * width² bytes).  Returns the checkpoint prefix."""
    directory.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        tf1.set_random_seed(4)
        x = tf1.placeholder(tf.float32, [None, width], name="x")
        w1 = tf1.get_variable("dense1/weights", [width, width], use_resource=True,
                              initializer=tf1.random_uniform_initializer(-0.05, 0.05))
        w2 = tf1.get_variable("dense2/weights", [width, width], use_resource=False,
                              initializer=tf1.random_uniform_initializer(-0.05, 0.05))
        b = tf1.get_variable("dense2/biases", [width], use_resource=True, initializer=tf1.zeros_initializer())
        tf.nn.softmax(tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2) + b, name="probs")
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            tf1.train.Saver().save(session, str(directory / "model.ckpt"))
    return directory / "model.ckpt"


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A checkpoint of about 4 MiB whose two weights are each big enough to be fed to the frozen graph."""
    prefix = build_dense(tmp_path_factory.mktemp("dense"), 512)
    meta = graphs.load_meta_graph(Path(f"{prefix}.meta"))
    pruned, _ = graphs.extract_subgraph(meta.graph_def, ["probs"])
    return prefix, pruned, restore_key_map(meta.graph_def)


def frozen_checkpoint(tmp_path: Path, dense) -> tuple[Path, dict]:
    prefix, pruned, key_map = dense
    path = tmp_path / "frozen.pb"
    _, report = freeze(pruned, str(prefix), key_map, output=path)
    return path, report.variable_keys


@pytest.mark.parametrize("kind", ["resource_meta", "legacy_meta", "sharded", "embedding"])
def test_frozen_graph_written_as_it_is_built_has_the_bytes_of_the_whole_graph_serialized(tmp_path, models, kind):
    model = models[kind]
    meta = graphs.load_meta_graph(model.meta)
    pruned, _ = graphs.extract_subgraph(meta.graph_def, graphs.detect_outputs(meta.graph_def))
    key_map = restore_key_map(meta.graph_def)
    whole, _ = freeze(pruned, str(model.prefix), key_map)
    returned, report = freeze(pruned, str(model.prefix), key_map, output=tmp_path / "frozen.pb")

    assert (tmp_path / "frozen.pb").read_bytes() == whole.SerializeToString(deterministic=True)
    # what stays in memory is the graph's structure: the variables' constants keep their shape, not their values
    constants = {n.name: n for n in returned.node if n.name in report.variable_keys}
    assert constants and all(not n.attr["value"].tensor.tensor_content and n.attr["value"].tensor.tensor_shape.dim
                             for n in constants.values())


@pytest.mark.parametrize("value", [
    np.arange(12, dtype=np.float32).reshape(3, 4), np.array(2.5, dtype=np.float64), np.zeros((0, 3), np.float32),
    np.array([[True, False]]), np.arange(300, dtype=np.int8), np.ones((2, 2), np.complex64) * 1j,
    np.arange(5, dtype=np.float16), np.arange(10**6, dtype=np.int64)[::-2].reshape(1000, 500),
], ids=["float32", "scalar", "empty", "bool", "int8", "complex", "float16", "non-contiguous"])
def test_a_constant_written_from_its_array_is_the_constant_serialized(tmp_path, value):
    from tensorflow.core.framework import graph_pb2

    graph = graph_pb2.GraphDef()
    graph.versions.producer = 1994
    const = graph.node.add(name="weights", op="Const")
    const.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    tensor = const.attr["value"].tensor  # as freeze makes it: the values as tensor_content, whatever their size
    tensor.dtype = const.attr["dtype"].type
    for size in value.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = content = np.ascontiguousarray(value).tobytes()
    graph.node.add(name="out", op="Identity", input=["weights"]).attr["T"].type = const.attr["dtype"].type

    with GraphWriter(tmp_path / "g.pb") as writer:
        head = copy.deepcopy(graph.node[0])
        head.attr["value"].tensor.ClearField("tensor_content")
        writer.node(head, value)
        writer.node(graph.node[1])
        writer.finish(graph)
    assert (tmp_path / "g.pb").read_bytes() == graph.SerializeToString(deterministic=True)

    read, lifted = read_graph_def(tmp_path / "g.pb", lift_bytes=1)
    if content:  # read back apart from its node, on a 64-byte boundary
        assert bytes(lifted["weights"]) == content and lifted["weights"].ctypes.data % 64 == 0
        assert not read.node[0].attr["value"].tensor.tensor_content
    else:
        assert not lifted
    assert [n.name for n in read.node] == ["weights", "out"] and read.versions.producer == 1994


def test_frozen_graph_runs_with_its_big_constants_fed_from_the_file(tmp_path, dense):
    path, keys = frozen_checkpoint(tmp_path, dense)
    graph, constants, _ = load_frozen(path)

    assert set(constants) == {"dense1/weights", "dense2/weights"}  # the biases are under FED_CONSTANT_BYTES
    assert all(a.nbytes >= FED_CONSTANT_BYTES and a.ctypes.data % 64 == 0 for a in constants.values())
    assert graph.get_operation_by_name("dense1/weights").type == "Placeholder"
    assert graph.get_operation_by_name("dense2/biases").type == "Const"
    reader = tf1.train.NewCheckpointReader(str(dense[0]))
    np.testing.assert_array_equal(constants["dense1/weights"], reader.get_tensor(keys["dense1/weights"]))
    prefix, pruned, _ = dense
    verdict = verify_signatures(path, pruned, str(prefix), keys, copy.deepcopy(SIGNATURES), 1e-6)
    assert verdict["serving_default"]["status"] == "passed"


def test_verification_catches_a_changed_weight_in_the_frozen_file(tmp_path, dense):
    """The fed values are the file's, not the checkpoint's: a weight changed in the file fails verification."""
    path, keys = frozen_checkpoint(tmp_path, dense)
    data = bytearray(path.read_bytes())
    weights = tf1.train.NewCheckpointReader(str(dense[0])).get_tensor(keys["dense2/weights"])
    at = bytes(data).index(weights.tobytes()[:4096])
    data[at:at + 4 * 512] = np.full(512, 3.0, np.float32).tobytes()  # one row of dense2 changed
    path.write_bytes(bytes(data))

    prefix, pruned, _ = dense
    verdict = verify_signatures(path, pruned, str(prefix), keys, copy.deepcopy(SIGNATURES), 1e-6)
    assert verdict["serving_default"]["status"] == "failed"
    assert "does not reproduce the checkpoint" in verdict["serving_default"]["reason"]


def test_a_fed_constant_whose_dtype_disagrees_with_its_values_fails_as_a_graph_that_does_not_load(tmp_path, dense):
    from tensorflow.core.framework import graph_pb2

    path, _ = frozen_checkpoint(tmp_path, dense)
    graph = graph_pb2.GraphDef()
    graph.ParseFromString(path.read_bytes())
    next(n for n in graph.node if n.name == "dense1/weights").attr["dtype"].type = tf.int32.as_datatype_enum
    path.write_bytes(graph.SerializeToString())

    with pytest.raises(ConversionError, match="the frozen graph does not load: Const 'dense1/weights'"):
        load_frozen(path)


def test_the_restored_graph_is_gone_before_the_frozen_graph_loads(tmp_path, dense):
    path, keys = frozen_checkpoint(tmp_path, dense)
    seen: dict[str, list] = {}

    def graphs_alive(stage: str) -> None:
        gc.collect()
        seen[stage] = [{op.type for op in g.get_operations()} for g in gc.get_objects() if isinstance(g, tf.Graph)]

    prefix, pruned, _ = dense
    verify_signatures(path, pruned, str(prefix), keys, copy.deepcopy(SIGNATURES), 1e-6, mark=graphs_alive)

    assert list(seen) == ["restored graph run", "frozen graph load", "frozen graph run"]
    assert not any("RestoreV2" in ops for ops in seen["restored graph run"])
    assert not any("RestoreV2" in ops or "VarHandleOp" in ops for ops in seen["frozen graph load"])


def test_converter_child_peak_memory_stays_within_three_times_the_checkpoint(tmp_path):
    """The child as the registry starts it, on a 32 MiB checkpoint, TensorFlow's own memory left out (what
    the child holds once the graph is read): writing the frozen graph whole and loading it in a Session
    took 7x, each stage now holds one copy of the weights and one variable's worth more (2.2x)."""
    prefix = build_dense(tmp_path / "model", 2048)
    checkpoint = sum(p.stat().st_size for p in prefix.parent.glob("model.ckpt.*") if not p.name.endswith(".meta"))
    request = {"source": "checkpoint+meta", "files": {"meta": f"{prefix}.meta", "checkpoint_prefix": str(prefix)},
               "output_nodes": ["probs"], "input_nodes": [], "output_path": str(tmp_path / "frozen.pb"),
               "verify_tolerance": 1e-4, "memory_trace": True, "result_path": str(tmp_path / "result.json")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    subprocess.run([sys.executable, "-m", "registry.converter.child", str(tmp_path / "request.json")], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"], result
    memory = result["conversion"]["memory"]
    stages = {s["stage"]: s for s in memory["stages"]}

    assert result["conversion"]["verification"]["status"] == "passed"
    assert memory["peak_rss_bytes"] - stages["read and plan"]["rss_bytes"] <= 3 * checkpoint, memory


def test_protobuf_failing_to_serialize_under_the_limit_counts_as_out_of_memory():
    """A SavedModel build under a tight REGISTRY_CONVERT_MEMORY_MB fails in protobuf's serializer
    (upb answers an allocation it cannot make with this EncodeError): the user is told to raise the
    limit, not that the converter crashed."""
    from google.protobuf.message import EncodeError

    from registry.converter.child import _is_memory_failure

    assert _is_memory_failure(EncodeError("Failed to serialize proto"))
    assert not _is_memory_failure(EncodeError("Message tensorflow.Foo is missing required fields: bar"))
    assert not _is_memory_failure(ValueError("Failed to serialize proto"))
