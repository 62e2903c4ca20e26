"""registry.heap: TensorFlow's objects out of the garbage collector's full passes, graphs still collected.

Run in a fresh interpreter: freezing is once per process, and this one's may have frozen already."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import gc, json, weakref
    import tensorflow as tf
    from registry import heap

    before = len(gc.get_objects(2))
    heap.freeze_imports()  # a program that embeds the registry: its objects stay the collector's
    embedded = gc.get_freeze_count()
    heap.own_process()
    heap.freeze_imports()
    frozen = gc.get_freeze_count()
    heap.freeze_imports()  # no module imported since: nothing more is frozen, nothing collected
    again = gc.get_freeze_count()

    def loaded_graph():  # what a graph loaded afterwards leaves: a tf.Graph in a reference cycle
        graph = tf.Graph()
        with graph.as_default():
            tf.constant(1.0, name="c")
        holder = {"graph": graph}
        holder["self"] = holder
        return weakref.ref(graph), holder

    ref, holder = loaded_graph()
    del holder
    gc.collect()
    print(json.dumps({"before": before, "after": len(gc.get_objects(2)), "frozen": frozen, "again": again,
                      "embedded": embedded,
                      "graph_collected": ref() is None}))
""")


def test_freezing_the_imports_leaves_full_collections_only_what_came_after_and_later_graphs_are_collected():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] > 100_000  # what importing TensorFlow leaves for a full pass to walk
    assert seen["embedded"] == 0
    # what the imports left is frozen; a full collection runs first, so the garbage among it is not
    assert seen["frozen"] > 0.95 * seen["before"]
    assert seen["after"] < seen["before"] / 20
    assert seen["again"] == seen["frozen"]
    assert seen["graph_collected"]
