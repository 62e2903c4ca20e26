"""Loaded graphs, least recently used first out, within a memory budget.

Many concurrent first requests for one version load it once: the first caller
loads while the others wait for the same result.  An evicted graph is handed
to ``on_evict`` (the label service unloads it from its worker once the
requests still running on it finish).

Loads, hits and evictions are counted (``registry.metrics``) under the labels
``describe(value)`` gives, and the bytes and graphs held are kept on gauges.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from registry import metrics

Describe = Callable[[Any], tuple[str, str]]


def _no_labels(_value: Any) -> tuple[str, str]:
    return "", ""


_MISSING = object()


class _Loading:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class GraphCache:
    def __init__(self, budget_bytes: int, load: Callable[[Hashable], Any],
                 on_evict: Callable[[Any], None] | None = None, describe: Describe = _no_labels) -> None:
        self.budget_bytes = budget_bytes
        self._load = load
        self._on_evict = on_evict
        self._describe = describe  # (model, version) labels of a cached value, for the metrics
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._loading: dict[Hashable, _Loading] = {}
        self.loads: dict[Hashable, int] = {}  # how often each key was loaded

    def get(self, key: Hashable) -> Any:
        with self._lock:
            cached = self._entries.get(key, _MISSING)
            if cached is not _MISSING:
                self._entries.move_to_end(key)
            else:
                pending = self._loading.get(key)
                loader = pending is None
                if loader:
                    pending = self._loading[key] = _Loading()
        if cached is not _MISSING:
            metrics.count_cache_hit(self._describe(cached))
            return cached
        if not loader:
            pending.event.wait()
            if pending.error is not None:
                raise pending.error
            metrics.count_cache_hit(self._describe(pending.value))
            return pending.value
        try:
            value = self._load(key)
        except BaseException as exc:
            pending.error = exc
            raise
        else:
            pending.value = value
            with self._lock:
                self.loads[key] = self.loads.get(key, 0) + 1
                self._entries[key] = value
                evicted = self._evict(keep=key)
            metrics.CACHE_LOADS.labels(*self._describe(value)).inc()
            self._account([value], held=True)
            self._account(evicted, held=False)
            for old in evicted:
                metrics.CACHE_EVICTIONS.labels(*self._describe(old)).inc()
            if self._on_evict is not None:
                for old in evicted:
                    self._on_evict(old)
            return value
        finally:
            with self._lock:
                self._loading.pop(key, None)
            pending.event.set()

    @staticmethod
    def _account(values: list[Any], *, held: bool) -> None:
        """Keep the gauges of bytes and graphs held in step as ``values`` come in or go."""
        if values:
            sign = 1 if held else -1
            metrics.CACHE_BYTES.inc(sign * sum(getattr(v, "memory_bytes", 0) for v in values))
            metrics.CACHE_GRAPHS.inc(sign * len(values))

    @property
    def used_bytes(self) -> int:
        return sum(getattr(v, "memory_bytes", 0) for v in self._entries.values())

    def _evict(self, keep: Hashable) -> list[Any]:
        evicted = []
        while self.used_bytes > self.budget_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            evicted.append(self._entries.pop(oldest))
        return evicted

    def discard(self, test: Callable[[Hashable, Any], bool]) -> list[Any]:
        """Forget the entries ``test(key, value)`` picks (their graphs are gone): the next ``get``
        loads them again.  Not handed to ``on_evict``."""
        with self._lock:
            gone = [key for key, value in self._entries.items() if test(key, value)]
            dropped = [self._entries.pop(key) for key in gone]
        self._account(dropped, held=False)
        return dropped

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)
