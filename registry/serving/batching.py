"""Batching of concurrent requests for one graph, as TF Serving's batching does.

No timer and no extra latency when the graph is idle: the first request runs
at once, in its own thread, and requests that arrive while it runs queue up and
go together in the next ``Session.run`` (up to ``max_batch`` rows), led by the
first of them.
A batch whose outputs do not split back by rows, or that fails, is re-run one
request at a time, so one bad request never fails the others.  Every
``Session.run`` is recorded in ``registry.metrics`` (requests and rows in it).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from registry import metrics

Runner = Callable[[dict, tuple], list]


class _Item:
    def __init__(self, feeds: dict, rows: int) -> None:
        self.feeds = feeds
        self.rows = rows
        self.event = threading.Event()
        self.lead = False
        self.done = False
        self.value: list | None = None
        self.error: BaseException | None = None

    def deliver(self, value: list | None = None, error: BaseException | None = None) -> None:
        self.value, self.error, self.done = value, error, True
        self.event.set()

    def result(self) -> list:
        if self.error is not None:
            raise self.error
        return self.value


class Batcher:
    def __init__(self, run: Runner, *, max_batch: int = 16, labels: tuple[str, str] = ("", "")) -> None:
        self._run = run
        self.max_batch = max_batch
        self.labels = labels  # (model, version) of the graph, for the batch-size metrics
        self._lock = threading.Lock()
        self._queues: dict[tuple, deque[_Item]] = {}
        self._active: set[tuple] = set()
        self.runs = 0  # Session.run calls made, for tests and stats

    def submit(self, feeds: dict[str, np.ndarray], fetch: tuple[str, ...], *, batchable: bool) -> list:
        rows = _rows(feeds)
        if not batchable or self.max_batch <= 1 or rows is None or rows > self.max_batch:
            self._count_run(1, rows)
            return self._run(feeds, fetch)
        key = (fetch, tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(feeds.items())))
        with self._lock:
            idle = key not in self._active
            if idle:
                self._active.add(key)
            else:
                item = _Item(feeds, rows)
                self._queues.setdefault(key, deque()).append(item)
        if idle:  # nothing runs or waits with this shape: run now, in this thread
            try:
                self._count_run(1, rows)
                return self._run(feeds, fetch)
            finally:
                self._next(key)
        item.event.wait()
        if not item.lead:
            return item.result()
        queue = self._queues[key]  # led by this request (the oldest waiting): run what waits, in batches
        while not item.done:
            with self._lock:
                batch, total = [], 0
                while queue and total + queue[0].rows <= self.max_batch:
                    total += queue[0].rows
                    batch.append(queue.popleft())
            self._execute(batch, fetch)
        self._next(key)
        return item.result()

    def _next(self, key: tuple) -> None:
        """A run with ``key`` is over: hand the lead to the oldest request waiting, or go idle."""
        with self._lock:
            queue = self._queues.get(key)
            if not queue:
                self._active.discard(key)
                self._queues.pop(key, None)
                return
            successor = queue[0]
            successor.lead = True
        successor.event.set()

    def _count_run(self, requests: int, rows: int | None) -> None:
        self.runs += 1
        metrics.record_batch(self.labels, requests, rows)

    def _execute(self, batch: Sequence[_Item], fetch: tuple[str, ...]) -> None:
        if len(batch) > 1:
            total = sum(item.rows for item in batch)
            feeds = {name: np.concatenate([item.feeds[name] for item in batch]) for name in batch[0].feeds}
            try:
                self._count_run(len(batch), total)
                outputs = self._run(feeds, fetch)
            except Exception:
                outputs = None
            if outputs is not None and all(np.ndim(o) > 0 and np.shape(o)[0] == total for o in outputs):
                start = 0
                for item in batch:
                    item.deliver([o[start:start + item.rows] for o in outputs])
                    start += item.rows
                return
        for item in batch:  # alone, or the batch did not work out
            try:
                self._count_run(1, item.rows)
                item.deliver(self._run(item.feeds, fetch))
            except Exception as exc:
                item.deliver(error=exc)


def _rows(feeds: dict[str, np.ndarray]) -> int | None:
    sizes = {a.shape[0] for a in feeds.values() if np.ndim(a) > 0}
    if len(sizes) != 1 or any(np.ndim(a) == 0 for a in feeds.values()):
        return None
    return sizes.pop()
