"""The registry as a WSGI app for gunicorn (``gunicorn registry.wsgi:app``).

Gunicorn imports this module in every worker process, so the app is built at
import time from the environment (``Settings.from_env()``).  Embedded converter
workers default to *off* here (``REGISTRY_EMBEDDED_WORKERS``, default 0): with
several gunicorn processes each would start its own converter threads, and in
production the converters run as a separate ``registry worker`` service
(scaled on its own).  Set ``REGISTRY_EMBEDDED_WORKERS=1`` to run them inside
each gunicorn process anyway.
"""

from __future__ import annotations

import os

from registry import heap
from registry.app import create_app
from registry.config import Settings

heap.own_process()  # a gunicorn worker runs the registry alone (registry.heap)

_workers = int(os.environ.get("REGISTRY_EMBEDDED_WORKERS") or 0)
app = create_app(Settings.from_env(embedded_workers=_workers), start_workers=_workers > 0)
