"""What the label service does, independent of HTTP or gRPC: resolve a
version, load it (cached) into an inference worker, label images, compare
versions, predict.

Graphs run in supervised worker processes (:mod:`registry.serving.workers`),
never in this one: a request that makes a graph allocate without bound fails
alone, and the service goes on answering.  Refusals (a version not ready, a
flagged graph, an upload that is not an image or too large one) happen here,
before a worker sees anything.

Images are not decoded here: ``:label`` and ``:compare`` send the encoded bytes
to a string input of the version's graph that label_image.py's preprocessing
for the version's settings feeds from (:class:`registry.serving.images.LabelFeed`,
built in the worker by :mod:`registry.serving.preprocess`), so each version
labels a request's images in one ``Session.run``, batched with concurrent
requests, and untrusted bytes are decoded only in the sandboxed worker.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from registry import catalog, heap, metrics, safety
from registry.config import Settings
from registry.db import Database
from registry.entities import READY, VersionInfo, label_lines
from registry.errors import Conflict, InvalidRequest, NotFound, RegistryError
from registry.serving.cache import GraphCache
from registry.serving.images import ImageInfo, LabelFeed, sniff
from registry.serving.shadow import ShadowTraffic
from registry.serving.workers import WorkerError, WorkerPool
from registry.storage import BlobStorage

MAX_TOP_K = 1000
RESOLVE_TTL_S = 1.0


@dataclass(frozen=True)
class Image:
    name: str
    data: bytes


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _graph_labels(graph) -> tuple[str, str]:
    """The (model, version) metrics labels of a loaded graph."""
    return graph.version.model, str(graph.version.version)


def validate_top_k(value, default: int = 5) -> int:
    if value in (None, ""):
        return default
    try:
        top_k = int(value)
    except (TypeError, ValueError):
        top_k = 0
    if not 1 <= top_k <= MAX_TOP_K or isinstance(value, bool):
        raise InvalidRequest(f"top_k must be a whole number from 1 to {MAX_TOP_K}, not {value!r}",
                             code="invalid_top_k")
    return top_k


class LabelService:
    def __init__(self, settings: Settings, db: Database, storage: BlobStorage,
                 stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.cache = GraphCache(settings.label_cache_mb * 1024 * 1024, self._load, on_evict=lambda g: g.evict(),
                                describe=_graph_labels)
        self._resolved: dict[tuple[str, str], tuple[float, VersionInfo]] = {}
        # Started now, so the first request finds a worker (almost) ready; stopped with ``stop``.
        self.pool = WorkerPool(count=settings.label_workers, memory_mb=settings.label_memory_mb,
                               run_timeout=settings.label_timeout_seconds or None, on_lost=self._worker_lost,
                               stop=stop)
        # Shadow traffic: a copy of what an alias with a shadow version answers, run there (registry.serving.shadow)
        self.shadow = ShadowTraffic(self, stop)

    def close(self) -> None:
        """Stop the inference workers (their graphs go: the cache's gauges drop them)."""
        self.shadow.stop()
        self.pool.close()
        self.cache.discard(lambda _key, _graph: True)

    def _worker_lost(self, worker) -> None:
        """A worker died or is being replaced: its graphs load again (elsewhere) on their next request."""
        self.cache.discard(lambda _key, graph: graph.worker is worker)

    # -- versions ---------------------------------------------------------------------

    def resolve(self, name: str, ref: str | None) -> VersionInfo:
        """The version to serve, or a 409 saying why it cannot be served.

        Answers are remembered for ``RESOLVE_TTL_S`` (a moved alias or a new
        latest version is seen within that), which saves the catalog queries on
        every request of a busy version.
        """
        key = (name, ref or "latest")
        now = time.monotonic()
        cached = self._resolved.get(key)
        if cached is not None and now - cached[0] < RESOLVE_TTL_S:
            version = cached[1]
        else:
            version = self._resolve(name, ref or "latest")
            self._resolved[key] = (now, version)
        metrics.served(version.model, version.version)  # the request's metrics labels: a real version
        return version

    def _resolve(self, name: str, ref: str) -> VersionInfo:
        try:
            version = catalog.get_version(self.db, name, ref)
        except NotFound as exc:
            # TF Serving's words first (its clients and tests look for them), then ours
            request = f"Latest({name})" if ref == "latest" else f"Specific({name}, {ref})" if ref.isdigit() else None
            if request is None:
                raise
            raise NotFound(f"Servable not found for request: {request}: {exc.message}", code=exc.code) from None
        if version.status != READY:
            detail = f" ({version.status_message})" if version.status_message else ""
            raise Conflict(f"version {version.version} of {name!r} is {version.status}{detail}; only ready "
                           "versions can be served", code="version_not_ready")
        # Flagged graphs are never run (nor loaded): registry.safety decides from the stored
        # scan and the model's current op allowlist, so an admin's change applies at once.
        safety.ensure_runnable(version)
        return version

    def graph(self, version: VersionInfo):
        """The loaded graph of a ready version (from the cache, or loaded now)."""
        return self.cache.get((version.id, version.frozen_sha256))

    def _reload(self, stale):
        """The graph of ``stale``'s version, loaded again (its worker is gone)."""
        self.cache.discard(lambda key, graph: graph is stale)
        return self.cache.get(stale.key)

    def _load(self, key):
        from registry.serving.loader import LoadedGraph  # TensorFlow: with the first graph, not the service

        heap.freeze_imports()  # what the imports made, out of full collections before the first graph
        version = catalog.get_version_by_id(self.db, key[0])
        with self.storage.open(version.frozen_sha256) as stream:
            frozen = stream.read()
        labels = None
        labels_file = version.file("labels")
        if labels_file is not None:
            with self.storage.open(labels_file.sha256) as stream:
                labels = label_lines(stream.read())
            labels = version.class_labels(labels)
        graph = LoadedGraph(version, key, frozen, labels, pool=self.pool, reload=self._reload,
                            max_batch=self.settings.batch_max_size,
                            timeout_seconds=self.settings.label_timeout_seconds)
        graph.batcher.labels = _graph_labels(graph)
        return graph

    def _timed_graph(self, version: VersionInfo):
        started = time.perf_counter()
        cold = (version.id, version.frozen_sha256) not in self.cache.keys()
        graph = self.graph(version)
        return graph, (_ms(time.perf_counter() - started) if cold else 0.0)

    # -- labelling -----------------------------------------------------------------------

    def _image_input(self, version: VersionInfo) -> dict:
        spec = version.image_input or version.image_bytes_input
        if spec is None:
            described = ", ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in version.input_nodes or []) or "none"
            raise InvalidRequest(
                f"version {version.version} of {version.model!r} does not take an image (its inputs: {described}; "
                "an image input is a float tensor [batch, height, width, 3], or a string vector [batch] of encoded "
                "images the graph decodes): use :predict instead",
                code="not_an_image_model",
            )
        return spec

    def _sniff(self, images: list[Image]) -> list[ImageInfo]:
        """Each image's format, after refusing what is not an image or decodes to too many pixels."""
        return [sniff(image.data, self.settings.max_image_pixels) for image in images]

    @staticmethod
    def _feed(version: VersionInfo) -> str:
        """The input the encoded images go to: the graph's own string input when it decodes them, else the
        label_image.py preprocessing of the version's current settings in front of its image input."""
        if version.image_input is None and version.image_bytes_input is not None:
            return f"{version.image_bytes_input['name']}:0"
        p = version.preprocessing
        return LabelFeed(f"{version.image_input['name']}:0", int(p["input_height"]), int(p["input_width"]),
                         float(p["input_mean"]), float(p["input_std"])).name

    def _run_images(self, graph, version: VersionInfo, images: list[Image], infos: list[ImageInfo],
                    fetch: str) -> dict:
        """One ``Session.run`` of ``graph`` from the images' bytes to ``fetch`` (batched with concurrent
        requests when the image input takes a batch)."""
        feed = self._feed(version)
        spec = self._image_input(version)
        batch = np.empty(len(images), dtype=object)
        batch[:] = [image.data for image in images]
        rank = 1 if feed == f"{spec['name']}:0" else 4
        batchable = graph.batchable({f"{spec['name']}:0": np.empty((0,) * rank)})
        try:
            return dict(zip([fetch], graph.batcher.submit({feed: batch}, (fetch,), batchable=batchable)))
        except RegistryError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, WorkerError) and cause.kind == "invalid_image"):
                raise
            formats = sorted({info.format.upper() for info in infos})
            which = f"the {formats[0]} image" if len(images) == 1 else f"one of the {len(images)} images"
            # TensorFlow's own words help only when they say more than that the graph failed
            detail = "" if not cause.message or "Graph execution error" in cause.message else f" ({cause.message})"
            raise InvalidRequest(f"{which} cannot be decoded: it is truncated or corrupt{detail}; send an intact "
                                 "image", code="invalid_image") from exc

    @staticmethod
    def _prediction_output(graph, version: VersionInfo) -> str:
        """The tensor to rank classes by: the resolved version's prediction output, so a new choice
        applies without loading the graph again (the graph's own is the one it was loaded with)."""
        node = version.prediction_node
        spec = next((s for s in graph.outputs if node and s.name == f"{node}:0"), graph.prediction_output)
        return spec.name

    @staticmethod
    def _scores(name: str, outputs: dict, rows: int) -> np.ndarray:
        """Per-image class scores from output ``name``, as label_image.py reads them."""
        scores = np.asarray(outputs[name])
        scores = scores.reshape(rows, -1) if scores.size % rows == 0 and scores.ndim >= 1 else None
        if scores is None or scores.shape[1] < 1:
            raise InvalidRequest(f"output {name} is not one score per class ({np.shape(outputs[name])}): "
                                 "use :predict", code="not_a_classifier")
        return scores

    def _top(self, graph, scores: np.ndarray, top_k: int) -> list[dict]:
        k = min(top_k, scores.shape[0])
        order = np.argsort(scores, kind="stable")[::-1][:k]
        labels = graph.labels or []
        return [{"index": int(i), "label": labels[i] if i < len(labels) and labels[i] else str(int(i)),
                 "score": float(scores[i])} for i in order]

    def label(self, version: VersionInfo, image: Image, top_k: int = 5, ref: str | None = None) -> dict:
        """label_image.py's top-k for one image, on a version from :meth:`resolve` (for ``ref``: an alias
        with a shadow version gets a copy)."""
        started = time.perf_counter()
        self._image_input(version)
        infos = self._sniff([image])
        graph, load_ms = self._timed_graph(version)
        run_started = time.perf_counter()
        prediction = self._prediction_output(graph, version)
        outputs = self._run_images(graph, version, [image], infos, prediction)
        inference_s = time.perf_counter() - run_started
        scores = self._scores(prediction, outputs, 1)[0]
        if top_k > scores.shape[0]:
            raise InvalidRequest(f"top_k is {top_k} but the model has {scores.shape[0]} classes",
                                 code="invalid_top_k")
        if ref is not None:
            self.shadow.offer_label(version, ref, image.data, scores)
        return {
            "model": version.model,
            "version": version.version,
            "predictions": self._top(graph, scores, top_k),
            # preprocess: outside the graph, none (kept for clients); inference decodes, resizes and runs the model
            "timing_ms": {"load": load_ms, "preprocess": 0.0, "inference": _ms(inference_s),
                          "total": _ms(time.perf_counter() - started)},
        }

    def label_scores(self, version: VersionInfo, images: list[bytes]) -> np.ndarray:
        """Each encoded image's class scores, as :label computes them (the shadow's run of :label copies)."""
        batch = [Image(f"image{i + 1}", data) for i, data in enumerate(images)]
        self._image_input(version)
        infos = self._sniff(batch)
        graph = self.graph(version)
        prediction = self._prediction_output(graph, version)
        return self._scores(prediction, self._run_images(graph, version, batch, infos, prediction), len(batch))

    # -- comparing -------------------------------------------------------------------------

    def run_comparison(self, report_id: int, heartbeat=None) -> str:
        """A queued comparison report, run here (a worker's compare job; registry.serving.comparisons):
        "done", "lost" (the job's lease went elsewhere) or why it failed for good."""
        from registry.serving.comparisons import run_report

        return run_report(self, self.storage, report_id, heartbeat)

    def _compare_versions(self, name: str, refs: list[str] | None) -> list[tuple[str, VersionInfo]]:
        cap = self.settings.compare_max_versions
        if refs:
            if len(refs) > cap:
                raise InvalidRequest(f"compare at most {cap} versions at once (REGISTRY_COMPARE_MAX_VERSIONS)",
                                     code="too_many_versions")
            chosen = [(ref, self.resolve(name, ref)) for ref in refs]
        else:
            page = catalog.list_versions(self.db, name, status=READY, page_size=cap)
            # By default compare what can be run: flagged versions are left out, named ones refused.
            runnable = [v for v in page.items if safety.refusal(v) is None]
            chosen = [(str(v.version), self.resolve(name, str(v.version))) for v in runnable]
            if not chosen:
                flagged = [v.refusal for v in page.items if v.refusal]
                if flagged:
                    raise Conflict(f"model {name!r} has no ready version the registry may run: {flagged[0]}",
                                   code=safety.FLAGGED_CODE)
                raise Conflict(f"model {name!r} has no ready version to compare", code="version_not_ready")
        unique: dict[int, tuple[str, VersionInfo]] = {}
        for ref, version in chosen:
            unique.setdefault(version.version, (ref, version))
        return list(unique.values())
