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
