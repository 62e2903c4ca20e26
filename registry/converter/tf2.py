"""SavedModel and Keras uploads become the same kind of frozen GraphDef as checkpoints.

A SavedModel (TF1 or TF2) is never loaded: :mod:`registry.converter.plan` reads
every signature's graph out of the MetaGraphDef as data, and the converter
freezes it with a checkpoint reader like any checkpoint (each variable's
checkpoint key read off the restore ops, not run), so the upload's init, main
and restore ops never run.

A Keras file is different: its model exists only as a configuration that Keras
builds.  Its whole configuration is scanned as data first
(:mod:`registry.converter.upload_scan`); only a model made of Keras's own
classes is loaded, and its call is frozen with ``convert_variables_to_constants_v2``
and checked against the model on a deterministic input.  Output nodes are named
after the output layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from registry.converter import graphs, ops, upload_scan
from registry.converter.graphs import unique_node_name as _node_name
from registry.errors import ConversionError


@dataclass
class Frozen:
    graph_def: object
    outputs: list[str]
    inputs: list[str]
    verification: dict


def _sample(spec, rng: np.random.Generator) -> np.ndarray:
    shape = [2 if d is None else d for d in (spec.shape.as_list() if spec.shape.rank is not None else [2])]
    dtype = tf.as_dtype(spec.dtype)
    if dtype.is_floating:
        return rng.random(shape).astype(dtype.as_numpy_dtype)
    if dtype.is_integer:
        return rng.integers(0, 2, shape).astype(dtype.as_numpy_dtype)
    if dtype.is_bool:
        return rng.integers(0, 2, shape).astype(bool)
    raise ConversionError(f"cannot make a test value for an input of type {dtype.name}", code="unsupported_input")


def freeze_function(function, output_keys: list[str], tolerance: float) -> Frozen:
    """Freeze a concrete function whose flat outputs are named ``output_keys``."""
    try:
        frozen = convert_variables_to_constants_v2(function)
    except Exception as exc:
        raise ConversionError(f"the signature could not be frozen: {type(exc).__name__}: {exc}",
                              code="freeze_failed") from exc
    graph_def = frozen.graph.as_graph_def()
    taken = {n.name for n in graph_def.node}
    outputs = []
    for key, tensor in zip(output_keys, frozen.outputs):
        name = _node_name(key, taken)
        node = graph_def.node.add(name=name, op="Identity", input=[tensor.name.removesuffix(":0")])
        node.attr["T"].CopyFrom(attr_value_pb2.AttrValue(type=tensor.dtype.as_datatype_enum))
        outputs.append(name)
    inputs = [t.name.rsplit(":", 1)[0] for t in frozen.inputs]
    scan = ops.scan(graphs.all_nodes(graph_def))
    if scan["flagged"]:
        reason = "the graph contains flagged ops and was not run: " + ", ".join(
            f"{f['op']} ({f['category']})" for f in scan["flags"])
        return Frozen(graph_def, outputs, inputs, {"status": "skipped", "reason": reason, "max_abs_diff": None,
                                                   "tolerance": tolerance})
    # The same deterministic input through the original function and the frozen graph.
    rng = np.random.default_rng(0)
    samples = [_sample(t, rng) for t in frozen.inputs]
    expected = [np.asarray(v) for v in tf.nest.flatten(function(*[tf.constant(s) for s in samples]))]
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        got = session.run([f"{o}:0" for o in outputs], {f"{i}:0": s for i, s in zip(inputs, samples)})
    diff = max((float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0)
               for a, b in zip(expected, got)) if got else 0.0
    verification = {"status": "passed" if diff <= tolerance else "failed", "max_abs_diff": diff,
                    "tolerance": tolerance}
    if diff > tolerance:
        raise ConversionError(f"the frozen graph differs from the model by {diff:.3g} (tolerance {tolerance:g})",
                              code="verification_failed")
    return Frozen(graph_def, outputs, inputs, verification)


def from_keras(path: Path, tolerance: float, allowed_ops: list[str] | tuple[str, ...] = ()) -> tuple[Frozen, dict]:
    """Freeze a Keras file; returns the frozen model and the scan of its whole configuration."""
    scan = upload_scan.scan_keras(upload_scan.keras_config(path))
    if scan.custom_objects:
        names = ", ".join(sorted(set(scan.custom_objects)))
        raise ConversionError(
            f"the Keras model needs custom objects the registry does not have ({names}): keep to built-in "
            "layers, or export a SavedModel (model.export(PATH)) and push that with --saved-model",
            code="keras_custom_objects")
    blocking = scan.blocking(allowed_ops)
    if blocking:
        raise ConversionError(
            "flagged: the Keras model contains " + ", ".join(
                f"{f['op']} ({f['category'].replace('_', ' ')}) at {', '.join(f['nodes'])}" for f in blocking)
            + "; it was not loaded and nothing of it ran. Keep to built-in layers (a Lambda layer is Python "
            "code), or export a SavedModel (model.export(PATH)) and push that with --saved-model",
            code="flagged_upload")
    try:
        import keras  # Keras loads only for a Keras upload whose scan found nothing
    except ImportError as exc:  # pragma: no cover - keras ships with TensorFlow 2.16+
        raise ConversionError("Keras is not installed in the converter", code="keras_missing") from exc
    # Safe to load: the scan above read the whole configuration as data and found only Keras's own
    # built-in classes and functions, so building the model runs Keras's code and no code of the
    # upload's (and safe_mode would refuse a serialised Python lambda besides).
    try:
        model = keras.models.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:
        text = str(exc).strip()
        raise ConversionError(f"the Keras file could not be loaded: {type(exc).__name__}: "
                              f"{text.splitlines()[0][:300] if text else ''}", code="invalid_keras") from exc
    specs = [tf.TensorSpec(t.shape, t.dtype, name=_input_name(t, i)) for i, t in enumerate(model.inputs)]

    @tf.function(input_signature=specs)
    def call(*args):
        return model(args[0] if len(args) == 1 else list(args), training=False)

    function = call.get_concrete_function()
    names = list(getattr(model, "output_names", None) or [])  # a functional model's output layers
    if not names:  # a Sequential model has none: its output layers are where its outputs come from
        names = [getattr(getattr(getattr(t, "_keras_history", None), "operation", None), "name", "")
                 for t in model.outputs]
    if len(names) != len(function.outputs) or not all(names) or len(set(names)) != len(names):
        names = [f"output_{i}" for i in range(len(function.outputs))]
    return freeze_function(function, names, tolerance), {"flags": scan.flags,
                                                          "op_histogram": dict(scan.histogram)}


def _input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", "") or ""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.split(":")[0])
    return name or f"input_{index}"
