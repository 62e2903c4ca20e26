"""Telling a classifier's prediction head from its auxiliary and training-only heads.

An inference graph written without output names can end in several sinks: TF-slim's
Inception v3 ends in ``InceptionV3/Predictions/Reshape_1`` and in the auxiliary
classifier ``InceptionV3/AuxLogits/SpatialSqueeze``, which training reads and
inference ignores.  Recording both would make ``:label`` rank by the wrong one and
keep the auxiliary branch in the frozen graph, so the auxiliary heads are left out:
by name (``AuxLogits``, ``aux_*``, loss, metric and summary scopes) and, names
aside, by shape: an auxiliary head predicts the same classes as the main head but
leaves the trunk earlier, so the main head's trunk holds every layer fork the
auxiliary head's trunk holds, and more.  Needs only TensorFlow's graph protos.
"""

from __future__ import annotations

import re
from collections import deque

# Scope segments of heads that are never the prediction: auxiliary classifiers,
# losses, metrics and summaries.
AUXILIARY_SEGMENT = re.compile(r"^(Aux.*|aux|aux_.*)$")
BOOKKEEPING_SEGMENTS = frozenset({"loss", "losses", "metric", "metrics", "summary", "summaries"})
# Ops that apply learned weights to their data input: a trunk is made of these.
LAYER_OPS = frozenset({"Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul", "BatchMatMul", "BatchMatMulV2",
                       "BatchMatMulV3", "Conv2DBackpropInput", "Conv3DBackpropInputV2"})
# Ops that compute from a tensor's shape, not its values: their outputs are not data.
SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})
# Ops a weight passes through on its way from the variable (or frozen constant) to the layer.
WEIGHT_PASSTHROUGH_OPS = frozenset({"Identity", "ReadVariableOp", "Cast", "Enter", "Snapshot"})
PLACEHOLDER_OPS = frozenset({"Placeholder", "PlaceholderV2"})
# What to do about a training graph (no input placeholder), in the server's words (registry.cli.wording).
PUSH_INFERENCE_GRAPH = "Push the inference graph exported for serving as 'graph' with the checkpoint"


def _ref_name(ref: str) -> str:
    return ref.lstrip("^").split(":", 1)[0]


def _data_inputs(node) -> list[str]:
    """The inputs a node computes from (control dependencies carry no values)."""
    return [_ref_name(ref) for ref in node.input if not ref.startswith("^")]


def is_named_auxiliary(name: str) -> bool:
    """A node under an auxiliary-classifier, loss, metric or summary scope (or so named itself)."""
    return any(AUXILIARY_SEGMENT.match(segment) or segment.lower() in BOOKKEEPING_SEGMENTS
               for segment in name.split("/"))


def prediction_heads(nodes: dict, candidates: list[str]) -> list[str]:
    """``candidates`` without the auxiliary and training-only heads.

    Heads are left out by name first, then by shape (see ``_is_auxiliary``); when
    every candidate looks auxiliary by name, none is left out by name, as a graph
    whose only head sits under an ``Aux`` scope still has to be served.
    """
    named = [c for c in candidates if not is_named_auxiliary(c)]
    candidates = named or candidates
    if len(candidates) < 2:
        return candidates
    data = _data_nodes(nodes)
    trunks = {c: _ancestors(nodes, c, data) for c in candidates}
    forks = _layer_forks(nodes, set().union(*trunks.values()))
    profiles = {c: (frozenset(trunks[c] & forks), _classes(nodes, c, trunks[c])) for c in candidates}
    return [c for c in candidates if not any(_is_auxiliary(profiles[c], profiles[o]) for o in candidates if o != c)]


def _is_auxiliary(head: tuple[frozenset, int | None], other: tuple[frozenset, int | None]) -> bool:
    """Whether ``head`` is an auxiliary classifier of ``other``'s task.

    A layer fork is a node whose value feeds a layer and something else: where a head
    or a block branches off.  Two heads hanging off the same trunk node pass the same
    forks; a head that branches off mid-trunk passes only some of the forks the main
    head passes on its longer way (Inception's aux head leaves at Mixed_6e, the main
    head continues through Mixed_7a..7c).  It is auxiliary only when it predicts as
    many classes as the other head, so that heads of different tasks that branch off
    at different depths are both kept, and only when the two share a fork: a head on
    a trunk of its own (a second input) is no other head's auxiliary.
    """
    (forks, classes), (other_forks, other_classes) = head, other
    return bool(forks) and forks < other_forks and classes is not None and classes == other_classes


def _data_nodes(nodes: dict) -> set[str]:
    """Nodes whose values are computed from an input placeholder (through data edges, not shapes)."""
    consumers: dict[str, list[str]] = {}
    for node in nodes.values():
        for name in _data_inputs(node):
            consumers.setdefault(name, []).append(node.name)
    seen: set[str] = set()
    queue = deque(n.name for n in nodes.values() if n.op in PLACEHOLDER_OPS)
    while queue:
        name = queue.popleft()
        if name in seen or nodes[name].op in SHAPE_OPS:
            continue
        seen.add(name)
        queue.extend(consumers.get(name, ()))
    return seen


def _ancestors(nodes: dict, root: str, within: set[str]) -> set[str]:
    """The data nodes ``root`` is computed from, itself included."""
    seen: set[str] = set()
    queue = deque([root])
    while queue:
        name = queue.popleft()
        if name in seen or name not in within:
            continue
        seen.add(name)
        queue.extend(_data_inputs(nodes[name]))
    return seen


def _layer_forks(nodes: dict, live: set[str]) -> set[str]:
    """Nodes of ``live`` whose value goes to two or more live nodes, one of them a layer."""
    consumers: dict[str, set[str]] = {}
    for name in live:
        for source in _data_inputs(nodes[name]):
            consumers.setdefault(source, set()).add(name)
    return {name for name, users in consumers.items()
            if name in live and len(users) > 1 and any(nodes[u].op in LAYER_OPS for u in users)}


def _classes(nodes: dict, head: str, trunk: set[str]) -> int | None:
    """How many values per example the last layer before ``head`` outputs (None: cannot tell)."""
    queue = deque([head])
    seen: set[str] = set()
    while queue:
        name = queue.popleft()
        if name in seen or name not in trunk:
            continue
        seen.add(name)
        node = nodes[name]
        if node.op in LAYER_OPS:
            return _layer_width(nodes, node, trunk)
        queue.extend(_data_inputs(node))
    return None


def _layer_width(nodes: dict, layer, data: set[str]) -> int | None:
    """The output width of a layer, read from its weight's declared shape."""
    weights = [(i, name) for i, name in enumerate(_data_inputs(layer)) if name not in data]
    if len(weights) != 1:
        return None
    position, name = weights[0]
    shape = _weight_shape(nodes, name)
    if not shape:
        return None
    width = shape[-1]
    if layer.op == "MatMul" and position == 1 and _flag(layer, "transpose_b"):
        width = shape[0]
    elif layer.op == "DepthwiseConv2dNative" and len(shape) == 4:
        width = shape[2] * shape[3] if min(shape[2], shape[3]) > 0 else -1
    return width if width > 0 else None


def _flag(node, key: str) -> bool:
    # Looked up without indexing: indexing a missing key of a proto map would add it to the upload's node.
    return key in node.attr and node.attr[key].b


def _weight_shape(nodes: dict, name: str) -> list[int] | None:
    """The declared shape of the variable or constant behind a weight input."""
    for _ in range(8):  # weights reach a layer through a read, a cast or two
        node = nodes.get(name)
        if node is None:
            return None
        if node.op in ("VariableV2", "Variable", "VarHandleOp"):
            if "shape" not in node.attr or node.attr["shape"].shape.unknown_rank:
                return None
            return [d.size for d in node.attr["shape"].shape.dim]
        if node.op == "Const":
            return [d.size for d in node.attr["value"].tensor.tensor_shape.dim] if "value" in node.attr else None
        inputs = _data_inputs(node)
        if node.op not in WEIGHT_PASSTHROUGH_OPS or not inputs:
            return None
        name = inputs[0]
    return None


PROBABILITY_OPS = ("Softmax", "Sigmoid")
PASSTHROUGH_OPS = frozenset({"Identity", "Reshape", "Squeeze", "Snapshot", "ExpandDims"})


def _probability_op(nodes: dict, name: str) -> str | None:
    """The Softmax or Sigmoid an output is (through Reshape, Identity and the like), if it is one."""
    seen: set[str] = set()
    while name in nodes and name not in seen:
        seen.add(name)
        node = nodes[name]
        if node.op in PROBABILITY_OPS:
            return node.op
        if node.op not in PASSTHROUGH_OPS or not node.input:
            return None
        name = _ref_name(node.input[0])
    return None


def prediction_output(nodes: dict, outputs: list[str], sizes: dict[str, int | None],
                      labels: int | None) -> tuple[str | None, str]:
    """The output ``:label`` ranks classes by, and why: the probability output (a Softmax or Sigmoid,
    possibly through Reshape/Identity) whose size matches the labels file, else the only probability
    output, else the first output.  ``sizes`` holds each output's last dimension where known."""
    if not outputs:
        return None, "the version has no outputs"
    if len(outputs) == 1:
        return outputs[0], "the only output"
    probabilities = [(o, op) for o in outputs if (op := _probability_op(nodes, o))]
    if labels:
        matching = [(o, op) for o, op in probabilities if sizes.get(o) in (labels, labels - 1)]  # or background
        if matching:
            return matching[0][0], (f"the {matching[0][1]} output whose {labels} classes match the labels file"
                                    + (f" (of {len(matching)} that do)" if len(matching) > 1 else ""))
    if probabilities:
        size = sizes.get(probabilities[0][0])
        return probabilities[0][0], (f"the {probabilities[0][1]} output" + (f" ({size} classes)" if size else "")
                                     + (f", the first of {len(probabilities)}" if len(probabilities) > 1 else "")
                                     + ("; none matches the labels file's size" if labels else ""))
    return outputs[0], "the first output: none of the outputs is a Softmax or Sigmoid"


def labels_mismatch(filename: str, lines: int, node: str | None, classes: int | None) -> str | None:
    """What is wrong between a labels file of ``lines`` lines and the prediction output ``node`` of
    ``classes`` classes (None: they fit, or the size is not known).  A file fits with one line per
    class, or one more: a background line first, as TF-slim's 1001-line ImageNet list has it for a
    1000-class ResNet or VGG (:meth:`registry.entities.VersionInfo.class_labels` then leaves that line
    out)."""
    if not node or not classes or lines in (classes, classes + 1):
        return None
    return (f"{filename} has {lines} line{'' if lines == 1 else 's'} but the prediction output {node} has "
            f"{classes} class{'' if classes == 1 else 'es'}: give {classes} label{'' if classes == 1 else 's'}, "
            f"one per class (or {classes + 1} with a background line first)")

