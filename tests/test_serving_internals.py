"""The label service's cache and batcher, driven by real threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from registry.errors import InvalidRequest, PayloadTooLarge
from registry.serving.batching import Batcher
from registry.serving.cache import GraphCache
from registry.serving.images import sniff
from tests import images as test_images


class Sized:
    def __init__(self, key, size):
        self.key, self.memory_bytes = key, size


def test_concurrent_first_requests_load_a_graph_once():
    calls = []

    def load(key):
        calls.append(key)
        time.sleep(0.2)
        return Sized(key, 10)

    cache = GraphCache(1000, load)
    with ThreadPoolExecutor(12) as pool:
        values = list(pool.map(lambda _: cache.get("v1"), range(12)))
    assert calls == ["v1"]
    assert all(v is values[0] for v in values)


def test_least_recently_used_graph_is_evicted_to_stay_within_budget():
    cache = GraphCache(25, lambda key: Sized(key, 10))
    cache.get("a"), cache.get("b")
    cache.get("a")  # a is now the most recent
    cache.get("c")
    assert cache.keys() == ["a", "c"]
    assert cache.used_bytes <= 25


def test_a_failed_load_reaches_every_waiter_and_is_tried_again_later():
    attempts = []

    def load(key):
        attempts.append(key)
        time.sleep(0.1)
        if len(attempts) == 1:
            raise RuntimeError("storage hiccup")
        return Sized(key, 1)

    cache = GraphCache(100, load)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.get, "v") for _ in range(4)]
    errors = [f.exception() for f in futures]
    assert all(isinstance(e, RuntimeError) for e in errors)
    assert cache.get("v").key == "v"
    assert len(attempts) == 2


def test_concurrent_requests_share_session_runs_and_each_gets_its_own_rows():
    runs = []
    started = threading.Event()

    def run(feeds, fetch):
        runs.append(len(feeds["x"]))
        started.set()
        time.sleep(0.05)
        return [feeds["x"] * 2]

    batcher = Batcher(run, max_batch=16)

    def one(i):
        return batcher.submit({"x": np.full((1, 3), i, dtype=np.float32)}, ("y",), batchable=True)[0]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full((1, 3), 2 * i))
    assert sum(runs) == 32
    assert len(runs) < 32  # requests that arrived during a run went together
    assert max(runs) <= 16


def test_a_bad_request_in_a_batch_fails_alone():
    def run(feeds, fetch):
        if np.any(feeds["x"] < 0):
            raise ValueError("negative input")
        time.sleep(0.02)
        return [feeds["x"] + 1]

    batcher = Batcher(run, max_batch=8)

    def one(i):
        value = -1.0 if i == 5 else float(i)
        try:
            return batcher.submit({"x": np.array([[value]])}, ("y",), batchable=True)[0]
        except ValueError as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    assert isinstance(results[5], ValueError)
    assert all(float(r[0, 0]) == i + 1 for i, r in enumerate(results) if i != 5)


def test_image_headers_give_format_and_size_without_decoding(tmp_path):
    files = test_images.write_images(tmp_path)
    expected = {"photo.jpg": ("jpeg", 30, 20), "chart.png": ("png", 30, 20), "scan.bmp": ("bmp", 30, 20),
                "palette.gif": ("gif", 30, 20), "other.png": ("png", 13, 9)}
    for name, (fmt, width, height) in expected.items():
        info = sniff(files[name].read_bytes(), 10**6)
        assert (info.format, info.width, info.height) == (fmt, width, height)


def test_decompression_bomb_is_refused_by_its_header():
    with pytest.raises(PayloadTooLarge, match="60000x60000"):
        sniff(test_images.huge_png_header(60000, 60000), 50_000_000)


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"plain text"])
def test_non_images_and_damaged_headers_are_refused(data):
    with pytest.raises(InvalidRequest):
        sniff(data, 10**6)
