"""Shadow traffic: requests answered through an alias that has a shadow version also run on the shadow.

The alias's version answers exactly as it would alone; then a copy of the request (its parsed inputs
and the primary's outputs) goes on a bounded in-process queue, and one daemon thread runs the shadow
version on the same inputs through the same label service (its graph cache, batcher and inference
workers) and compares: the top-1 class of class-score outputs, the absolute difference of numeric ones
(agreeing within ``REGISTRY_SHADOW_TOLERANCE``).  The shadow never delays or fails the primary answer:
a full queue drops the copy and counts the drop, and a shadow failure is counted, never raised.

Counts are summed per alias and time window (``REGISTRY_SHADOW_WINDOW_SECONDS``) in memory and added
into the database (``registry.catalog.record_shadow``) every ``REGISTRY_SHADOW_FLUSH_SECONDS`` and when
the service stops; Prometheus counters follow every copy.  Inputs are kept only when
``REGISTRY_SHADOW_SAMPLES`` asks for that many disagreeing inputs per alias.  A shadow version that
can no longer be served (deleted, flagged) or that fails on every copy stops shadowing, with an audit
entry.  Nothing runs unless an alias has a shadow: the thread starts with the first copy.

Somewhat over 400 lines: the primary's side (routes, copies, the bounded queue) and the shadow's thread
(gathering, running, comparing, counting per window, storing, stopping) share one lock, one set of
window counts and one failure count per route; split, each half would reach into the other's state.
"""

from __future__ import annotations

import atexit
import logging
import math
import queue
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from registry import catalog, metrics
from registry.catalog import Sample, WindowCounts
from registry.errors import RegistryError
from registry.serving.shadow_compare import Comparison, compare

log = logging.getLogger(__name__)

ROUTE_TTL_S = 1.0  # a shadow set or cleared is seen within this (as a moved alias is)
MAX_CONSECUTIVE_ERRORS = 100  # a shadow failing on this many copies in a row stops shadowing
MAX_COPIES_PER_RUN = 256  # copies queued together run the shadow once (a busy alias costs fewer runs)
GATHER_S = 0.25  # how long the shadow gathers copies before a run: fewer runs (and less CPU) beside the primary's
STOP_STATUSES = frozenset({403, 404, 409})  # the shadow version cannot be served any more
LABEL = ":label"  # a copy of a :label request: encoded images in, class scores out (not a signature)


@dataclass(frozen=True)
class Route:
    """A request's alias with its version and its shadow version."""

    model: str
    alias: str
    primary: int
    shadow: int


@dataclass
class Copy:
    route: Route
    window_start: datetime
    signature: str
    inputs: dict[str, np.ndarray]  # by signature key
    outputs: dict[str, np.ndarray]  # the primary's, by signature key
    scores: str | None  # the output key a labelled primary ranks classes by


def _batch_rows(copy: Copy) -> int | None:
    """The batch size a copy's inputs and outputs share, or None when they share none."""
    firsts = {np.shape(a)[0] if np.ndim(a) else None for a in (*copy.inputs.values(), *copy.outputs.values())}
    return firsts.pop() if len(firsts) == 1 and None not in firsts else None


def batches(copies: list[Copy]) -> list[list[Copy]]:
    """Copies that can share one run of the shadow (same alias, versions and signature; inputs of the same
    dtypes and shapes but for the batch dimension, which the outputs share), in their order."""
    groups: dict[Any, list[Copy]] = {}
    for i, copy in enumerate(copies):
        if _batch_rows(copy) is None:
            key: Any = i  # alone
        else:
            key = (copy.route, copy.signature, copy.scores, tuple(sorted(copy.outputs)),
                   tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in copy.inputs.items())))
        groups.setdefault(key, []).append(copy)
    return list(groups.values())


def _joined(pairs: list[tuple[Copy, dict]], inputs: bool) -> tuple[Copy, dict]:
    """Copies of one batch (see :func:`batches`) and their shadow answers as one copy and one answer
    (their inputs too when ``inputs``: samples need them)."""
    if len(pairs) == 1:
        return pairs[0]
    first = pairs[0][0]
    joined = Copy(first.route, first.window_start, first.signature,
                  {k: np.concatenate([c.inputs[k] for c, _ in pairs]) for k in first.inputs} if inputs else {},
                  {k: np.concatenate([c.outputs[k] for c, _ in pairs]) for k in first.outputs}, first.scores)
    return joined, {k: np.concatenate([a[k] for _, a in pairs]) for k in pairs[0][1]}


def window_start(now: float, seconds: float) -> datetime:
    return datetime.fromtimestamp(math.floor(now / seconds) * seconds, timezone.utc)


def _row_json(array: np.ndarray, rows: int, i: int, key: str) -> Any:
    from registry.serving.tfs_json import _jsonable  # TF Serving's JSON for a value (bytes as b64)

    value = array[i] if array.ndim and array.shape[0] == rows else array
    return _jsonable(np.asarray(value), key)


class ShadowTraffic:
    """The label service's shadowing: routes, the bounded queue, the comparing thread, the windows."""

    def __init__(self, service, stop: threading.Event | None = None) -> None:
        settings = service.settings
        self._service = service
        self._db = service.db
        self.window_seconds = max(1.0, float(settings.shadow_window_seconds))
        self.flush_seconds = max(0.05, float(settings.shadow_flush_seconds))
        self.tolerance = float(settings.shadow_tolerance)
        self.keep = max(0, int(settings.shadow_samples))
        self._queue: queue.Queue[Copy] = queue.Queue(maxsize=max(1, int(settings.shadow_queue_size)))
        self._stop = stop or threading.Event()
        self._halted = threading.Event()  # stop(): the thread ends (and is not started again)
        self._lock = threading.Lock()
        self._windows: dict[tuple, WindowCounts] = {}
        self._samples: dict[tuple[str, str], deque[Sample]] = {}
        self._routes: dict[tuple[str, str], tuple[float, Route | None]] = {}
        self._failures: dict[Route, int] = {}
        self._series: dict[tuple[str, str], dict[str, Any]] = {}  # (model, alias) -> its metrics' series
        self._thread: threading.Thread | None = None

    # -- the primary's side: never raises, never waits ---------------------------------------------

    def route(self, version, ref: str | None) -> Route | None:
        """The shadow of a request for ``ref`` answered by ``version``: only an alias with a shadow
        version other than its own (cached for ``ROUTE_TTL_S``)."""
        if not ref or ref == "latest" or (ref.isascii() and ref.isdecimal()):
            return None
        key = (version.model, ref)
        now = time.monotonic()
        cached = self._routes.get(key)
        if cached is None or now - cached[0] >= ROUTE_TTL_S:
            try:
                found = catalog.shadow_route(self._db, version.model, ref)
            except Exception as exc:  # the database is away: the primary answers all the same
                log.warning("shadow: cannot read the shadow of %s:%s: %s", version.model, ref, exc)
                found = None
            cached = (now, Route(version.model, ref, *found) if found else None)
            self._routes[key] = cached
        route = cached[1]
        if route is None or route.primary != version.version or route.shadow == version.version:
            return None
        return route

    def predict(self, graph, version, ref: str | None, body: Any, max_elements: int) -> dict:
        """TF Serving's :predict answered by ``graph`` exactly as ``tfs_json.predict`` answers it, and
        offered to the alias's shadow when it has one."""
        from registry.serving import tfs_json
        from registry.serving.signature import find  # TensorFlow's protos: with the graph, not this module

        route = self.route(version, ref)
        if route is None:
            return tfs_json.predict(graph, body, max_elements)
        signature = find(graph, tfs_json.signature_name(body), api="predict")
        feeds, form = tfs_json.parse_predict(body, signature.inputs)
        outputs = graph.run(feeds, [s.name for s in signature.outputs])
        tfs_json.check_answer_size(outputs, max_elements)
        answer = tfs_json.format_predict(outputs, signature.outputs, form)
        self._offer(route, graph, signature, feeds, outputs)
        return answer

    def offer(self, graph, version, ref: str | None, signature, feeds: dict, outputs: dict) -> None:
        """A request ``version`` answered for ``ref`` (feeds and outputs keyed by tensor name): a copy
        for the shadow when the alias has one (the hook of gRPC's Predict, and of Classify and Regress
        over REST and gRPC: the shadow runs the same signature on the same examples)."""
        route = self.route(version, ref)
        if route is not None:
            self._offer(route, graph, signature, feeds, outputs)

    def offer_label(self, version, ref: str | None, data: bytes, scores: np.ndarray) -> None:
        """A :label ``version`` answered for ``ref``: the shadow labels the same image bytes with its own
        preprocessing and prediction output, and the two top-1 classes are compared."""
        route = self.route(version, ref)
        if route is None:
            return
        try:
            image = np.empty(1, dtype=object)
            image[0] = data
            self._put(Copy(route, window_start(time.time(), self.window_seconds), LABEL, {"image": image},
                           {"scores": np.asarray(scores).reshape(1, -1)}, "scores"))
        except Exception:  # the primary has answered: nothing here may change that
            log.exception("shadow: could not offer a copy of a request to %s:%s", route.model, route.alias)

    def _offer(self, route: Route, graph, signature, feeds: dict, outputs: dict) -> None:
        try:
            inputs = {s.key: np.asarray(feeds[s.name]) for s in signature.inputs if s.name in feeds}
            answered = {s.key: np.asarray(outputs[s.name]) for s in signature.outputs if s.name in outputs}
            prediction = getattr(graph, "prediction_output", None)
            scores = next((s.key for s in signature.outputs if graph.labels and prediction is not None
                           and s.name == prediction.name), None)
            self._put(Copy(route, window_start(time.time(), self.window_seconds), signature.name, inputs,
                           answered, scores))
        except Exception:  # the primary has answered: nothing here may change that
            log.exception("shadow: could not offer a copy of a request to %s:%s", route.model, route.alias)

    def _put(self, copy: Copy) -> None:
        """Queue a copy for the shadow's thread (or drop it, counted, when the queue is full)."""
        route = copy.route
        try:
            series = self._metrics(route)
            series["requests"].inc()
            self._start()
            try:
                self._queue.put_nowait(copy)
                dropped = False
            except queue.Full:
                dropped = True
            with self._lock:
                window = self._window(copy)
                window.requests += 1
                window.dropped += int(dropped)
            if dropped:
                series["drops"].inc()
        except Exception:  # the primary has answered: nothing here may change that
            log.exception("shadow: could not offer a copy of a request to %s:%s", route.model, route.alias)

    def _metrics(self, route: Route) -> dict[str, Any]:
        """The alias's Prometheus series (``labels()`` validates and locks: once per alias, not per copy)."""
        key = (route.model, route.alias)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = {
                name: metric.labels(*key) for name, metric in (
                    ("requests", metrics.SHADOW_REQUESTS), ("drops", metrics.SHADOW_DROPS),
                    ("comparisons", metrics.SHADOW_COMPARISONS), ("agreements", metrics.SHADOW_AGREEMENTS),
                    ("errors", metrics.SHADOW_ERRORS), ("abs_diff", metrics.SHADOW_ABS_DIFF))}
        return series

    def _window(self, copy: Copy) -> WindowCounts:
        r = copy.route
        key = (r.model, r.alias, r.primary, r.shadow, copy.window_start)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = WindowCounts(r.model, r.alias, r.primary, r.shadow, copy.window_start)
        return window

    # -- the shadow's thread -----------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None or self._halted.is_set():
                return
            self._thread = threading.Thread(target=self._loop, name="shadow-traffic", daemon=True)
            self._thread.start()
        this = weakref.ref(self)
        atexit.register(lambda: (traffic := this()) is not None and traffic.flush())

    def _loop(self) -> None:
        next_flush = time.monotonic() + self.flush_seconds
        while not (self._stop.is_set() or self._halted.is_set()):
            try:
                copies = [self._queue.get(timeout=max(0.01, min(0.25, next_flush - time.monotonic())))]
            except queue.Empty:
                copies = []
            if copies:
                # What queues meanwhile runs in the same run.  Sleeping, not waiting on the queue: a copy put
                # while this thread waits would wake it (and take the GIL from the requests) once per copy.
                self._stop.wait(GATHER_S)
                while len(copies) < MAX_COPIES_PER_RUN:
                    try:
                        copies.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            try:
                for group in batches(copies):
                    self._shadow(group)
            except Exception:
                log.exception("shadow: comparing copies failed")
            finally:
                for _ in copies:
                    self._queue.task_done()
            if time.monotonic() >= next_flush:
                self.flush()
                next_flush = time.monotonic() + self.flush_seconds
        self.flush()

    def _shadow(self, copies: list[Copy]) -> None:
        """Run the shadow on copies' inputs (several copies of one alias and signature in one run, their
        inputs concatenated along the batch dimension) and count what it agreed on, or that it failed."""
        from registry.serving.signature import find  # TensorFlow's protos: loaded with the graphs

        first = copies[0]
        route = first.route
        try:
            version = self._service.resolve(route.model, str(route.shadow))
            if first.signature == LABEL:
                images = np.concatenate([c.inputs["image"] for c in copies])
                scores = self._service.label_scores(version, images.tolist())
                answers = [{"scores": row.reshape(1, -1)} for row in scores]  # one image a copy
                self._answered(copies, answers)
                return
            graph = self._service.graph(version)
            signature = find(graph, first.signature, api="predict")
            specs = {}
            for key in first.inputs:
                specs[key] = signature.input(key)
                if specs[key] is None:
                    raise RegistryError(f"the shadow's signature {signature.name!r} has no input {key!r}",
                                        code="shadow_mismatch")
            fetch = [s for s in signature.outputs if s.key in first.outputs]
            rows = [_batch_rows(copy) for copy in copies]
            feeds = {specs[key].name: (value if len(copies) == 1 else np.concatenate([c.inputs[key] for c in copies]))
                     for key, value in first.inputs.items()}
            results = graph.run(feeds, [s.name for s in fetch])
            if len(copies) == 1:
                answers = [{s.key: results[s.name] for s in fetch}]
            elif all(np.ndim(results[s.name]) and np.shape(results[s.name])[0] == sum(rows) for s in fetch):
                cuts = np.cumsum(rows)[:-1]
                parts = {s.key: np.split(np.asarray(results[s.name]), cuts) for s in fetch}
                answers = [{key: parts[key][i] for key in parts} for i in range(len(copies))]
            else:  # outputs without the inputs' batch dimension: each copy on its own
                for copy in copies:
                    self._shadow([copy])
                return
        except Exception as exc:
            self._failed(copies, exc)
            return
        self._answered(copies, answers)

    def _answered(self, copies: list[Copy], answers: list[dict]) -> None:
        self._failures.pop(copies[0].route, None)
        by_window: dict[datetime, list[tuple[Copy, dict]]] = {}
        for copy, answered in zip(copies, answers):
            by_window.setdefault(copy.window_start, []).append((copy, answered))
        for pairs in by_window.values():  # one comparison of the window's copies, concatenated
            self._compared(*_joined(pairs, inputs=self.keep > 0))

    def _compared(self, copy: Copy, answered: dict[str, np.ndarray]) -> None:
        found = compare(copy.outputs, answered, self.tolerance, copy.scores)
        agreed = int(found.agree.sum())
        with self._lock:
            window = self._window(copy)
            window.compared += found.rows
            window.agreed += agreed
            window.values += found.values
            window.sum_abs_diff += found.sum_abs_diff
            window.max_abs_diff = max(window.max_abs_diff, found.max_abs_diff)
            if self.keep and agreed < found.rows:
                self._keep_samples(copy, answered, found)
        series = self._metrics(copy.route)
        series["comparisons"].inc(found.rows)
        series["agreements"].inc(agreed)
        histogram = series["abs_diff"]
        for largest in found.largest.tolist():
            histogram.observe(largest)

    def _keep_samples(self, copy: Copy, answered: dict, found: Comparison) -> None:
        r = copy.route
        kept = self._samples.setdefault((r.model, r.alias), deque(maxlen=self.keep))
        rows = found.rows
        for i in np.flatnonzero(~found.agree).tolist():
            kept.append(Sample(
                r.model, r.alias, r.primary, r.shadow,
                {k: _row_json(np.asarray(v), rows, i, k) for k, v in copy.inputs.items()},
                {k: _row_json(np.asarray(v), rows, i, k) for k, v in copy.outputs.items()},
                {k: _row_json(np.asarray(v), rows, i, k) for k, v in answered.items()}))

    def _failed(self, copies: list[Copy], exc: Exception) -> None:
        route = copies[0].route
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        with self._lock:
            for copy in copies:
                self._window(copy).errors += 1
        self._metrics(route)["errors"].inc(len(copies))
        failures = self._failures[route] = self._failures.get(route, 0) + len(copies)
        unservable = isinstance(exc, RegistryError) and exc.status in STOP_STATUSES
        if unservable or failures >= MAX_CONSECUTIVE_ERRORS:
            reason = message if unservable else f"it failed on {failures} copies in a row; the last: {message}"
            log.warning("shadow: version %d stops shadowing %s:%s: %s", route.shadow, route.model, route.alias,
                        reason)
            try:
                catalog.stop_shadow(self._db, route.model, route.alias, route.shadow, reason)
            except Exception as stop_exc:
                log.warning("shadow: could not stop shadowing %s:%s: %s", route.model, route.alias, stop_exc)
            self._routes.pop((route.model, route.alias), None)
            self._failures.pop(route, None)
        else:
            log.info("shadow: version %d failed on %d copies of %s:%s: %s", route.shadow, len(copies), route.model,
                     route.alias, message)

    # -- storing, stopping -------------------------------------------------------------------------

    def flush(self) -> None:
        """Add the windows counted so far (and the samples kept) into the database."""
        with self._lock:
            windows, self._windows = self._windows, {}
            samples = [s for kept in self._samples.values() for s in kept]
            self._samples = {}
        if not windows and not samples:
            return
        try:
            catalog.record_shadow(self._db, list(windows.values()), samples, keep=self.keep)
        except Exception as exc:  # the database is away: keep the counts for the next flush
            log.warning("shadow: could not store the shadow figures (kept for the next try): %s", exc)
            with self._lock:
                for key, counts in windows.items():
                    if key in self._windows:
                        self._windows[key].add(counts)
                    else:
                        self._windows[key] = counts

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued copy was compared (True), or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self) -> None:
        """Stop the shadow's thread (copies offered from now on wait in the queue while it has room, and
        are dropped and counted once it is full) and store what was counted.  The label service calls it
        when it closes."""
        self._halted.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self.flush()
