"""Loaded graphs, least recently used first out, within a memory budget.

Many concurrent first requests for one version load it once: the first caller
loads while the others wait for the same result.  An evicted graph is handed
to ``on_evict`` (the label service unloads it from its worker once the
requests still running on it finish).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class _Loading:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class GraphCache:
    def __init__(self, budget_bytes: int, load: Callable[[Hashable], Any],
                 on_evict: Callable[[Any], None] | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._load = load
        self._on_evict = on_evict
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._loading: dict[Hashable, _Loading] = {}
        self.loads: dict[Hashable, int] = {}  # how often each key was loaded

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            pending = self._loading.get(key)
            loader = pending is None
            if loader:
                pending = self._loading[key] = _Loading()
        if not loader:
            pending.event.wait()
            if pending.error is not None:
                raise pending.error
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
            if self._on_evict is not None:
                for old in evicted:
                    self._on_evict(old)
            return value
        finally:
            with self._lock:
                self._loading.pop(key, None)
            pending.event.set()

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
            return [self._entries.pop(key) for key in gone]

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)
