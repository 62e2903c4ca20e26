"""A frozen graph loaded for inference: one tf.Graph and Session per version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from registry.entities import VersionInfo
from registry.errors import InvalidRequest, TimedOut
from registry.serving.batching import Batcher

tf1 = tf.compat.v1


@dataclass(frozen=True)
class TensorSpec:
    key: str  # signature key
    name: str  # graph tensor name, "node:0"
    dtype: tf.DType
    shape: list[int | None] | None  # None: unknown rank
    optional: bool = False  # a PlaceholderWithDefault


def signature_key(node: str) -> str:
    """A valid signature key from a node name: ``InceptionV3/Predictions/Reshape_1`` →
    ``InceptionV3_Predictions_Reshape_1``."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in node)


def _spec(graph: tf.Graph, node: str, optional: bool = False) -> TensorSpec:
    tensor = graph.get_tensor_by_name(f"{node}:0")
    shape = None if tensor.shape.rank is None else tensor.shape.as_list()
    return TensorSpec(signature_key(node), tensor.name, tensor.dtype.base_dtype, shape, optional)


class LoadedGraph:
    """What the label service runs.  ``run`` is thread-safe; concurrent calls
    with compatible inputs are batched into one ``Session.run``."""

    def __init__(self, version: VersionInfo, frozen: bytes, labels: list[str] | None, *,
                 max_batch: int = 16, timeout_seconds: float = 0.0) -> None:
        self.version = version
        self.labels = labels
        graph_def = graph_pb2.GraphDef()
        graph_def.ParseFromString(frozen)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        del graph_def
        self.session = tf1.Session(graph=self.graph)
        self.inputs = [_spec(self.graph, i["name"], bool(i.get("optional"))) for i in version.input_nodes or []]
        self.outputs = [_spec(self.graph, o) for o in version.output_nodes or []]
        # Measured: a loaded graph that is mostly weights holds about 5.5x its frozen size
        # once it has run (the GraphDef, the graph, the session's copy, the constants).
        self.memory_bytes = int(5.5 * len(frozen)) + 16 * 1024 * 1024
        self._by_key = {s.key: s for s in self.inputs + self.outputs}
        self._by_key.update({s.name.rsplit(":", 1)[0]: s for s in self.inputs + self.outputs})
        self.batcher = Batcher(self._run_now, max_batch=max_batch)
        # TensorFlow cancels a Session.run past its deadline (checked between ops and in loops).
        self.timeout_seconds = timeout_seconds
        self._run_options = (tf1.RunOptions(timeout_in_ms=max(1, int(timeout_seconds * 1000)))
                             if timeout_seconds > 0 else None)

    def spec(self, key: str) -> TensorSpec | None:
        """An input or output by signature key or node name."""
        return self._by_key.get(key)

    def _run_now(self, feeds: dict[str, np.ndarray], fetch: tuple[str, ...]) -> list[np.ndarray]:
        return self.session.run(list(fetch), feed_dict=feeds, options=self._run_options)

    def run(self, feeds: dict[str, np.ndarray], fetch: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run with ``feeds`` keyed by tensor name; returns outputs keyed by tensor name."""
        names = tuple(fetch or [o.name for o in self.outputs])
        try:
            results = self.batcher.submit(feeds, names, batchable=self.batchable(feeds))
        except tf.errors.DeadlineExceededError as exc:
            raise TimedOut(f"version {self.version.version} of {self.version.model!r} took longer than "
                           f"{self.timeout_seconds:g} s and was stopped (REGISTRY_LABEL_TIMEOUT_SECONDS)",
                           code="inference_timed_out") from exc
        except (tf.errors.InvalidArgumentError, ValueError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            raise InvalidRequest(f"the model refused the input: {message.strip().splitlines()[0]}",
                                 code="invalid_input") from exc
        return dict(zip(names, results))

    def batchable(self, feeds: dict[str, Any]) -> bool:
        """Requests can share a Session.run when every fed input has a free batch dimension."""
        specs = {s.name: s for s in self.inputs}
        return all(name in specs and specs[name].shape and specs[name].shape[0] is None for name in feeds)
