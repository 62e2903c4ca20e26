"""Keep Python's cyclic garbage collector off what importing TensorFlow leaves behind.

Once TensorFlow's Python is imported, a process holds several hundred thousand objects the collector
tracks.  They live as long as the process, but every full (generation 2) collection walks all of
them with the GIL held: 220-240 ms measured in the label service's process
(``benchmarks/gc_pauses.py``), and every request in flight waits for it.  ``freeze_imports``
collects once, then moves everything alive into the collector's permanent generation
(``gc.freeze``): later full collections walk only what came after.

What is frozen is still freed by reference counting; only a reference cycle among frozen objects
stays.  So it is called where imports have just been made and before graphs are loaded: by the
inference worker and the converter template once TensorFlow is imported, by the label service
before its first graph and again once its first TF Serving request has imported TensorFlow (a label
service that only labels never does).  Graphs loaded by then (a few kB of Python each in the label
service) stay frozen with their cycles; nothing else is, since a call does nothing unless modules
were imported since the last one.

Only in a process of the registry's own (``own_process``: ``registry serve``, ``label-serve``,
gunicorn's app, the workers): a program that embeds the app (a test suite, a notebook) keeps its
objects in the collector's hands.
"""

from __future__ import annotations

import gc
import sys
import threading

_lock = threading.Lock()
_own = False  # this process runs the registry and nothing else
_modules = 0  # how many modules were loaded at the last freeze


def own_process() -> None:
    """This process runs the registry and nothing else: ``freeze_imports`` may freeze its objects."""
    global _own
    _own = True


def freeze_imports() -> None:
    """Collect garbage, then freeze what is alive (the imported modules and what they made), when
    modules were imported since the last call, in a process of the registry's own; otherwise do nothing."""
    global _modules
    if not _own or len(sys.modules) <= _modules:
        return
    with _lock:
        if len(sys.modules) <= _modules:
            return
        gc.collect()
        gc.freeze()
        _modules = len(sys.modules)
