"""Gunicorn hooks for ``registry serve --gunicorn`` (``-c python:registry.gunicorn_conf``).

The gunicorn processes count in prometheus_client's multiprocess mode: each
writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (which
``registry.cli.server`` prepares) and a scrape sums them.  These hooks run in
the gunicorn master: a worker that exits takes its live gauges (graphs and
bytes held) out of the sums, its counters stay (totals never go back), and
the folder the server made for itself goes when the server stops.

Only hook functions live here: gunicorn reads every setting-named attribute
of this module as a setting.  Nothing is imported at module level beyond the
standard library, so the master loads neither Flask nor the metrics.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PRIVATE_DIR_PREFIX = "registry-metrics-"  # + the server's pid + "-": registry.cli.server makes it


def post_fork(server, worker) -> None:
    """In a new gunicorn process: its threads on one CPU (``registry.cpus``) when it is the only one, or
    on the CPU ``REGISTRY_LABEL_CPU`` names; ``auto`` leaves several processes to the kernel to place."""
    from registry import cpus

    try:
        setting = cpus.check_setting(os.environ.get(cpus.SETTING) or "auto")
        if setting != "auto" or server.cfg.workers == 1:
            cpus.pin_process(setting)
    except ValueError as exc:
        server.log.warning("%s: threads left on every CPU", exc)


def child_exit(server, worker) -> None:
    """A gunicorn worker exited: drop its live gauges from the sums (prometheus_client's bookkeeping)."""
    from prometheus_client import multiprocess

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        multiprocess.mark_process_dead(worker.pid, folder)


def on_exit(server) -> None:
    """The server stops: remove the metrics folder it made for itself (not one the operator named)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder and is_private_dir(Path(folder), os.getpid()):
        shutil.rmtree(folder, ignore_errors=True)


def is_private_dir(folder: Path, pid: int) -> bool:
    """Whether ``folder`` is the temporary metrics folder server ``pid`` made (its name says so)."""
    return folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith(f"{PRIVATE_DIR_PREFIX}{pid}-")
