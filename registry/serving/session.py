"""A frozen graph in an inference worker: one tf.Graph and Session per version.

Only :mod:`registry.serving.inference` (the worker process) imports this; the
label service sees the graph through :class:`registry.serving.loader.LoadedGraph`.

Runs go through Session callables (``Session::MakeCallable``), one per set of
fed and fetched tensors: no per-run Python feed handling, and, as in TF Serving's
C++ session, a fed value's shape is checked by the ops that read it, not against
the tensor's static shape (TF Serving's own half_plus_two test feeds ``[2.0]`` to
an ``x`` of shape ``[-1, 1]``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import config_pb2

from registry.signatures import signature_key

tf1 = tf.compat.v1
MAX_CALLABLES = 64  # distinct feed/fetch sets kept per graph (each is a pruned executor)


def _spec(graph: tf.Graph, name: str) -> dict:
    """A tensor's dtype and shape (plain data: it crosses a pipe)."""
    tensor = graph.get_tensor_by_name(name if ":" in name else f"{name}:0")
    shape = None if tensor.shape.rank is None else tensor.shape.as_list()
    return {"key": signature_key(name.split(":", 1)[0]), "name": tensor.name,
            "dtype": int(tensor.dtype.base_dtype.as_datatype_enum), "shape": shape}


class FrozenSession:
    def __init__(self, frozen: bytes, tensors: list[str], timeout_seconds: float) -> None:
        graph_def = graph_pb2.GraphDef()
        graph_def.ParseFromString(frozen)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        del graph_def
        self.session = tf1.Session(graph=self.graph)
        self.tensors = {name: _spec(self.graph, name) for name in tensors}
        self.timeout_ms = max(1, int(timeout_seconds * 1000)) if timeout_seconds > 0 else 0
        self._callables: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def _callable(self, feeds: tuple[str, ...], fetch: tuple[str, ...]):
        key = (feeds, fetch)
        with self._lock:
            made = self._callables.get(key)
            if made is not None:
                self._callables.move_to_end(key)
                return made
        for name in feeds + fetch:  # a KeyError/ValueError here names the tensor that is not in the graph
            self.graph.get_tensor_by_name(name)
        options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetch))
        if self.timeout_ms:
            # TensorFlow cancels a run past its deadline (checked between ops and in loops).
            options.run_options.timeout_in_ms = self.timeout_ms
        made = self.session._make_callable_from_options(options)  # noqa: SLF001 - Session::MakeCallable
        with self._lock:
            self._callables[key] = made
            while len(self._callables) > MAX_CALLABLES:
                self._callables.popitem(last=False)
        return made

    def run(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> dict[str, np.ndarray]:
        names = tuple(feeds)
        run = self._callable(names, tuple(fetch))
        dtypes = [self.graph.get_tensor_by_name(n).dtype.base_dtype for n in names]
        values = [_as_dtype(feeds[n], d, n) for n, d in zip(names, dtypes)]
        results = run(*values)
        return {name: np.asarray(value) for name, value in zip(fetch, results)}


def _as_dtype(value, dtype: tf.DType, name: str) -> np.ndarray:
    """A fed value as the tensor's dtype (a callable takes arrays as they are)."""
    if dtype == tf.string:
        return np.asarray(value, dtype=object)
    array = np.asarray(value)
    want = dtype.as_numpy_dtype
    if array.dtype != want:
        try:
            array = array.astype(want)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot feed {array.dtype} to {name} ({dtype.name}): {exc}") from exc
    return array


def warm_up() -> None:
    """Import TensorFlow and run a trivial graph: the first Session fixes the process's thread pools."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None], name="x")
        y = x * 2.0
    with tf1.Session(graph=graph) as session:
        session.run(y, {x: np.ones(1, np.float32)})
