"""Verification: does the frozen graph compute what the checkpoint did?

Runs the frozen graph and the un-frozen inference graph, whose variables we
load with our own ``RestoreV2`` (never the upload's restore or init ops), on the
same deterministic input, and reports the largest absolute difference.

One graph at a time: the restored graph is dropped before the frozen one is
read.  The frozen graph's big constants (its weights) are read from the file
and fed to it, in place of their ``Const`` ops (each checked as ``Const`` would
check it): a ``Session`` holds a constant four or five times over (the graph,
its own copy, each run's partition, the kernel's tensor), while a fed array is
used where it lies, so verifying a 1 GiB graph takes about 1 GiB, not 5.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import graph_pb2

from registry.converter import ops
from registry.converter.freeze import RESOURCE_VARIABLE_OPS, VARIABLE_OPS
from registry.converter.graphfile import read_graph_def
from registry.converter.memory import no_mark
from registry.converter.sample_inputs import CannotVerify, decoded_image_format, deterministic_feeds
from registry.errors import ConversionError

tf1 = tf.compat.v1
# A frozen graph's constants this big (its weights) are fed to it; the small ones (shapes, axes, which
# shape inference reads) stay constants.
FED_CONSTANT_BYTES = 1 << 20


def _session_config():
    config = tf1.ConfigProto(inter_op_parallelism_threads=1, intra_op_parallelism_threads=2)
    # Grappler's constant folding copies every constant again; verification does
    # not need an optimised graph, and both runs use the same settings.
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


def _import(graph_def: graph_pb2.GraphDef) -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


def _restore_ops(graph: tf.Graph, pruned: graph_pb2.GraphDef, checkpoint_prefix: str,
                 variable_keys: dict[str, str]) -> list:
    """Our own RestoreV2 and assigns for the graph's variables (never the upload's restore ops)."""
    variables = [n for n in pruned.node if n.op in VARIABLE_OPS | RESOURCE_VARIABLE_OPS]
    if not variables:
        return []
    with graph.as_default(), tf.name_scope("registry_verify_restore"):
        restored = tf.raw_ops.RestoreV2(
            prefix=checkpoint_prefix,
            tensor_names=[variable_keys[n.name] for n in variables],
            shape_and_slices=[""] * len(variables),
            dtypes=[tf.as_dtype(n.attr["dtype"].type).base_dtype for n in variables],
        )
        assigns = []
        for node, value in zip(variables, restored):
            target = graph.get_operation_by_name(node.name).outputs[0]
            if node.op in RESOURCE_VARIABLE_OPS:
                assigns.append(tf.raw_ops.AssignVariableOp(resource=target, value=value))
            else:
                assigns.append(tf.raw_ops.Assign(ref=target, value=value, validate_shape=False).op)
    return assigns


def _tensors(signature: dict, side: str) -> list[dict]:
    return [{"name": e["name"], "optional": bool(e.get("optional"))} for _, e in sorted(signature[side].items())]


def run_signatures(graph: tf.Graph, signatures: dict[str, dict], image_format: str | None,
                   setup=None, constants: dict[str, np.ndarray] | None = None) -> dict[str, list[np.ndarray] | Exception]:
    """Each signature's outputs (in key order) on its deterministic inputs, or why it could not run;
    ``constants``: the frozen graph's fed constants (:func:`load_frozen`)."""
    results: dict[str, list[np.ndarray] | Exception] = {}
    with tf1.Session(graph=graph, config=_session_config()) as session:
        if setup:
            session.run(setup)
        for name, signature in signatures.items():
            try:
                feeds = {f"{node}:0": value for node, value in (constants or {}).items()}
                feeds.update(deterministic_feeds(_tensors(signature, "inputs"), graph, image_format))
                fetches = [graph.get_tensor_by_name(e["name"]) for e in _tensors(signature, "outputs")]
                results[name] = session.run(fetches, feed_dict=feeds)
            except (CannotVerify, tf.errors.OpError, ValueError, TypeError, KeyError) as exc:
                results[name] = exc
    return results


def describe(graph: tf.Graph, signatures: dict[str, dict]) -> None:
    """Fill in each signature tensor's dtype and shape that the plan did not know, from the graph."""
    for signature in signatures.values():
        for side in ("inputs", "outputs"):
            for entry in signature[side].values():
                if entry.get("dtype") and "shape" in entry:
                    continue
                tensor = graph.get_tensor_by_name(entry["name"])
                entry.setdefault("dtype", tensor.dtype.base_dtype.name)
                entry["dtype"] = entry["dtype"] or tensor.dtype.base_dtype.name
                entry.setdefault("shape", None if tensor.shape.rank is None else tensor.shape.as_list())


def load_frozen(frozen_path: Path, keep_values: bool = True) -> tuple[tf.Graph, dict[str, np.ndarray], str | None]:
    """The frozen graph in ``frozen_path``, read a node at a time, with each constant of
    :data:`FED_CONSTANT_BYTES` or more replaced by a ``Placeholder`` of its name, dtype and shape;
    ``(graph, {constant: its values}, the image format it decodes)``.  The values are checked as
    TensorFlow's ``Const`` checks them when it loads (its dtype, its size against its shape); with
    ``keep_values`` False they are left out.  Raises ConversionError when the graph would not load."""
    constants: dict[str, np.ndarray] = {}
    try:
        graph_def, lifted = read_graph_def(frozen_path, FED_CONSTANT_BYTES)
        for node in graph_def.node:
            if node.name not in lifted:
                continue
            tensor = node.attr["value"].tensor
            if node.attr["dtype"].type != tensor.dtype:
                raise ValueError(f"Const {node.name!r}: its value is {tf.as_dtype(tensor.dtype).name}, its dtype "
                                 f"{tf.as_dtype(node.attr['dtype'].type).name}")
            shape = [d.size for d in tensor.tensor_shape.dim]
            dtype = np.dtype(tf.as_dtype(tensor.dtype).as_numpy_dtype)
            content = lifted.pop(node.name)
            if content.size != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise ValueError(f"Const {node.name!r}: {content.size} bytes of values for shape {shape}")
            if keep_values:
                constants[node.name] = content.view(dtype).reshape(shape)
            node.op = "Placeholder"
            node.attr["shape"].shape.CopyFrom(tensor.tensor_shape)
            del node.attr["value"]
        return _import(graph_def), constants, decoded_image_format(graph_def)
    except (ValueError, DecodeError) as exc:  # a node the freeze left inconsistent: it would not load when served
        raise ConversionError(f"the frozen graph does not load: {error_summary(exc)}. Upload a frozen graph, or "
                              "report the model's structure", code="verification_failed") from exc


def describe_frozen(frozen_path: Path, signatures: dict[str, dict]) -> None:
    """:func:`describe` for a frozen graph that is not run (verification off or skipped)."""
    try:
        describe(load_frozen(frozen_path, keep_values=False)[0], signatures)
    except (ConversionError, ValueError, KeyError, TypeError, tf.errors.OpError):  # left to the loader
        pass


def verify_signatures(
    frozen_path: Path, pruned: graph_pb2.GraphDef, checkpoint_prefix: str | None,
    variable_keys: dict[str, str], signatures: dict[str, dict], tolerance: float,
    note: str = "uploaded already frozen: ran it once, nothing to compare against",
    mark: Callable[[str], None] = no_mark,
) -> dict[str, dict]:
    """Each signature of the frozen graph against the original (the checkpoint-restored graph, or a
    SavedModel's graph with its variables), on the same deterministic inputs.  Fills in tensor dtypes
    and shapes; returns each signature's verification (``status``: passed, ran, skipped or failed).
    ``mark`` is told each stage as it ends (``memory.MemoryTrace``)."""
    original = None
    if checkpoint_prefix is not None:
        graph = _import(pruned)
        original = run_signatures(graph, signatures, decoded_image_format(pruned),
                                  setup=_restore_ops(graph, pruned, checkpoint_prefix, variable_keys))
        del graph
        gc.collect()  # the restored graph's variables go before the frozen graph's constants come
        mark("restored graph run")
    graph, constants, image_format = load_frozen(frozen_path)
    mark("frozen graph load")
    describe(graph, signatures)
    frozen = run_signatures(graph, signatures, image_format, constants=constants)
    del graph, constants
    mark("frozen graph run")
    random_ops = sorted({n.op for n in pruned.node if n.op in RANDOM_OPS})
    return {name: _verdict(signatures[name], frozen[name], None if original is None else original[name],
                           tolerance, random_ops, note) for name in signatures}


def _verdict(signature: dict, frozen, original, tolerance: float, random_ops: list[str], note: str) -> dict:
    keys = sorted(signature["outputs"])
    for result in (frozen, original):
        if isinstance(result, CannotVerify):
            return {"status": "skipped", "reason": str(result), "max_abs_diff": None, "tolerance": tolerance}
        if isinstance(result, Exception):
            if _sandbox_hid_a_file(result):
                return {"status": "skipped", "max_abs_diff": None, "tolerance": tolerance,
                        "reason": f"its {result.node_def.op} op could not open its file in the converter's "
                                  f"sandbox, which shows it its work directory only ({error_summary(result)})"}
            return {"status": "failed", "max_abs_diff": None, "tolerance": tolerance,
                    "reason": f"the frozen graph does not run on a test input: {error_summary(result)}. Check the "
                              "output and input nodes, or export an inference graph (is_training=False)"}
    outputs = _describe(keys, frozen)
    if original is None:
        return {"status": "ran", "max_abs_diff": None, "tolerance": tolerance, "outputs": outputs, "note": note}
    diff, where = max_abs_difference(frozen, original, [signature["outputs"][k]["name"].split(":")[0] for k in keys])
    if diff > tolerance:
        hint = (f" The graph contains random ops ({', '.join(random_ops)}), so each run differs: export an "
                "inference graph without dropout or sampling (is_training=False)." if random_ops else "")
        return {"status": "failed", "max_abs_diff": diff, "tolerance": tolerance, "outputs": outputs,
                "reason": f"the frozen graph does not reproduce the checkpoint: output {where!r} differs by "
                          f"{diff:.3g} (tolerance {tolerance:g}).{hint}"}
    return {"status": "passed", "max_abs_diff": diff, "tolerance": tolerance, "outputs": outputs}


def max_abs_difference(a: list[np.ndarray], b: list[np.ndarray], names: list[str]) -> tuple[float, str | None]:
    worst, where = 0.0, None
    for name, x, y in zip(names, a, b):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return float("inf"), name
        if x.dtype.kind in "fciub":
            diff = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
        else:
            diff = 0.0 if np.array_equal(x, y) else float("inf")
        if np.isnan(diff):
            diff = 0.0 if np.array_equal(np.isnan(x), np.isnan(y)) else float("inf")
        if where is None or diff > worst:
            worst, where = diff, name
    return worst, where


def error_summary(exc: Exception) -> str:
    """The informative line of a TensorFlow error (they start with boilerplate)."""
    message = getattr(exc, "message", None) or str(exc)
    boilerplate = ("Graph execution error", "Detected at node", "Node:", "File ", "[[", "defined at")
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(boilerplate)]
    return (useful or lines or [type(exc).__name__])[0]


RANDOM_OPS = {"RandomUniform", "RandomStandardNormal", "TruncatedNormal", "RandomUniformInt", "Multinomial"}


def _sandbox_hid_a_file(exc: Exception) -> bool:
    """A file-reading op (one its model's admin allowed: flagged graphs never run) found no file
    to read: the converter child sees no file outside its work directory (converter/sandbox.py)."""
    node = getattr(exc, "node_def", None)
    return (isinstance(exc, (tf.errors.NotFoundError, tf.errors.PermissionDeniedError)) and node is not None
            and ops.classify(node.op) == ops.READS_FILES)


def _describe(names: list[str], values: list[np.ndarray]) -> list[dict]:
    return [{"name": n, "dtype": str(np.asarray(v).dtype), "test_shape": list(np.shape(v))} for n, v in zip(names, values)]
