"""Warm converter children: TensorFlow imported once per worker, a fresh process per job.

Each worker thread keeps a *template*: ``python -m registry.converter.child --warm PID``, which
imports TensorFlow and the converter, says ``ready``, then reads request paths from its stdin,
one per job.  For each it forks the process that does the job (``registry.converter.child.warm``):
that process sets its limits and enters its sandbox exactly as a cold child does, before it reads
anything of the upload, converts that one upload and exits.  The template itself never reads an
upload, holds no job and no credentials, and dies with the worker thread that started it; the fork
costs milliseconds, so a queue of jobs never waits for TensorFlow's import again.

The fork is also what keeps the sandbox whole: TensorFlow's import leaves threads behind, and
Landlock and namespaces confine only the thread that enters them, so the job runs in a fresh
single-threaded process.  This module never imports TensorFlow.

Protocol (the template's stdin and stdout): ``ready``; then per job the worker writes the request
path, the template answers ``pid N`` once it forked and ``exit S`` (the exit status, negative for a
signal, as ``Popen.returncode``) once that process ended.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

WAIT_READY_SECONDS = 60.0  # how long a job waits for a template still importing TensorFlow
HEADROOM_MB = 512  # a job whose memory limit leaves less beyond the template's size starts cold
HOME = "/nonexistent"  # the template's HOME and TMPDIR; each job's sandbox names its work directory

_local = threading.local()  # this thread's template


class LeaseLost(Exception):
    """The job's lease could not be renewed while its template started (another worker has the job)."""


class Template:
    def __init__(self, env: dict[str, str]) -> None:
        """``env``: the child's environment (``runner``'s, with HOME and TMPDIR at :data:`HOME`)."""
        # Unbuffered (bufsize=0): ``line`` selects on the pipe, then reads one line.  A buffered reader
        # would take "pid N" and "exit S" of a job that ended at once in one read, and the select for
        # "exit S" would then wait on an empty pipe for ever (a conversion hung in CI that way).
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "registry.converter.child", "--warm", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/",
            env=env, start_new_session=True, bufsize=0,
        )
        self.ready = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def line(self, timeout: float | None) -> bytes | None:
        """The template's next line (b"" once it is gone); None when none came within ``timeout``.  The
        pipe is unbuffered, so what select sees is all there is: readline takes a byte at a time."""
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        return self.proc.stdout.readline()

    def wait_ready(self, timeout: float, heartbeat: Callable[[], bool] | None = None,
                   heartbeat_every: float = 10.0) -> bool:
        """Whether the template is ready within ``timeout``; ``heartbeat`` (the job's lease) is renewed
        every ``heartbeat_every`` seconds meanwhile: LeaseLost when it cannot be."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            line = self.line(min(remaining, heartbeat_every) if heartbeat is not None else remaining)
            if line is None:
                if heartbeat is not None and not heartbeat():
                    raise LeaseLost("lost the job's lease while the converter's template started")
                continue
            self.ready = line == b"ready\n"
            if not self.ready:
                return False
        return True

    def address_space(self) -> int:
        """Its address space, which a forked job starts with (what RLIMIT_AS counts)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        except (OSError, StopIteration, ValueError):
            return 1 << 62

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


class ForkedJob:
    """The process a template forked for one job, with the parts of ``Popen`` the runner uses."""

    def __init__(self, template: Template, pid: int) -> None:
        self.template = template
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        answer = self.template.line(timeout)
        if answer is None:
            raise subprocess.TimeoutExpired("converter job", timeout)
        if answer.startswith(b"exit "):
            self.returncode = int(answer.split()[1])
        else:  # the template died: its job died with it (it dies with its parent)
            self.template.stop()
            self.returncode = -signal.SIGKILL
        return self.returncode


def warm_up(env: dict[str, str]) -> None:
    """Start this thread's template unless it has a live one."""
    template = getattr(_local, "template", None)
    if template is None or not template.alive():
        _local.template = Template(env)


def start(request_path: Path, memory_mb: int, env: dict[str, str], *, heartbeat: Callable[[], bool] | None = None,
          heartbeat_every: float = 10.0) -> ForkedJob | None:
    """Have this thread's template fork the process for ``request_path``; None when that cannot be
    (it died, never got ready, or the job's memory limit leaves too little beyond the template's
    own size): the caller starts a cold child, and the job is not lost.  While the template is still
    importing TensorFlow, ``heartbeat`` renews the job's lease (LeaseLost when it cannot)."""
    warm_up(env)
    template: Template = _local.template
    if not template.wait_ready(WAIT_READY_SECONDS, heartbeat, heartbeat_every):
        template.stop()
        _local.template = None
        return None
    if template.address_space() + HEADROOM_MB * 1024 * 1024 > memory_mb * 1024 * 1024:
        return None  # a limit that small fails (or succeeds) as it always did, in a cold child
    try:
        template.proc.stdin.write(f"{request_path}\n".encode())
        template.proc.stdin.flush()
        answer = template.line(WAIT_READY_SECONDS)
    except OSError:
        answer = None
    if not answer or not answer.startswith(b"pid "):
        template.stop()  # whatever it forked dies with it
        _local.template = None
        return None
    return ForkedJob(template, int(answer.split()[1]))
