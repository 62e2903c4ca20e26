"""A loaded version holds its weights once, and the label service's cache counts what it really costs.

The frozen graphs are real (built here with TensorFlow), loaded by the real
loader, and in the second test into a real inference worker process.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
import tensorflow as tf

from registry import metrics
from registry.entities import READY, VersionInfo
from registry.serving import weights
from registry.serving.cache import GraphCache
from registry.serving.loader import LoadedGraph
from registry.serving.workers import WorkerPool
from tests import tfmodels
from tests.test_label_isolation import build_weights_frozen

tf1 = tf.compat.v1
MB = 1024 * 1024
GRAPH_MB = 24


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return tfmodels.build_frozen(tmp_path_factory.mktemp("cnn"))


def plain_run(frozen: bytes, output: str, test_input: np.ndarray) -> np.ndarray:
    graph_def = tf1.GraphDef()
    graph_def.ParseFromString(frozen)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf1.Session(graph=graph) as session:
        return session.run(f"{output}:0", {"input:0": test_input})


def test_weights_become_variables_read_under_the_constants_names_and_the_graph_runs_the_same(cnn, monkeypatch):
    monkeypatch.setattr(weights, "MIN_WEIGHT_BYTES", 1)  # the small CNN's every constant with tensor_content
    frozen = cnn.frozen_graph.read_bytes()
    consts = {n.name for n in tf1.GraphDef.FromString(frozen).node if n.op == "Const"}
    loaded = weights.load(bytearray(frozen))
    ops = {op.name: op.type for op in loaded.graph.get_operations()}
    taken = {name for name in consts if ops[name] == "ReadVariableOp"}
    assert loaded.weights == len(taken) > 0 and loaded.weight_bytes > 0
    assert "Const" in loaded.ops and "ReadVariableOp" not in loaded.ops  # the ops of the graph as stored
    # no constant holds weights any more: what is left are scalars (float_val) the scanner leaves alone
    assert all(len(op.get_attr("value").tensor_content) == 0 for op in loaded.graph.get_operations()
               if op.type == "Const")
    output = f"{cnn.output}:0"
    got = loaded.session.run(output, {"input:0": cnn.test_input})
    np.testing.assert_array_equal(got, plain_run(frozen, cnn.output, cnn.test_input))
    np.testing.assert_allclose(got, cnn.expected, atol=1e-5)
    # the graph stays open: ops added after the first run (preprocessing, say) run in the same session
    with loaded.graph.as_default():
        doubled = tf.multiply(loaded.graph.get_tensor_by_name(output), 2.0, name="doubled")
    np.testing.assert_array_equal(loaded.session.run(doubled, {"input:0": cnn.test_input}), 2 * got)


def test_bytes_the_scanner_does_not_understand_load_as_protobuf_does():
    with pytest.raises(Exception, match="(?i)pars|decod"):
        weights.load(b"\x0a\xff\xff\xff\xff\x0f")  # a node field longer than the message


def _version(number: int) -> VersionInfo:
    now = datetime.now(timezone.utc)
    return VersionInfo(id=number, model="weights", version=number, status=READY, status_message="",
                       source="frozen", description="", requested_output_nodes=None, requested_input_nodes=None,
                       output_nodes=["output"], output_nodes_detected=False,
                       input_nodes=[{"name": "input", "dtype": "float32", "shape": [None, 4]}],
                       frozen_sha256=None, frozen_size=None, tf_version=None, conversion=None, created_at=now,
                       updated_at=now, ready_at=now)


def _gauge() -> float:
    return metrics.CACHE_BYTES._value.get()  # noqa: SLF001 - this process's gauge (no multiprocess dir here)


def test_the_cache_counts_a_version_by_what_its_worker_measured_and_evicts_by_it(tmp_path):
    """Three 24 MB graphs in a real worker.  Each costs what the worker measured it added (its weights
    once, a little more), not an estimate from its file size; the budget is set to 2.5 of the first
    one's measured cost, so the second fits beside it and the third evicts the first."""
    frozen = {n: build_weights_frozen(tmp_path, GRAPH_MB, seed=n).read_bytes() for n in range(3)}
    pool = WorkerPool(count=1, memory_mb=4096, run_timeout=None)
    try:
        def load(key):
            return LoadedGraph(_version(key), key, frozen[key], None, pool=pool, reload=lambda g: g)

        cache = GraphCache(10 * 1024 * MB, load, on_evict=lambda g: g.evict())
        gauge = _gauge()
        first = cache.get(0)
        (worker,) = pool.workers
        assert GRAPH_MB * MB <= first.memory_bytes < 1.5 * GRAPH_MB * MB  # once, not the old 5.5x estimate
        assert worker.held == {0: first.memory_bytes}  # what the worker answered
        assert abs((worker.rss - worker.baseline_rss) - first.memory_bytes) < 16 * MB  # its RSS growth
        assert cache.used_bytes == _gauge() - gauge == first.memory_bytes
        assert first.run({"input:0": np.zeros((1, 4), np.float32)})["output:0"].shape == (1, 4)

        cache.budget_bytes = int(2.5 * first.memory_bytes)
        second = cache.get(1)
        assert cache.keys() == [0, 1]
        third = cache.get(2)
        assert cache.keys() == [1, 2]  # the least recently used went, by the measured costs
        assert cache.used_bytes == second.memory_bytes + third.memory_bytes == _gauge() - gauge
        assert set(worker.held) == {1, 2}  # and it was unloaded from the worker
    finally:
        pool.close()
