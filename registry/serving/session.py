"""A frozen graph in an inference worker: one tf.Graph and Session per version.

Only :mod:`registry.serving.inference` (the worker process) imports this; the
label service sees the graph through :class:`registry.serving.loader.LoadedGraph`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

tf1 = tf.compat.v1


def signature_key(node: str) -> str:
    """A valid signature key from a node name: ``InceptionV3/Predictions/Reshape_1`` →
    ``InceptionV3_Predictions_Reshape_1``."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in node)


def _spec(graph: tf.Graph, node: str, optional: bool = False) -> dict:
    """An input or output as the label service needs it (plain data: it crosses a pipe)."""
    tensor = graph.get_tensor_by_name(f"{node}:0")
    shape = None if tensor.shape.rank is None else tensor.shape.as_list()
    return {"key": signature_key(node), "name": tensor.name, "dtype": int(tensor.dtype.base_dtype.as_datatype_enum),
            "shape": shape, "optional": optional}


class FrozenSession:
    def __init__(self, frozen: bytes, inputs: list[dict], outputs: list[str], timeout_seconds: float) -> None:
        graph_def = graph_pb2.GraphDef()
        graph_def.ParseFromString(frozen)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        del graph_def
        self.session = tf1.Session(graph=self.graph)
        self.inputs = [_spec(self.graph, i["name"], bool(i.get("optional"))) for i in inputs]
        self.outputs = [_spec(self.graph, name) for name in outputs]
        # TensorFlow cancels a Session.run past its deadline (checked between ops and in loops).
        self._options = (tf1.RunOptions(timeout_in_ms=max(1, int(timeout_seconds * 1000)))
                         if timeout_seconds > 0 else None)

    def run(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> dict[str, np.ndarray]:
        results = self.session.run(list(fetch), feed_dict=feeds, options=self._options)
        return {name: np.asarray(value) for name, value in zip(fetch, results)}


def warm_up() -> None:
    """Import TensorFlow and run a trivial graph: the first Session fixes the process's thread pools."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None], name="x")
        y = x * 2.0
    with tf1.Session(graph=graph) as session:
        session.run(y, {x: np.ones(1, np.float32)})
