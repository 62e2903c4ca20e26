"""A frozen graph in an inference worker: one tf.Graph and Session per version.

Only :mod:`registry.serving.inference` (the worker process) imports this; the
label service sees the graph through :class:`registry.serving.loader.LoadedGraph`.

Runs go through Session callables (``Session::MakeCallable``), one per set of
fed and fetched tensors: no per-run Python feed handling, and, as in TF Serving's
C++ session, a fed value's shape is checked by the ops that read it, not against
the tensor's static shape (TF Serving's own half_plus_two test feeds ``[2.0]`` to
an ``x`` of shape ``[-1, 1]``).

A run is handed to TensorFlow's inter-op thread pool, whose threads sleep
between requests: waking them costs 50-80 us, many times what a small graph
takes to run.  So a *simple* graph (only allowlisted inference ops, no loops, no
functions: nothing that could run without end) whose runs of this feed/fetch set
take under ``INLINE_BELOW_S`` runs in the calling thread instead
(``RunOptions.inter_op_thread_pool = -1``, TensorFlow's option "for simple
graphs, where the overhead of an additional context switch is comparable with
the overhead of Session::Run()").  Such a run is not cancelled at the deadline
(TensorFlow checks it only on the pool), which is why loops and function calls
never run so; the label service's own wait (deadline + grace) still bounds it.
Runs that take longer, and every run of other graphs, go to the pool, with the
deadline.

A feed named by :class:`registry.serving.images.LabelFeed` is label_image.py's
preprocessing for one setting: the first run that feeds it adds those ops to
this graph (:mod:`registry.serving.preprocess`; one graph, one copy of the
weights) and its callables connect their output to the image input, so a
``:label`` is one run from the encoded bytes to the scores.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from registry.converter.ops import INFERENCE_OPS
from registry.serving import preprocess, weights
from registry.serving.images import LabelFeed
from registry.signatures import signature_key

tf1 = tf.compat.v1
MAX_CALLABLES = 64  # distinct feed/fetch sets kept per graph (each is a pruned executor)
MAX_LABEL_FEEDS = 16  # preprocessing settings built into one graph, at most
INLINE_BELOW_S = 0.001  # a simple graph's runs shorter than this (on average) run in the calling thread
# Ops that loop or call functions: a graph with any of them always runs on the pool, under its deadline.
LOOPS_AND_CALLS = frozenset({"Enter", "Exit", "LoopCond", "NextIteration", "While", "StatelessWhile", "If",
                             "StatelessIf", "PartitionedCall", "StatefulPartitionedCall"})
INLINE_OPS = INFERENCE_OPS - LOOPS_AND_CALLS


def _spec(graph: tf.Graph, name: str) -> dict:
    """A tensor's dtype and shape (plain data: it crosses a pipe)."""
    tensor = graph.get_tensor_by_name(name if ":" in name else f"{name}:0")
    shape = None if tensor.shape.rank is None else tensor.shape.as_list()
    return {"key": signature_key(name.split(":", 1)[0]), "name": tensor.name,
            "dtype": int(tensor.dtype.base_dtype.as_datatype_enum), "shape": shape}


class _Callable:
    """The callables of one feed/fetch set, the dtypes it is fed, and how long its runs take."""

    __slots__ = ("pooled", "inline", "dtypes", "seconds")

    def __init__(self, pooled, dtypes: list[tf.DType]) -> None:
        self.pooled = pooled
        self.inline = None  # made on the first run that may use it
        # each feed's dtype, and what numpy calls it (None for strings): worked out once, not per run
        self.dtypes = [(d, None if d == tf.string else d.as_numpy_dtype) for d in dtypes]
        self.seconds: float | None = None  # moving average of the run time


class FrozenSession:
    def __init__(self, frozen: bytes, tensors: list[str], timeout_seconds: float) -> None:
        loaded = weights.load(frozen)  # its weights held once (see registry.serving.weights)
        # nothing in it can loop, call a function or wait: its runs may go in the calling thread
        self.simple = not loaded.functions and loaded.ops <= INLINE_OPS
        self.graph, self.session = loaded.graph, loaded.session
        self.weight_bytes = loaded.weight_bytes  # what its variables hold
        self.tensors = {name: _spec(self.graph, name) for name in tensors}
        self.timeout_ms = max(1, int(timeout_seconds * 1000)) if timeout_seconds > 0 else 0
        self._callables: OrderedDict[tuple, _Callable] = OrderedDict()
        self._lock = threading.Lock()
        self._connections: dict[str, tuple[str, str]] = {}  # label feed -> (its preprocessed output, image input)
        self._extending = threading.Lock()

    def _label_feed(self, name: str) -> None:
        """Build the preprocessing a label feed name stands for, once (see the module's docstring)."""
        feed = LabelFeed.parse(name)
        if feed is None:
            return
        with self._extending:
            if name in self._connections:
                return
            if len(self._connections) >= MAX_LABEL_FEEDS:
                raise ValueError(f"more than {MAX_LABEL_FEEDS} preprocessing settings for one graph")
            self.graph.get_tensor_by_name(feed.input)  # a KeyError/ValueError names a missing input
            _, output = preprocess.build(self.graph, feed)
            self._connections[name] = (output, feed.input)

    def _options(self, feeds: tuple[str, ...], fetch: tuple[str, ...], *, inline: bool):
        options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetch))
        for name in feeds:
            connection = self._connections.get(name)
            if connection is not None:
                options.tensor_connection.add(from_tensor=connection[0], to_tensor=connection[1])
        if inline:
            options.run_options.inter_op_thread_pool = -1  # the calling thread (no deadline there)
        elif self.timeout_ms:
            # TensorFlow cancels a run past its deadline (checked between ops and in loops).
            options.run_options.timeout_in_ms = self.timeout_ms
        return self.session._make_callable_from_options(options)  # noqa: SLF001 - Session::MakeCallable

    def _callable(self, feeds: tuple[str, ...], fetch: tuple[str, ...]) -> _Callable:
        key = (feeds, fetch)
        with self._lock:
            made = self._callables.get(key)
            if made is not None:
                self._callables.move_to_end(key)
                return made
        for name in feeds:
            if name not in self._connections:
                self._label_feed(name)
        for name in feeds + fetch:  # a KeyError/ValueError here names the tensor that is not in the graph
            self.graph.get_tensor_by_name(name)
        made = _Callable(self._options(feeds, fetch, inline=False),
                         [self.graph.get_tensor_by_name(name).dtype.base_dtype for name in feeds])
        with self._lock:
            self._callables[key] = made
            while len(self._callables) > MAX_CALLABLES:
                self._callables.popitem(last=False)
        return made

    def quick(self, feeds: tuple[str, ...], fetch: tuple[str, ...]) -> bool:
        """Whether a run of this feed/fetch set goes in the calling thread (its runs are short)."""
        made = self._callables.get((feeds, fetch))
        return self.simple and made is not None and made.seconds is not None and made.seconds < INLINE_BELOW_S

    def run(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> dict[str, np.ndarray]:
        names = tuple(feeds)
        made = self._callable(names, tuple(fetch))
        values = [_as_dtype(feeds[n], d, n) for n, d in zip(names, made.dtypes)]
        run = made.pooled
        if self.simple and made.seconds is not None and made.seconds < INLINE_BELOW_S:
            if made.inline is None:
                made.inline = self._options(names, tuple(fetch), inline=True)
            run = made.inline
        started = time.perf_counter()
        results = run(*values)
        took = time.perf_counter() - started
        made.seconds = took if made.seconds is None else made.seconds + 0.2 * (took - made.seconds)
        return {name: np.asarray(value) for name, value in zip(fetch, results)}


def preprocessing(height: int, width: int, mean: float, std: float, dtype: tf.DType,
                  timeout_seconds: float) -> tuple[FrozenSession, str, str]:
    """label_image.py's preprocessing of one setting on its own, for images shared by several graphs (a
    comparison): a session, the feed its encoded images go to, and its output ([batch, height, width, 3]
    of ``dtype``, what a graph's image input of that dtype is fed)."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf1.placeholder(dtype, [None, height, width, 3], name="image")
        tf.identity(image, name="preprocessed")
    session = FrozenSession(graph.as_graph_def().SerializeToString(), [], timeout_seconds)
    return session, LabelFeed("image:0", height, width, mean, std).name, "preprocessed:0"


def _as_dtype(value, dtypes: tuple[tf.DType, type | None], name: str) -> np.ndarray:
    """A fed value as the tensor's dtype (a callable takes arrays as they are); ``dtypes``: the tensor's
    dtype and its numpy type (None for strings)."""
    dtype, want = dtypes
    if want is None:
        return np.asarray(value, dtype=object)
    array = np.asarray(value)
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
