"""The warm converter template (``registry.converter.warm``) as it forks a job: a real template process,
started as a worker starts it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_a_ready_converter_template_is_single_threaded_when_it_forks_a_job():
    """A process forked beside other threads can inherit a lock one of them held and wait on it forever.
    TensorFlow's import loads numpy's and scipy's OpenBLAS, each of which starts a thread server; the
    template keeps them from starting, whatever BLAS setting the registry's own environment has."""
    from registry.converter import runner, warm

    env = {**runner._child_env(warm.HOME), "OPENBLAS_NUM_THREADS": "4", "OMP_NUM_THREADS": "4"}
    template = warm.Template(env)
    try:
        assert template.wait_ready(120)
        threads = {t: Path(f"/proc/{template.proc.pid}/task/{t}/comm").read_text().strip()
                   for t in os.listdir(f"/proc/{template.proc.pid}/task")}
        assert len(threads) == 1, threads
    finally:
        template.stop()


def test_a_job_that_ends_at_once_is_seen_to_end(tmp_path):
    """The template answers "pid N" and "exit S" back to back when a job ends at once; both lines can be in
    the pipe before the worker reads the first.  The worker must still see the second: reading both into a
    buffer and then waiting on the empty pipe for "exit" hung a conversion until its timeout, then for ever."""
    import time

    from registry.converter import runner, warm

    template = warm.Template(runner._child_env(warm.HOME))
    try:
        assert template.wait_ready(120)
        template.proc.stdin.write(f"{tmp_path / 'missing' / 'request.json'}\n".encode())  # no work dir: exits
        template.proc.stdin.flush()
        time.sleep(1.0)  # both answers are in the pipe now
        answer = template.line(10)
        assert answer.startswith(b"pid "), answer
        job = warm.ForkedJob(template, int(answer.split()[1]))
        assert job.wait(timeout=10) != 0  # the job could not open its log, and exited
    finally:
        template.stop()
