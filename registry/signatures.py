"""A version's signature map, as TF Serving knows it: named entry points into the one frozen graph.

Each signature has a method (predict, classify or regress) and named inputs and
outputs; each of those is a tensor of the frozen graph with its dtype and shape::

    {"serving_default": {"method": "tensorflow/serving/predict",
                         "inputs": {"x": {"name": "x:0", "dtype": "float32", "shape": [None, 1]}},
                         "outputs": {"y": {"name": "y:0", "dtype": "float32", "shape": [None, 1]}},
                         "verification": {"status": "passed", "max_abs_diff": 0.0}}}

A dtype is TensorFlow's name for it; a shape lists dimensions (None: any size) or
is None (unknown rank).  A tensor without a dtype or shape (versions converted
before signatures were recorded) takes them from the graph when it is loaded.

Plain data, no TensorFlow: the web app, the CLI and the migrations read it.
"""

from __future__ import annotations

import re
from typing import Any

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
METHODS = {"predict": PREDICT, "classify": CLASSIFY, "regress": REGRESS}
DEFAULT = "serving_default"
# TF Serving's fixed keys of classify and regress signatures (signature_constants).
CLASSIFY_INPUTS, CLASSIFY_CLASSES, CLASSIFY_SCORES = "inputs", "classes", "scores"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")
KEY_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")
MAX_SIGNATURES = 64


def signature_key(node: str) -> str:
    """A key from a node name: ``InceptionV3/Predictions/Reshape_1`` → ``InceptionV3_Predictions_Reshape_1``."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in node)


def tensor_name(ref: str) -> str:
    """``x`` and ``x:0`` both name tensor ``x:0``; ``x:1`` stays itself."""
    ref = ref.strip()
    return ref if ":" in ref else f"{ref}:0"


def method_name(method: str) -> str:
    """A method's full name from ``predict``/``classify``/``regress`` or the full name itself."""
    return METHODS.get(method, method)


def short_method(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def from_nodes(input_nodes: list[dict] | None, output_nodes: list[str] | None) -> dict[str, Any]:
    """The predict signature of a graph known by its input and output nodes (checkpoint and frozen
    pushes), keyed as the label service has always keyed them."""
    inputs = {}
    for spec in input_nodes or []:
        entry = {"name": tensor_name(spec["name"]), "dtype": spec.get("dtype"), "shape": spec.get("shape")}
        if spec.get("optional"):
            entry["optional"] = True
        inputs[signature_key(spec["name"])] = entry
    outputs = {signature_key(node): {"name": tensor_name(node)} for node in output_nodes or []}
    return {"method": PREDICT, "inputs": inputs, "outputs": outputs}


def node_names(signature: dict[str, Any], side: str) -> list[str]:
    """The nodes of a signature's ``inputs`` or ``outputs`` (their tensors' node names), in key order."""
    return [entry["name"].split(":", 1)[0] for _, entry in sorted(signature[side].items())]


def parse_declared(text: str) -> dict[str, Any]:
    """One signature declared on the command line: ``NAME:inputs=a,b:outputs=c[:method=classify]``.
    Inputs and outputs are node or tensor names; their keys are the names made into keys, or
    ``key=name`` pairs separated by ``;`` (``inputs=images=input;extra=x``)."""
    parts = text.split(":")
    name, fields = parts[0].strip(), {}
    for part in parts[1:]:
        field, sep, value = part.partition("=")
        if not sep or field.strip() not in ("inputs", "outputs", "method"):
            raise ValueError(f"{part!r} in signature {text!r}: write NAME:inputs=a,b:outputs=c[:method=classify]")
        fields[field.strip()] = value.strip()
    declared = {"name": name, "method": fields.get("method", "predict")}
    for side in ("inputs", "outputs"):
        declared[side] = [v.strip() for v in re.split(r"[,;]", fields.get(side, "")) if v.strip()]
    return declared


def validate_declared(declared: Any) -> list[dict[str, Any]]:
    """Signatures declared with a push, checked before anything is stored; raises ValueError with what
    to fix.  Each is ``{"name", "method", "inputs": [node, ...] or {key: node}, "outputs": ...}``."""
    if not isinstance(declared, list):
        raise ValueError('signatures must be a JSON list of {"name", "method", "inputs", "outputs"} objects')
    if len(declared) > MAX_SIGNATURES:
        raise ValueError(f"at most {MAX_SIGNATURES} signatures may be declared")
    seen: set[str] = set()
    out = []
    for i, item in enumerate(declared):
        where = f"signature {i + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object with name, method, inputs and outputs")
        unknown = sorted(set(item) - {"name", "method", "inputs", "outputs"})
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)}: use name, method, inputs, outputs")
        name = item.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(f"{where}: name must be letters, digits and _.-/ (1-128), e.g. classify_x")
        if name in seen:
            raise ValueError(f"signature {name!r} is declared twice")
        seen.add(name)
        method = method_name(str(item.get("method") or "predict"))
        if method not in METHODS.values():
            raise ValueError(f"signature {name!r}: method must be predict, classify or regress, "
                             f"not {item.get('method')!r}")
        entry: dict[str, Any] = {"name": name, "method": method}
        for side in ("inputs", "outputs"):
            entry[side] = _declared_tensors(item.get(side), f"signature {name!r} {side}")
        if not entry["outputs"]:
            raise ValueError(f"signature {name!r} declares no outputs: give at least one output node")
        if method == CLASSIFY:
            _require_keys(name, entry, CLASSIFY_INPUTS, {CLASSIFY_CLASSES, CLASSIFY_SCORES})
        elif method == REGRESS:
            _require_keys(name, entry, REGRESS_INPUTS, {REGRESS_OUTPUTS})
        out.append(entry)
    return out


def _declared_tensors(value: Any, where: str) -> dict[str, str]:
    """``[node, ...]`` (keys made from the names) or ``{key: node}`` → ``{key: tensor name}``."""
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        pairs = []
        for v in value:
            key, sep, node = v.partition("=")
            pairs.append((key.strip(), node.strip()) if sep else (signature_key(v.split(":", 1)[0]), v.strip()))
    elif isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        pairs = [(k.strip(), v.strip()) for k, v in value.items()]
    else:
        raise ValueError(f"{where} must be a list of node names or an object of key: node name")
    tensors: dict[str, str] = {}
    for key, node in pairs:
        if not KEY_RE.match(key) or not node:
            raise ValueError(f"{where}: {key!r}={node!r} is not a key and a node name")
        if key in tensors:
            raise ValueError(f"{where}: key {key!r} is given twice")
        tensors[key] = tensor_name(node)
    return tensors


def _require_keys(name: str, entry: dict, input_key: str, output_keys: set[str]) -> None:
    """TF Serving's classify and regress signatures take one input keyed ``inputs`` (serialized
    tf.Examples) and answer by fixed output keys: make one-entry sides use them."""
    kind = short_method(entry["method"])
    if len(entry["inputs"]) != 1:
        raise ValueError(f"signature {name!r} ({kind}) takes exactly one input: the serialized tf.Examples")
    entry["inputs"] = {input_key: next(iter(entry["inputs"].values()))}
    if set(entry["outputs"]) <= output_keys:
        return
    if len(entry["outputs"]) == 1 and len(output_keys) == 1:
        entry["outputs"] = {next(iter(output_keys)): next(iter(entry["outputs"].values()))}
        return
    if len(entry["outputs"]) == 1 and kind == "classify":
        entry["outputs"] = {CLASSIFY_SCORES: next(iter(entry["outputs"].values()))}
        return
    raise ValueError(f"signature {name!r} ({kind}) outputs must be keyed {' and '.join(sorted(output_keys))} "
                     f"(key=node), not {', '.join(sorted(entry['outputs']))}")
