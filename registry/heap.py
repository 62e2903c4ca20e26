"""Keep Python's cyclic garbage collector off what importing TensorFlow leaves behind.

Once TensorFlow's Python is imported, a process holds about 430,000 objects the collector tracks.
They live as long as the process, but every full (generation 2) collection walks all of them:
170-220 ms with the GIL held, measured in the label service's REST process, where one came about
every 2,000 requests.  Every request in flight waits for it.  ``freeze_imports`` collects once,
then moves everything alive into the collector's permanent generation (``gc.freeze``): later full
collections walk only what came after, and so take a few milliseconds.

What is frozen is still freed by reference counting; only a reference cycle among frozen objects
would stay.  So call it after the imports and before any graph is loaded: graphs (whose Python
objects do form cycles) must remain collectable when they are unloaded.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_frozen = False


def freeze_imports() -> None:
    """Collect garbage, then freeze what is alive (the imported modules and what they made); once per
    process: later calls do nothing."""
    global _frozen
    with _lock:
        if _frozen:
            return
        gc.collect()
        gc.freeze()
        _frozen = True
