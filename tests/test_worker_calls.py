"""Calls to an inference worker from many threads at once (registry.serving.workers): the caller
that finds the connection free reads it for everyone, hands each answer to its own caller, and
passes the reading on.  A real worker process and a real frozen graph; no stand-ins."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from registry.serving.workers import WorkerLost, WorkerPool

tf1 = tf.compat.v1
THREADS = 12
CALLS = 40


@pytest.fixture(scope="module")
def frozen() -> bytes:
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 1], name="x")
        tf.identity(x * 2.0 + 1.0, name="y")
    return graph.as_graph_def().SerializeToString()


@pytest.fixture
def pool():
    pool = WorkerPool(count=1, memory_mb=4096, run_timeout=30)
    yield pool
    pool.close()


def test_concurrent_calls_each_get_their_own_answer(pool, frozen):
    worker, _ = pool.load("g", frozen, ["x:0", "y:0"], timeout_seconds=30, estimate=0)
    wrong: list[str] = []

    def caller(thread: int) -> None:
        for i in range(CALLS):
            value = float(thread * 1000 + i)
            (y,) = pool.run(worker, "g", {"x:0": np.array([[value]], np.float32)}, ["y:0"])
            if y.tolist() != [[value * 2 + 1]]:
                wrong.append(f"thread {thread} call {i}: {value} -> {y.tolist()}")

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a caller never got its answer"
    assert wrong == []
    assert worker.pending == 0


def test_a_worker_killed_under_concurrent_calls_fails_every_waiting_call_and_none_hangs(pool, frozen):
    worker, _ = pool.load("g", frozen, ["x:0", "y:0"], timeout_seconds=30, estimate=0)
    outcomes: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(THREADS + 1)

    def caller() -> None:
        started.wait()
        while True:
            try:
                (y,) = pool.run(worker, "g", {"x:0": np.ones((1, 1), np.float32)}, ["y:0"])
                assert y.tolist() == [[3.0]]
            except WorkerLost:
                with lock:
                    outcomes.append("lost")
                return

    threads = [threading.Thread(target=caller) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.3)  # calls in flight, one thread reading for the others
    os.kill(worker.pid, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a call still waits for a worker that is gone"
    assert outcomes == ["lost"] * THREADS
    with pytest.raises(WorkerLost):
        pool.run(worker, "g", {"x:0": np.ones((1, 1), np.float32)}, ["y:0"])
