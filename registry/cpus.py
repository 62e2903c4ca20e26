"""Which CPU the label service's request path runs on (``REGISTRY_LABEL_CPU``).

A request to the label service hops between threads and processes: gRPC's
poller hands the call to a handler thread, the handler hands the run to an
inference worker, the worker's answer wakes the handler.  Each hop wakes a
thread that sleeps; when that thread last ran on another CPU, the wake-up
crosses CPUs, and on a virtual machine waking an idle CPU costs tens of
microseconds more than a switch on the same one.  Measured here
(``benchmarks/tf_serving_api.py``, half_plus_two): a gRPC ``Predict`` took
1.05-1.11 ms with the threads free to move and 0.72-0.82 ms with the request
path on one CPU.

So a serving process (``registry serve``, ``label-serve``, ``model-server``, a
single gunicorn process) keeps its own threads on one CPU, and so do the
threads of its inference workers that read requests and run small graphs in
place.  A serving process is one Python interpreter: its global lock lets it
use about one CPU anyway.  TensorFlow's compute threads in the workers (the
pools a longer run goes to, and the kernels that split across cores) keep every
CPU the server was started with, and so do converter and training children,
which call :func:`release` first.

``REGISTRY_LABEL_CPU``: ``auto`` (the default: one of the allowed CPUs, picked by
process id, when there are at least two), a CPU number, or ``off``.  Nothing
here imports more than the standard library.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

SETTING = "REGISTRY_LABEL_CPU"
ORIGINAL_ENV = "REGISTRY_ORIGINAL_CPUS"  # the CPUs a pinned process started with, for its children

pinned: int | None = None  # the CPU this process's threads were put on, if any


def check_setting(value: str) -> str:
    """``value`` as REGISTRY_LABEL_CPU takes it (``auto``, ``off`` or a CPU this process may use);
    ValueError saying what to set if not."""
    setting = value.strip().lower()
    if setting in ("auto", "off"):
        return setting
    if not (setting.isdigit() and len(setting) < 6):
        raise ValueError(f"{SETTING} must be auto, off or a CPU number (0, 1, ...), not {value!r}")
    allowed = _allowed()
    if allowed and int(setting) not in allowed:
        raise ValueError(f"{SETTING}={setting} is not a CPU this process may use "
                         f"({', '.join(map(str, allowed))}): pick one of those, auto or off")
    return setting


def _allowed() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def choose(setting: str) -> int | None:
    """The CPU ``setting`` (checked by :func:`check_setting`) puts this process's threads on, or None
    (off, one CPU only, no affinity here, a CPU no longer allowed)."""
    allowed = _allowed()
    if setting == "off" or not allowed:
        return None
    if setting == "auto":
        return allowed[os.getpid() % len(allowed)] if len(allowed) > 1 else None
    return int(setting) if int(setting) in allowed else None


def pin_process(setting: str) -> int | None:
    """Put every thread of this process, and those it starts later, on the CPU ``setting`` names; its
    children call :func:`release` to get back the CPUs it had.  Returns that CPU (None: left alone)."""
    global pinned
    if pinned is not None:  # already: what it has now is not what it started with
        return pinned
    cpu = choose(setting)
    if cpu is None:
        return None
    os.environ[ORIGINAL_ENV] = ",".join(map(str, _allowed()))
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:  # a thread that ended meanwhile
            continue
    pinned = cpu
    log.info("request threads on CPU %d (%s; %s=off leaves them free)", cpu, setting, SETTING)
    return cpu


def original() -> set[int] | None:
    """The CPUs the pinned process this one descends from started with (None: it was not pinned)."""
    value = os.environ.get(ORIGINAL_ENV, "")
    try:
        cpus = {int(c) for c in value.split(",") if c.strip()}
    except ValueError:
        return None
    return cpus or None


def release(cpus: set[int] | None = None) -> None:
    """In a child of a pinned process, before it starts threads: run on every CPU the parent started with
    (``cpus``, else what the parent left in the environment)."""
    cpus = cpus or original()
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:  # none of them may be used here any more: keep what was inherited
            pass


def pin_thread(cpu: int | None) -> None:
    """Put the calling thread (and the threads it starts) on ``cpu``; None or a CPU not allowed: no change."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass
