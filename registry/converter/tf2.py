"""Freezing TF2 models: a SavedModel signature or a Keras model becomes a frozen GraphDef.

``convert_variables_to_constants_v2`` inlines the signature's concrete function
with its variables as constants.  Each output gets an ``Identity`` node named
after its signature key (Keras: the output layer's name), so the recorded
output nodes, and the ``serving_default`` keys of the SavedModel built back
from the frozen graph, are the names the user already knows.  The frozen graph
is checked against the original function on a deterministic input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry.errors import ConversionError


@dataclass
class Frozen:
    graph_def: object
    outputs: list[str]
    inputs: list[str]
    verification: dict


def _node_name(wanted: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-/]", "_", wanted) or "output"
    if not name[0].isalnum():
        name = f"output_{name}"
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def _sample(spec, rng: np.random.Generator) -> np.ndarray:
    import tensorflow as tf

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
    import tensorflow as tf
    from tensorflow.core.framework import attr_value_pb2
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

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

    from registry.converter import graphs, ops

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


def _flat_keys(structure) -> list[str]:
    """Signature outputs are a flat dict; flattening orders it by key."""
    if isinstance(structure, dict):
        return sorted(structure)
    import tensorflow as tf

    return [f"output_{i}" for i in range(len(tf.nest.flatten(structure)))]


def _call_positionally(signature):
    """A signature takes keyword arguments; freeze a function taking them in its input order."""
    import tensorflow as tf

    specs = signature.structured_input_signature[1]
    names = sorted(specs)

    @tf.function(input_signature=[specs[n] for n in names])
    def positional(*args):
        return signature(**dict(zip(names, args)))

    return positional.get_concrete_function()


def from_saved_model(folder: Path, signature_name: str, tolerance: float) -> Frozen:
    import tensorflow as tf

    if not (folder / "saved_model.pb").is_file():
        raise ConversionError("the archive has no saved_model.pb at its top", code="invalid_saved_model")
    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:
        raise ConversionError(f"the SavedModel could not be loaded: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                              code="invalid_saved_model") from exc
    signatures = dict(loaded.signatures)
    if signature_name not in signatures:
        have = ", ".join(sorted(signatures)) or "none"
        raise ConversionError(f"the SavedModel has no signature {signature_name!r} (it has: {have}): pass "
                              "signature=NAME with the push, or save it with that signature",
                              code="signature_not_found")
    signature = signatures[signature_name]
    function = _call_positionally(signature)
    return freeze_function(function, _flat_keys(signature.structured_outputs), tolerance)


def from_keras(path: Path, tolerance: float) -> Frozen:
    import tensorflow as tf

    try:
        import keras
    except ImportError as exc:  # pragma: no cover - keras ships with TensorFlow 2.16+
        raise ConversionError("Keras is not installed in the converter", code="keras_missing") from exc
    try:
        model = keras.models.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:
        text = str(exc).strip()
        missing = sorted(set(re.findall(r"Could not locate (?:class|function) '([^']+)'", text)
                             + re.findall(r"Unknown (?:layer|object|activation|loss)[^']*'([^']+)'", text)))
        if missing or "custom_objects" in text or "register_keras_serializable" in text:
            names = ", ".join(missing) or "unnamed"
            raise ConversionError(
                f"the Keras model needs custom objects the registry does not have ({names}): keep to built-in "
                "layers, or export a SavedModel (model.export(PATH)) and push that with --saved-model",
                code="keras_custom_objects") from exc
        raise ConversionError(f"the Keras file could not be loaded: {type(exc).__name__}: "
                              f"{text.splitlines()[0][:300] if text else ''}", code="invalid_keras") from exc
    specs = [tf.TensorSpec(t.shape, t.dtype, name=_input_name(t, i)) for i, t in enumerate(model.inputs)]

    @tf.function(input_signature=specs)
    def call(*args):
        return model(args[0] if len(args) == 1 else list(args), training=False)

    function = call.get_concrete_function()
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(function.outputs):
        names = [f"output_{i}" for i in range(len(function.outputs))]
    return freeze_function(function, names, tolerance)


def _input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", "") or ""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.split(":")[0])
    return name or f"input_{index}"
