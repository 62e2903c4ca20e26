"""A model whose frozen graph would pass protobuf's 2 GiB limit fails early, saying what to do instead."""

from __future__ import annotations

import io
import time

import tensorflow as tf

from registry import catalog
from registry.jobs.worker import Worker
from tests.helpers import push

tf1 = tf.compat.v1
ELEMENTS = 540_000_001  # float32: 2.01 GiB


def sparse_checkpoint(folder) -> None:
    """A checkpoint that declares a 2.01 GiB variable but holds one slice of it (4 bytes on disk): the
    converter must refuse it from the declared shape, before it reads any weight."""
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=["big"],
                      shape_and_slices=[f"{ELEMENTS} 0,1"], tensors=[tf.zeros([1])])
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [None, 4], name="input")
        weights = tf1.get_variable("big", shape=[ELEMENTS], dtype=tf.float32, use_resource=False)
        tf.identity(x * weights[0], name="out")
        tf1.train.export_meta_graph(str(folder / "model.ckpt.meta"))


def test_a_model_over_two_gib_fails_within_seconds_naming_the_limit_and_what_to_do(app, tmp_path):
    sparse_checkpoint(tmp_path)
    files = {role: (io.BytesIO((tmp_path / f"model.ckpt.{suffix}").read_bytes()), f"model.ckpt.{suffix}")
             for role, suffix in (("meta", "meta"), ("index", "index"), ("data", "data-00000-of-00001"))}
    assert push(app.test_client(), "huge", {**files, "output_nodes": "out"}).status_code == 202
    registry = app.extensions["registry"]
    started = time.monotonic()
    assert Worker(registry.settings, registry.db, registry.storage).run_once()
    assert time.monotonic() - started < 30
    version = catalog.get_version(registry.db, "huge", "1")
    assert version.status == "failed"
    message = version.status_message
    assert "would be 2.01 GiB" in message and "cannot reach 2 GiB (protobuf's limit)" in message
    assert "SavedModel" in message and "split the model" in message
