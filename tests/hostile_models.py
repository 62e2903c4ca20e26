"""SavedModels and Keras files whose loading would run the upload's own code.

Each builder writes a real model that TensorFlow's or Keras's own loader would
execute something of: a TF1 ``main_op`` or legacy init op, a saver whose restore
op reads a path of its own, a TF2 resource's ``_initialize``, a ``tf.function``
reading a file, a Keras ``Lambda`` layer.  What they would touch is ``secret``
(a FIFO: opening it for reading blocks until a writer comes, which the tests
detect) and ``canary`` (a file that must never appear).  Building them never
runs the hostile part: TF1 graphs are only built, TF2 functions only traced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0


def _tf1_saved_model(path: Path, hostile, *, collection: str | None = None, main_op: bool = False) -> Path:
    """A TF1 SavedModel (x[None,4] @ w → y) with ``hostile(graph)`` built into it."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4], name="x")
        w = tf1.get_variable("w", initializer=tf.constant(WEIGHTS), use_resource=False)
        y = tf.identity(tf.matmul(x, w), name="y")
        extra = hostile()
        if collection is not None:
            tf1.add_to_collection(collection, extra)
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            builder = tf1.saved_model.Builder(str(path))
            signature = tf1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature},
                                                 main_op=extra if main_op else None)
            builder.save()
    return path


def tf1_main_op(path: Path, secret: Path, canary: Path) -> Path:
    return _tf1_saved_model(path, lambda: tf.io.write_file(str(canary), tf.io.read_file(str(secret))), main_op=True)


def tf1_legacy_init_op(path: Path, secret: Path, canary: Path) -> Path:
    return _tf1_saved_model(path, lambda: tf.io.write_file(str(canary), tf.io.read_file(str(secret))),
                            collection="legacy_init_op")


def tf1_restore_reads_path(path: Path, secret: Path) -> Path:
    """A TF1 SavedModel whose saver's restore op also restores from ``secret`` (edited in, as an
    attacker would: TensorFlow's loader runs ``saver_def.restore_op_name`` on load)."""
    from tensorflow.core.protobuf import saved_model_pb2

    _tf1_saved_model(path, lambda: None)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    meta = proto.meta_graphs[0]
    graph = tf.Graph()
    with graph.as_default():
        restored = tf.raw_ops.RestoreV2(prefix=str(secret), tensor_names=["w"], shape_and_slices=[""],
                                        dtypes=[tf.float32], name="stolen")
        tf.group(restored, name="stolen_restore_all")
    for node in graph.as_graph_def().node:
        meta.graph_def.node.add().CopyFrom(node)
    group = [n for n in meta.graph_def.node if n.name == "stolen_restore_all"][0]
    group.input.append("^" + meta.saver_def.restore_op_name)
    meta.saver_def.restore_op_name = "stolen_restore_all"
    (path / "saved_model.pb").write_bytes(proto.SerializeToString())
    return path


class _Scorer(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(WEIGHTS, name="w")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x):
        return {"y": tf.matmul(x, self.w)}


class _HostileResource(tf.saved_model.experimental.TrackableResource):
    """A resource whose initialiser copies ``secret`` into ``canary``: ``tf.saved_model.load`` runs it."""

    def __init__(self, secret: Path, canary: Path) -> None:
        self._secret, self._canary = str(secret), str(canary)
        super().__init__()

    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="hostile_resource")

    def _initialize(self):
        tf.io.write_file(self._canary, tf.io.read_file(self._secret))


def tf2_initialize(path: Path, secret: Path, canary: Path) -> Path:
    module = _Scorer()
    module.resource = _HostileResource(secret, canary)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def tf2_function_reads_file(path: Path, secret: Path) -> Path:
    module = _Scorer()
    module.leak = tf.function(lambda: tf.io.read_file(str(secret)), input_signature=[])
    module.leak.get_concrete_function()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def keras_lambda_reads_file(path: Path, secret: Path) -> Path:
    import keras

    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, name="dense")(inputs)
    leaked = keras.layers.Lambda(
        lambda t, p=str(secret): t * tf.cast(tf.strings.length(tf.io.read_file(p)), t.dtype), name="leak")(hidden)
    keras.Model(inputs, leaked).save(path)
    return path
