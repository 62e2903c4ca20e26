"""Lineage (issue 17, item 6): a checkpoint's global_step is read at conversion and recorded on the
version beside what the push said (source commit, training-run URL, dataset); a real checkpoint, a
real server with its converter, the real CLI."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from registry.cli import main
from registry.client import RegistryClient

tf1 = tf.compat.v1


@pytest.fixture(scope="module")
def stepped(tmp_path_factory):
    """A linear model saved at step 1234, with its .meta."""
    prefix = tmp_path_factory.mktemp("stepped") / "model.ckpt"
    graph = tf.Graph()
    with graph.as_default():
        step = tf1.train.get_or_create_global_step()
        x = tf1.placeholder(tf.float32, [None, 3], name="input")
        w = tf1.get_variable("w", [3, 2], initializer=tf1.constant_initializer(np.arange(6).reshape(3, 2) / 10))
        tf.nn.softmax(tf.matmul(x, w), name="probs")
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            session.run(step.assign(1234))
            tf1.train.Saver().save(session, str(prefix))
    return prefix


def test_the_checkpoints_step_and_the_pushs_lineage_are_recorded(converting_server, stepped):
    result = CliRunner().invoke(main, ["push", "stepped", str(stepped), "--output-nodes", "probs",
                                       "--source-commit", "9f1c2ab", "--run-url", "https://ci.example/runs/77",
                                       "--dataset", "iris-v3", "--wait", "--timeout", "300",
                                       "--url", converting_server.url])
    assert result.exit_code == 0, result.output
    version = RegistryClient(converting_server.url).get_version("stepped", "1")
    assert version["status"] == "ready", version["status_message"]
    assert version["lineage"] == {"global_step": 1234, "source_commit": "9f1c2ab",
                                  "run_url": "https://ci.example/runs/77", "dataset": "iris-v3"}
