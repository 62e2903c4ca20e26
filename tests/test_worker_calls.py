"""Calls to an inference worker from many threads at once (registry.serving.workers): the caller
that finds the connection free reads it for everyone, hands each answer to its own caller, and
passes the reading on.  And images decoded once for several graphs (``run_shared``, what a
comparison of versions does).  A real worker process and real frozen graphs; no stand-ins."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from registry.serving.images import LabelFeed
from registry.serving.workers import WorkerError, WorkerLost, WorkerPool
from tests import images as test_images

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


# -- images decoded once for several graphs ----------------------------------------------------------

HEIGHT, WIDTH, MEAN, STD = 13, 9, 100.0, 50.0


def image_graph(scale: float, dtype=tf.float32) -> bytes:
    """A 'model' whose output is its image input times ``scale`` (as float32)."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf1.placeholder(dtype, [None, HEIGHT, WIDTH, 3], name="input")
        tf.identity(tf.cast(image, tf.float32) * scale, name="output")
    return graph.as_graph_def().SerializeToString()


def test_images_decoded_once_feed_every_graph_as_each_graphs_own_fused_run_does(pool, tmp_path):
    pictures = test_images.write_images(tmp_path)
    worker, _ = pool.load("a", image_graph(1.0), ["input:0", "output:0"], timeout_seconds=30, estimate=0)
    for key, graph in (("b", image_graph(2.0)), ("c", image_graph(1.0, tf.uint8))):
        assert pool.load(key, graph, ["input:0", "output:0"], timeout_seconds=30, estimate=0)[0] is worker
    paths = list(pictures.values())
    images = np.empty(len(paths), dtype=object)
    images[:] = [p.read_bytes() for p in paths]
    targets = [(key, "input:0", ["output:0"]) for key in ("a", "b", "c")]
    (a,), (b,), (c,) = pool.run_shared(worker, (HEIGHT, WIDTH, MEAN, STD), images, targets)[0]
    expected = np.concatenate([test_images.label_image_tensor(p, height=HEIGHT, width=WIDTH, mean=MEAN, std=STD)
                               for p in paths])
    np.testing.assert_allclose(a, expected, atol=1e-5)
    np.testing.assert_array_equal(b, a * 2)
    for key, shared in (("a", a), ("b", b), ("c", c)):  # each graph's own run from the bytes: the same values
        feed = LabelFeed("input:0", HEIGHT, WIDTH, MEAN, STD).name
        (fused,) = pool.run(worker, key, {feed: images}, ["output:0"])
        np.testing.assert_array_equal(shared, fused)  # the uint8 input: cast in the graph, both ways


def test_a_damaged_image_or_a_graph_not_loaded_fails_the_shared_call_saying_which(pool, tmp_path):
    data = test_images.write_images(tmp_path)["chart.png"].read_bytes()
    worker, _ = pool.load("a", image_graph(1.0), ["input:0", "output:0"], timeout_seconds=30, estimate=0)
    setting = (HEIGHT, WIDTH, MEAN, STD)
    with pytest.raises(WorkerError) as caught:
        pool.run_shared(worker, setting, np.array([data[: len(data) // 2]], dtype=object),
                        [("a", "input:0", ["output:0"])])
    assert caught.value.kind == "invalid_image"
    with pytest.raises(WorkerError) as caught:
        pool.run_shared(worker, setting, np.array([data], dtype=object),
                        [("a", "input:0", ["output:0"]), ("gone", "input:0", ["output:0"])])
    assert caught.value.kind == "not_loaded"
    (a,), = pool.run_shared(worker, setting, np.array([data], dtype=object), [("a", "input:0", ["output:0"])])[0]
    assert a.shape == (1, HEIGHT, WIDTH, 3)  # the worker goes on


def test_a_worker_keeps_tensorflows_objects_out_of_full_garbage_collections(pool, frozen):
    """TensorFlow's import leaves ~430k objects a full GC pass would walk (0.2 s, GIL held) every few
    thousand requests; the worker freezes them once imported (registry.heap), before any graph."""
    worker, _ = pool.load("g", frozen, ["x:0", "y:0"], timeout_seconds=30, estimate=0)
    assert worker.frozen_objects > 100_000
    (y,) = pool.run(worker, "g", {"x:0": np.array([[1.0]], np.float32)}, ["y:0"])
    assert y.tolist() == [[3.0]]
