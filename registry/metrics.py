"""The registry's Prometheus metrics, and the scrape at ``/monitoring/prometheus/metrics``.

TF Serving users scrape that path; the registry answers it in Prometheus's text
format from the ``prometheus_client`` library.  Every metric is defined here,
so a name or a label set is written once; the label service, the graph cache,
the batcher, pushes and the converter workers record into them.  This module
imports neither TensorFlow nor numpy: the web app imports it.

Several server processes (``registry serve --gunicorn``) each count on their
own.  prometheus_client's multiprocess mode adds them up: when
``PROMETHEUS_MULTIPROC_DIR`` is set (``registry.cli.server`` sets it for
gunicorn) every process writes its values to files there and a scrape, in
whichever process it lands, reads them all.

In one process (``registry serve``, ``label-serve``: the gRPC API among them) what a request counts
goes into a queue, and the scrape records it before it reads the values (``_deferred``): on a
request's path that is one append instead of a few locked updates of prometheus_client's values, which
is what a request spends most on here when its caches are cold.  A scrape sees every request answered
before it.  In multiprocess mode each process records at once, since a scrape may land in another.

Labels never take a value straight from a request: a request that names no
servable version is counted with empty ``model`` and ``version`` labels, so
callers cannot add time series by asking for made-up names.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from registry.errors import RegistryError

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client chose file-backed values when it was imported (above) if this was set then.
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))
PATH = "/monitoring/prometheus/metrics"  # TF Serving's (--monitoring_config_file's default path)
# The classic text format every Prometheus reads (our names are plain ASCII, so 1.0.0's bytes are the same).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SIGNATURE = "serving_default"  # the one signature a frozen graph is served under
# The TF Serving methods that name a signature; :label, :compare and status requests do not.
SIGNATURE_METHODS = frozenset({"predict", "classify", "regress", "metadata"})
METHODS = frozenset({"predict", "classify", "regress", "multi_inference", "label", "compare", "metadata", "status"})

if MULTIPROCESS:  # the metrics below without labels write their file there as soon as they exist
    os.makedirs(os.environ[MULTIPROC_ENV], mode=0o700, exist_ok=True)

# ``x_created`` series double the output and mean nothing across restarts (multiprocess mode
# never writes them): left out, so one process and several expose the same series.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONVERSION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0)

# -- the label service ---------------------------------------------------------------------------

_REQUEST_LABELS = ("model", "version", "signature", "api", "method")
REQUESTS = Counter("registry_serving_requests", "Label-service requests answered, by outcome "
                   "(status: the gRPC code the answer maps to; OK for a success).",
                   [*_REQUEST_LABELS, "status"])
REQUEST_SECONDS = Histogram("registry_serving_request_duration_seconds",
                            "Time a label-service request took in its handler (reading the body, "
                            "running the graph, building the answer).", _REQUEST_LABELS,
                            buckets=LATENCY_BUCKETS)
BATCH_REQUESTS = Histogram("registry_serving_batch_requests", "Requests that went together into one "
                           "Session.run (1: ran alone).", ["model", "version"], buckets=BATCH_BUCKETS)
BATCH_ROWS = Histogram("registry_serving_batch_rows", "Rows (batch dimension) of one Session.run.",
                       ["model", "version"], buckets=BATCH_BUCKETS)

# -- shadow traffic (registry.serving.shadow) ----------------------------------------------------

ABS_DIFF_BUCKETS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0)
SHADOW_REQUESTS = Counter("registry_shadow_requests", "Requests answered through an alias that has a shadow "
                          "version (each offers the shadow a copy).", ["model", "alias"])
SHADOW_COMPARISONS = Counter("registry_shadow_comparisons", "Inputs both the alias's version and its shadow "
                             "answered, compared.", ["model", "alias"])
SHADOW_AGREEMENTS = Counter("registry_shadow_agreements", "Compared inputs on which primary and shadow agree "
                            "(same top-1 class; numeric outputs within REGISTRY_SHADOW_TOLERANCE).", ["model", "alias"])
SHADOW_DROPS = Counter("registry_shadow_drops", "Copies dropped because the shadow queue was full "
                       "(REGISTRY_SHADOW_QUEUE_SIZE); the primary answered regardless.", ["model", "alias"])
SHADOW_ERRORS = Counter("registry_shadow_errors", "Copies the shadow version failed on (never the primary's "
                        "answer).", ["model", "alias"])
SHADOW_ABS_DIFF = Histogram("registry_shadow_abs_diff", "Largest absolute difference between primary and shadow "
                            "output values, per compared input.", ["model", "alias"], buckets=ABS_DIFF_BUCKETS)

# -- the graph cache -----------------------------------------------------------------------------

CACHE_LOADS = Counter("registry_graph_cache_loads", "Graphs loaded into an inference worker.",
                      ["model", "version"])
CACHE_HITS = Counter("registry_graph_cache_hits", "Requests that found their graph loaded (or being "
                     "loaded by another request).", ["model", "version"])
CACHE_EVICTIONS = Counter("registry_graph_cache_evictions", "Graphs the cache let go of to stay within "
                          "REGISTRY_LABEL_CACHE_MB.", ["model", "version"])
CACHE_BYTES = Gauge("registry_graph_cache_bytes", "Estimated memory of the loaded graphs (summed over "
                    "the live server processes).", multiprocess_mode="livesum")
CACHE_GRAPHS = Gauge("registry_graph_cache_graphs", "Graphs loaded (summed over the live server processes).",
                     multiprocess_mode="livesum")

# -- pushes and conversions ----------------------------------------------------------------------

PUSHES = Counter("registry_pushes", "Pushes whose form was read, by outcome (accepted, refused with a 4xx, "
                 "failed); code: the error's code (empty when accepted).", ["outcome", "code"])
CONVERSIONS = Counter("registry_conversions", "Conversion jobs a worker finished an attempt of, by outcome "
                      "(ready, failed, retried, lost_lease, deleted).", ["outcome"])
CONVERSION_SECONDS = Histogram("registry_conversion_duration_seconds", "Time one conversion attempt took "
                               "(laying out the upload, converting, storing the results).", ["outcome"],
                               buckets=CONVERSION_BUCKETS)
QUEUE_DEPTH = "registry_job_queue_depth"

# The gRPC code names a registry error's HTTP status maps to: the label service's gRPC answers and the
# ``status`` label of every request, REST or gRPC, use this one table.
_STATUS_NAMES = {200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 405: "INVALID_ARGUMENT", 409: "FAILED_PRECONDITION", 413: "RESOURCE_EXHAUSTED",
                 429: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def status_name(http_status: int) -> str:
    """The gRPC code name an answer with ``http_status`` counts under (TF Serving's ``status`` label)."""
    return _STATUS_NAMES.get(http_status, "INTERNAL" if http_status >= 500 else "UNKNOWN")


def _status_of(exc: BaseException) -> str:
    """The ``status`` of a request that ended in ``exc``: a registry error's, an HTTP error's
    (werkzeug's, e.g. a body too large), else INTERNAL."""
    if isinstance(exc, RegistryError):
        return status_name(exc.status)
    code = getattr(exc, "code", None)
    return status_name(code) if isinstance(code, int) else "INTERNAL"


@dataclass(slots=True)
class Observation:
    """One label-service request being measured; its labels fill in as the request learns them."""

    api: str  # "rest" | "grpc"
    method: str
    model: str = ""
    version: str = ""
    status: str = "OK"
    signature_name: str | None = None  # the signature the request named, once the version has it

    @property
    def signature(self) -> str:
        if self.signature_name is not None:
            return self.signature_name
        return SIGNATURE if self.model and self.method in SIGNATURE_METHODS else ""


_current: contextvars.ContextVar[Observation | None] = contextvars.ContextVar("registry_request", default=None)


def served(model: str, version: int | str | None = None) -> None:
    """The request being measured (if any) runs ``model`` (``version``): called once the catalog
    confirmed they exist, so only real names become labels.  :compare counts per model."""
    observation = _current.get()
    if observation is None:
        return
    observation.model = model
    if observation.method != "compare" and version is not None:
        observation.version = str(version)


def served_signature(name: str) -> None:
    """The request being measured (if any) runs signature ``name`` of its version: called once the
    version is known to have it ("" when it has not: an unknown name is no label)."""
    observation = _current.get()
    if observation is not None:
        observation.signature_name = name


class observe_request:  # noqa: N801 - used as a function: ``with observe_request(api, method) as observation``
    """Count and time one request of ``api`` (rest, grpc) and ``method`` (one of METHODS); an
    exception leaving the block counts under its error's status unless the block set one.

    A class rather than a generator-based context manager: it runs on every request, and
    contextlib's machinery (a generator, its frame, two resumptions) costs more than the counting."""

    __slots__ = ("observation", "token", "started")

    def __init__(self, api: str, method: str) -> None:
        self.observation = Observation(api, method)

    def __enter__(self) -> Observation:
        self.token = _current.set(self.observation)
        self.started = time.perf_counter()
        return self.observation

    def __exit__(self, kind, exc, trace) -> None:
        observation = self.observation
        if exc is not None and observation.status == "OK":
            observation.status = _status_of(exc)
        _current.reset(self.token)
        labels = (observation.model, observation.version, observation.signature, observation.api,
                  observation.method)
        _record(_updater(REQUEST_SECONDS, labels), time.perf_counter() - self.started)
        _record(_updater(REQUESTS, (*labels, observation.status)), 1)


def _updater(metric: Counter | Histogram, labels: tuple[str, ...]) -> Callable[[float], None]:
    """The observe (histogram) or inc (counter) of ``metric``'s series for ``labels``: made once per
    label set (labels() validates and locks), not once per request."""
    key = (metric, labels)
    update = _updaters.get(key)
    if update is None:
        series = metric.labels(*labels)
        update = _updaters[key] = series.observe if isinstance(metric, Histogram) else series.inc
    return update


# (metric, labels) -> its series' update: real models and versions only (see the module's docstring), so
# as bounded as the label sets themselves.
_updaters: dict[tuple[Any, tuple[str, ...]], Callable[[float], None]] = {}


def _record(update: Callable[[float], None], value: float) -> None:
    """``update(value)`` (a series' observe or inc) now in multiprocess mode, else at the next scrape."""
    if MULTIPROCESS:
        update(value)
        return
    _deferred.append((update, value))
    if len(_deferred) > DEFERRED_MAX:  # nobody scrapes: record a few now, so the queue stays bounded
        _flush(DEFERRED_FLUSH)


def _flush(limit: int | None = None) -> None:
    """Record what requests queued (all of it, or the ``limit`` oldest)."""
    for _ in range(len(_deferred) if limit is None else limit):
        try:
            update, value = _deferred.popleft()
        except IndexError:  # another thread took the rest
            return
        update(value)


# (series update, value) of requests since the last scrape, in one process (see the module's docstring)
_deferred: deque[tuple[Callable[[float], None], float]] = deque()
DEFERRED_MAX = 4096  # updates queued at most; beyond, each request records DEFERRED_FLUSH of them
DEFERRED_FLUSH = 64


def count_cache_hit(labels: tuple[str, str]) -> None:
    """A request found its graph (``labels``: model, version) loaded."""
    _record(_updater(CACHE_HITS, labels), 1)


def record_batch(labels: tuple[str, str], requests: int, rows: int | None) -> None:
    """One Session.run of the batcher: how many requests and rows went into it."""
    _record(_updater(BATCH_REQUESTS, labels), requests)
    if rows is not None:
        _record(_updater(BATCH_ROWS, labels), rows)


# -- the scrape ----------------------------------------------------------------------------------

class QueueDepth:
    """``registry_job_queue_depth{state}``: jobs waiting and running, counted in the database at scrape
    time by ``count`` (one query).  A database that does not answer leaves the gauge out of that
    scrape, not the whole scrape."""

    def __init__(self, count: Callable[[], dict[str, int]]) -> None:
        self._count = count

    def collect(self) -> Iterable[Metric]:
        try:
            counts = self._count()
        except Exception as exc:  # the database may be away: the other metrics still matter
            log.warning("metrics: could not count the job queue: %s", getattr(exc, "message", exc))
            return []
        family = GaugeMetricFamily(QUEUE_DEPTH, "Conversion jobs in the queue, by state (queued: waiting "
                                   "for a worker; running: a worker holds them).", labels=["state"])
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
        return [family]


class _Scrape:
    """What one scrape reads: every process's files in multiprocess mode, else this process's
    registry (with its process and Python collectors), plus the app's own collectors."""

    def __init__(self, extra: Iterable) -> None:
        self._extra = list(extra)

    def collect(self) -> Iterator[Metric]:
        if MULTIPROCESS:
            files = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(files)
            yield from files.collect()
        else:
            _flush()  # what requests queued since the last scrape
            yield from REGISTRY.collect()
        for collector in self._extra:
            yield from collector.collect()


def exposition(extra: Iterable = ()) -> bytes:
    """The metrics in Prometheus's text format (``CONTENT_TYPE``), with ``extra`` collectors."""
    return generate_latest(_Scrape(extra))  # type: ignore[arg-type]  # anything with collect() will do
