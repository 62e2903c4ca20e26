"""Loaded graphs, least recently used first out, within a memory budget.

Many concurrent first requests for one version load it once: the first caller
loads while the others wait for the same result.  Evicted graphs are simply
dropped; requests still running on one keep it alive until they finish.
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
    def __init__(self, budget_bytes: int, load: Callable[[Hashable], Any]) -> None:
        self.budget_bytes = budget_bytes
        self._load = load
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
                self._evict(keep=key)
            return value
        finally:
            with self._lock:
                self._loading.pop(key, None)
            pending.event.set()

    @property
    def used_bytes(self) -> int:
        return sum(getattr(v, "memory_bytes", 0) for v in self._entries.values())

    def _evict(self, keep: Hashable) -> None:
        while self.used_bytes > self.budget_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            self._entries.pop(oldest)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)
