"""A version's frozen graph, loaded into an inference worker, as the label service sees it.

The graph itself lives in a worker process (:mod:`registry.serving.workers`);
this object holds its signature, batches concurrent requests and turns what
the worker answers into registry errors.  It does not import TensorFlow: a
tensor's dtype becomes a ``tf.DType`` when it is first asked for (by
``:predict`` and the TF Serving APIs), so a label service that only labels
never loads TensorFlow (about 650 MB) next to its workers.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from registry import heap
from registry.entities import VersionInfo
from registry.errors import InferenceUnavailable, InvalidRequest, PayloadTooLarge, RegistryError, TimedOut
from registry.serving.batching import Batcher
from registry.serving.workers import MAX_OUTPUT_BYTES, READY, NoWorker, WorkerError, WorkerLost, WorkerPool

if TYPE_CHECKING:
    import tensorflow as tf


class TensorSpec:
    """A signature's tensor.  ``dtype`` is given as a ``tf.DType`` or anything ``tf.as_dtype`` takes (a
    DataType number, a name) and read as a ``tf.DType``, made on first use."""

    __slots__ = ("key", "name", "_dtype", "shape", "optional")

    def __init__(self, key: str, name: str, dtype: Any, shape: list[int | None] | None,
                 optional: bool = False) -> None:
        self.key = key  # signature key
        self.name = name  # graph tensor name, "node:0"
        self._dtype = dtype
        self.shape = shape  # None: unknown rank
        self.optional = optional  # a PlaceholderWithDefault

    @property
    def dtype(self) -> "tf.DType":
        dtype = self._dtype
        if type(dtype).__name__ != "DType":
            import tensorflow as tf  # on first use (see the module's docstring)

            heap.freeze_imports()  # TensorFlow has just come: its objects out of full collections
            dtype = self._dtype = tf.as_dtype(dtype)
        return dtype

    def _fields(self) -> tuple:
        return self.key, self.name, self.dtype, self.shape, self.optional

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorSpec) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.key, self.name))

    def __repr__(self) -> str:
        return (f"TensorSpec(key={self.key!r}, name={self.name!r}, dtype={self._dtype!r}, shape={self.shape!r}, "
                f"optional={self.optional!r})")


@dataclass(frozen=True)
class Signature:
    """One signature of a loaded version (registry.signatures), its tensors described."""

    name: str
    method: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def input(self, key: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.key == key), None)

    def output(self, key: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.key == key), None)


def _tensor_spec(key: str, entry: dict, described: dict) -> TensorSpec:
    """A signature's tensor: its recorded dtype and shape (what the SavedModel declared), else the graph's."""
    graph = described[entry["name"]]
    dtype = entry.get("dtype") or graph["dtype"]  # a tf.DType when first read
    shape = entry["shape"] if "shape" in entry else graph["shape"]
    return TensorSpec(key, graph["name"], dtype, shape, bool(entry.get("optional")))


def _signatures(signature_map: dict, described: dict) -> dict[str, Signature]:
    return {name: Signature(name, sig["method"],
                            [_tensor_spec(k, e, described) for k, e in sig["inputs"].items()],
                            [_tensor_spec(k, e, described) for k, e in sig["outputs"].items()])
            for name, sig in signature_map.items()}


def memory_estimate(frozen_bytes: int) -> int:
    """What a graph will hold before it is loaded: its weights once (registry.serving.weights) and some
    MB of graph and session.  Once loaded, the worker's measure of what it added replaces this."""
    return frozen_bytes + 16 * 1024 * 1024


class LoadedGraph:
    """What the label service runs.  ``run`` is thread-safe; concurrent calls with compatible
    inputs are batched into one ``Session.run`` in the worker."""

    def __init__(self, version: VersionInfo, key: Any, frozen: bytes, labels: list[str] | None, *,
                 pool: WorkerPool, reload: Callable[["LoadedGraph"], "LoadedGraph"], max_batch: int = 16,
                 timeout_seconds: float = 0.0) -> None:
        self.version = version
        self.key = key
        self.labels = labels
        self.memory_bytes = memory_estimate(len(frozen))
        self.timeout_seconds = timeout_seconds
        self._pool = pool
        self._reload = reload
        signature_map = version.signature_map
        tensors = sorted({entry["name"] for sig in signature_map.values() for side in ("inputs", "outputs")
                          for entry in sig[side].values()})
        try:
            self.worker, answer = pool.load(key, frozen, tensors, timeout_seconds=timeout_seconds,
                                            estimate=self.memory_bytes)
        except NoWorker as exc:
            raise InferenceUnavailable(f"no inference worker can load version {version.version} of "
                                       f"{version.model!r}: {exc}", code="inference_unavailable") from exc
        except WorkerLost as exc:
            raise self._unavailable(exc, "loading it") from exc
        except WorkerError as exc:
            if exc.kind == "memory":
                raise InferenceUnavailable(
                    f"version {version.version} of {version.model!r} does not fit in an inference worker "
                    f"({pool.memory_mb} MB of address space, REGISTRY_LABEL_MEMORY_MB): {exc.message}",
                    code="inference_out_of_memory") from exc
            raise RegistryError(f"version {version.version} of {version.model!r} could not be loaded for "
                                f"inference: {exc.message}", code="inference_failed") from exc
        # what the graph really costs: the memory the worker measured it added (the cache counts this)
        self.memory_bytes = int(answer.get("memory_bytes") or self.memory_bytes)
        self.signatures = _signatures(signature_map, answer["tensors"])
        # The signature input_nodes and output_nodes describe: what :label runs
        default = self.signatures.get(version.default_signature) or next(iter(self.signatures.values()))
        self.inputs, self.outputs = default.inputs, default.outputs
        node = version.prediction_node
        self.prediction_output = next((s for s in self.outputs if node and s.name == f"{node}:0"),
                                      self.outputs[0] if self.outputs else None)
        self._by_key = {s.key: s for s in self.inputs + self.outputs}
        self._by_key.update({s.name.rsplit(":", 1)[0]: s for s in self.inputs + self.outputs})
        self.batcher = Batcher(self._run_now, max_batch=max_batch)
        self._lock = threading.Lock()
        self._users = 0
        self._evicted = False
        self._unloaded = False

    def spec(self, key: str) -> TensorSpec | None:
        """An input or output by signature key or node name."""
        return self._by_key.get(key)

    @property
    def usable(self) -> bool:
        """Loaded in a worker that takes work (a graph of a dead or replaced worker is loaded again)."""
        return not self._unloaded and self.worker.state == READY

    def evict(self) -> None:
        """The cache let go of this graph: unload it from its worker once no request runs it."""
        with self._lock:
            self._evicted = True
            unload = self._users == 0 and not self._unloaded
            self._unloaded = self._unloaded or unload
        if unload:
            self._pool.unload(self.worker, self.key)

    def _run_now(self, feeds: dict[str, np.ndarray], fetch: tuple[str, ...], attempt: int = 0) -> list[np.ndarray]:
        with self._lock:
            usable = self.usable
            if usable:
                self._users += 1
        if not usable:
            if attempt:
                raise self._unavailable(WorkerLost("its worker stopped again"), "loading it")
            return self._reload(self)._run_now(feeds, fetch, attempt + 1)
        try:
            return self._pool.run(self.worker, self.key, feeds, fetch)
        except WorkerLost as exc:
            if self.worker.stopping and not attempt:  # replaced on purpose just as this was sent
                with self._lock:
                    self._unloaded = True
                return self._run_now(feeds, fetch, attempt + 1)
            raise self._unavailable(exc, "running this request") from exc
        except WorkerError as exc:
            if exc.kind != "not_loaded" or attempt:
                self._raise(exc)
            with self._lock:
                self._unloaded = True  # the worker was replaced under us: load it again
            return self._run_now(feeds, fetch, attempt + 1)
        finally:
            self._release()

    @contextlib.contextmanager
    def held(self) -> Iterator[bool]:
        """Keeps the graph in its worker (an eviction meanwhile unloads it afterwards) while the caller runs
        it there directly (``WorkerPool.run_shared``).  Yields whether it is usable: if not, :meth:`run`
        loads it again."""
        with self._lock:
            usable = self.usable
            if usable:
                self._users += 1
        try:
            yield usable
        finally:
            if usable:
                self._release()

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            unload = self._evicted and self._users == 0 and not self._unloaded
            self._unloaded = self._unloaded or unload
        if unload:
            self._pool.unload(self.worker, self.key)

    def _raise(self, exc: WorkerError):
        version = self.version
        if exc.kind == "timeout":
            raise TimedOut(f"version {version.version} of {version.model!r} took longer than "
                           f"{self.timeout_seconds:g} s and was stopped (REGISTRY_LABEL_TIMEOUT_SECONDS)",
                           code="inference_timed_out") from exc
        if exc.kind == "invalid":
            raise InvalidRequest(f"the model refused the input: {exc.message}", code="invalid_input") from exc
        if exc.kind == "memory":
            raise PayloadTooLarge(
                f"version {version.version} of {version.model!r} needs more memory for this input than an "
                f"inference worker may use ({self._pool.memory_mb} MB of address space, REGISTRY_LABEL_MEMORY_MB) "
                f"and was stopped ({exc.message}): send a smaller input", code="inference_out_of_memory") from exc
        if exc.kind == "too_large":
            size = int(exc.message) if exc.message.isdigit() else 0
            raise PayloadTooLarge(
                f"the outputs of version {version.version} of {version.model!r} for this input are "
                f"{size / 2**20:.0f} MB, more than the {MAX_OUTPUT_BYTES >> 20} MB an answer may "
                "carry: send a smaller input", code="output_too_large") from exc
        raise RegistryError(f"version {version.version} of {version.model!r} failed on this input: "
                            f"{exc.message}", code="inference_failed") from exc

    def _unavailable(self, exc: Exception, doing: str) -> InferenceUnavailable:
        return InferenceUnavailable(
            f"the inference worker stopped while {doing} for version {self.version.version} of "
            f"{self.version.model!r} ({exc}); it may have run out of memory under its "
            f"{self._pool.memory_mb} MB limit (REGISTRY_LABEL_MEMORY_MB). Another worker takes its place: "
            "try again", code="inference_unavailable")

    def run(self, feeds: dict[str, np.ndarray], fetch: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run with ``feeds`` keyed by tensor name; returns outputs keyed by tensor name."""
        names = tuple(fetch or [o.name for o in self.outputs])
        results = self.batcher.submit(feeds, names, batchable=self.batchable(feeds))
        return dict(zip(names, results))

    def batchable(self, feeds: dict[str, Any]) -> bool:
        """Requests can share a Session.run when every fed input has a free batch dimension."""
        ranks = self._batch_ranks
        return all(ranks.get(name) == np.ndim(value) for name, value in feeds.items())

    @functools.cached_property
    def _batch_ranks(self) -> dict[str, int]:
        """The rank of each input (of any signature) whose first dimension is free, by tensor name."""
        specs = {s.name: s for sig in self.signatures.values() for s in sig.inputs}
        return {name: len(s.shape) for name, s in specs.items() if s.shape and s.shape[0] is None}


def run_shared(graphs: list[LoadedGraph], setting: tuple[int, int, float, float], images: np.ndarray,
               inputs: list[str], fetches: list[str]) -> tuple[list[np.ndarray], dict] | None:
    """Each graph's ``fetches[i]`` with ``images`` (encoded) decoded once, by label_image.py's preprocessing
    of ``setting`` (height, width, mean, std), and fed to its image input ``inputs[i]``: one call to the
    worker that holds them all.  With the seconds the worker measured.  None when the graphs are not all
    usable in one worker, or the call fails: run them one by one then (that loads a graph again, and
    answers a failure as a single run does, for the version it concerns)."""
    with contextlib.ExitStack() as stack:
        if not all(stack.enter_context(graph.held()) for graph in graphs):
            return None
        worker = graphs[0].worker
        if any(graph.worker is not worker for graph in graphs):
            return None
        targets = [(graph.key, name, [fetch]) for graph, name, fetch in zip(graphs, inputs, fetches)]
        try:
            outputs, seconds = graphs[0]._pool.run_shared(worker, setting, images, targets)  # noqa: SLF001
        except (WorkerLost, WorkerError):
            return None
    return [output[0] for output in outputs], seconds
