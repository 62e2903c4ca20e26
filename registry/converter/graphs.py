"""Reading uploaded graphs and finding their way around them (needs TensorFlow's protos)."""

from __future__ import annotations

import difflib
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorflow.core.framework import graph_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import dtypes

from registry.converter.heads import PLACEHOLDER_OPS, PUSH_INFERENCE_GRAPH, prediction_heads
from registry.errors import ConversionError

# Ops that exist only for training, checkpointing or bookkeeping: never an output.
TRAINING_OPS = {
    "Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp",
    "AssignSubVariableOp", "SaveV2", "Save", "SaveSlices", "RestoreV2", "Restore", "RestoreSlice",
    "MergeV2Checkpoints", "ShardedFilename", "VarIsInitializedOp", "IsVariableInitialized",
    "ScalarSummary", "HistogramSummary", "ImageSummary", "MergeSummary", "TensorSummary",
    "TensorSummaryV2", "AudioSummaryV2", "NoOp", "Const", "Placeholder", "PlaceholderWithDefault",
    "VariableV2", "VarHandleOp", "Variable", "ReportUninitializedVariables", "Assert", "Print", "PrintV2",
}
TRAINING_PREFIXES = ("Apply", "ResourceApply", "SparseApply", "ResourceSparseApply", "Write")
TRAINING_SCOPES = ("save/", "save_1/", "gradients/", "gradients_1/", "init", "report_uninitialized",
                   "Summary", "summaries/", "global_step", "train/", "optimizer/", "Optimizer/")
SHAPE_OPS = {"Shape", "ShapeN", "Size", "Rank"}
# Stateful ops whose control edges an inference graph can do without.
STRIPPABLE_CONTROL_OPS = {"Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp",
                          "AssignSubVariableOp", "NoOp"}


def unique_node_name(wanted: str, taken: set[str]) -> str:
    """A valid node name made from ``wanted`` (a signature key, a layer name) that no node in ``taken``
    has; added to ``taken``."""
    name = re.sub(r"[^A-Za-z0-9_.\-/]", "_", wanted) or "output"
    if not name[0].isalnum():
        name = f"output_{name}"
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def node_name(ref: str) -> str:
    """``^a``, ``a:1`` and ``a`` all name node ``a``."""
    ref = ref[1:] if ref.startswith("^") else ref
    return ref.split(":", 1)[0]


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096].lstrip()
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return head[:1].isalpha() or head[:1] == b"#"


def load_graph_def(path: Path, role: str) -> graph_pb2.GraphDef:
    """A GraphDef from a binary ``.pb`` or a text ``.pbtxt`` file."""
    data = path.read_bytes()
    graph_def = graph_pb2.GraphDef()
    try:
        if _looks_like_text(data):
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise ConversionError(
            f"the {role} file is not a TensorFlow GraphDef ({exc}): upload the binary .pb "
            "(or text .pbtxt) written by tf.io.write_graph or export_inference_graph.py",
            code="invalid_graph",
        ) from exc
    if not graph_def.node:
        raise ConversionError(f"the {role} file is a GraphDef with no nodes: upload the exported graph", code="invalid_graph")
    return graph_def


def load_meta_graph(path: Path) -> meta_graph_pb2.MetaGraphDef:
    meta = meta_graph_pb2.MetaGraphDef()
    try:
        meta.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise ConversionError(
            f"the meta file is not a MetaGraphDef ({exc}): upload the model.ckpt.meta written by "
            "tf.compat.v1.train.Saver next to the checkpoint",
            code="invalid_meta_graph",
        ) from exc
    if not meta.graph_def.node:
        raise ConversionError(
            "the meta file holds no graph: upload the model.ckpt.meta written by tf.compat.v1.train.Saver",
            code="invalid_meta_graph",
        )
    return meta


def all_nodes(graph_def: graph_pb2.GraphDef) -> Iterable[tuple[str, str]]:
    """Every ``(name, op)``, including those inside the function library."""
    for node in graph_def.node:
        yield node.name, node.op
    for function in graph_def.library.function:
        for node in function.node_def:
            yield f"{function.signature.name}/{node.name}", node.op


def closest_names(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if not close:
        # Fall back to names sharing the last path component (e.g. ".../Softmax").
        tail = name.rsplit("/", 1)[-1].lower()
        close = [c for c in candidates if c.rsplit("/", 1)[-1].lower() == tail][:n]
    return close


def require_nodes(graph_def: graph_pb2.GraphDef, names: list[str], kind: str) -> list[str]:
    """Check that every name is a node of the graph; tensor names ``x:0`` are accepted."""
    existing = {node.name for node in graph_def.node}
    out = []
    for raw in names:
        name = node_name(raw.strip())
        if name not in existing:
            suggestions = closest_names(name, existing)
            hint = f" Closest existing nodes: {', '.join(suggestions)}." if suggestions else ""
            if kind == "input":  # what can be fed: the graph's placeholders
                placeholders = [n.name for n in graph_def.node if n.op in PLACEHOLDER_OPS]
                more = " ..." if len(placeholders) > 10 else ""
                hint += f" Its placeholders: {', '.join(placeholders[:10])}{more}." if placeholders else \
                    " It has no placeholder."
            raise ConversionError(
                f"{kind} node {name!r} is not in the graph.{hint} Pass the exact node name "
                f"(see the graph's nodes with tf.compat.v1.graph_util or Netron).",
                code=f"unknown_{kind}_node",
            )
        if name not in out:
            out.append(name)
    return out


def _is_training_only(node) -> bool:
    if node.op in TRAINING_OPS or node.op.startswith(TRAINING_PREFIXES):
        return True
    return node.name.startswith(TRAINING_SCOPES) or "/gradients/" in node.name


def detect_outputs(graph_def: graph_pb2.GraphDef) -> list[str]:
    """Nodes nothing consumes, leaving out training, checkpoint and summary
    machinery, auxiliary and evaluation heads, and anything that does not
    depend on an input placeholder."""
    nodes = {node.name: node for node in graph_def.node}
    consumed: set[str] = set()
    for node in graph_def.node:
        consumed.update(node_name(i) for i in node.input)
    placeholders = {n.name for n in graph_def.node if n.op in ("Placeholder", "PlaceholderV2")}
    fed_by_input = _depends_on(nodes, placeholders)
    candidates = [
        name for name, node in nodes.items()
        if name not in consumed and not _is_training_only(node) and name in fed_by_input
        and node.op not in SHAPE_OPS
    ]
    # A model's outputs are computed from its weights: when some candidates read
    # variables, leftovers that read none (label bookkeeping in a loss) are not outputs.
    variables = {n.name for n in graph_def.node if n.op in ("VariableV2", "Variable", "VarHandleOp")}
    if variables:
        weighted = [c for c in candidates if ancestors(nodes, [c]) & variables]
        candidates = weighted or candidates
    if not candidates and not placeholders:  # data from an input pipeline: a training graph
        raise ConversionError(
            f"could not find the graph's outputs: it has no input placeholder, so it reads its data from an "
            f"input pipeline, as a training graph does. {PUSH_INFERENCE_GRAPH} (TF-slim's "
            "export_inference_graph.py writes one), or pass output_nodes (comma-separated node names) with "
            "the push.",
            code="no_output_nodes",
        )
    if not candidates:
        raise ConversionError(
            "could not find the graph's outputs: no node that depends on an input is left unconsumed. "
            "Pass output_nodes (comma-separated node names) with the push.",
            code="no_output_nodes",
        )
    # Evaluation sinks (accuracy, metrics) read a label placeholder on top of what
    # the prediction reads: keep the candidates whose inputs are not a strict
    # superset of another candidate's.
    reads = {c: frozenset(ancestors(nodes, [c]) & placeholders) for c in candidates}
    candidates = [c for c in candidates if not any(reads[o] < reads[c] for o in candidates)]
    # Auxiliary classifiers (Inception's AuxLogits) are sinks too, but training's, not the prediction.
    return sorted(prediction_heads(nodes, candidates))


def ancestors(nodes: dict, roots: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    queue = deque(roots)
    while queue:
        name = queue.popleft()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        queue.extend(node_name(i) for i in nodes[name].input)
    return seen


def _depends_on(nodes: dict, sources: set[str]) -> set[str]:
    """Names of nodes with a path from any of ``sources``."""
    consumers: dict[str, list[str]] = {}
    for node in nodes.values():
        for i in node.input:
            consumers.setdefault(node_name(i), []).append(node.name)
    seen: set[str] = set()
    queue = deque(sources)
    while queue:
        name = queue.popleft()
        if name in seen:
            continue
        seen.add(name)
        queue.extend(consumers.get(name, ()))
    return seen


def extract_subgraph(graph_def: graph_pb2.GraphDef, outputs: list[str]) -> tuple[graph_pb2.GraphDef, int]:
    """The nodes ``outputs`` need, without control edges to training-only ops.

    Returns the new GraphDef and how many control dependencies were dropped.
    """
    nodes = {node.name: node for node in graph_def.node}
    keep: set[str] = set()
    dropped = 0
    queue = deque(outputs)
    while queue:
        name = queue.popleft()
        if name in keep:
            continue
        keep.add(name)
        for ref in nodes[name].input:
            target = node_name(ref)
            if ref.startswith("^") and (nodes.get(target) is None or nodes[target].op in STRIPPABLE_CONTROL_OPS):
                dropped += 1
                continue
            if target not in nodes:
                raise ConversionError(
                    f"node {name!r} reads {target!r}, which is not in the graph: the graph file is incomplete",
                    code="invalid_graph",
                )
            queue.append(target)
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    for node in graph_def.node:  # keep the original order
        if node.name in keep:
            new = out.node.add()
            new.CopyFrom(node)
            del new.input[:]
            new.input.extend(
                ref for ref in node.input
                if not (ref.startswith("^") and (node_name(ref) not in nodes or nodes[node_name(ref)].op in STRIPPABLE_CONTROL_OPS))
            )
            # Device placements name the training cluster; colocation hints may name stripped nodes.
            new.device = ""
            if "_class" in new.attr:
                del new.attr["_class"]
    _copy_used_functions(graph_def, out)
    return out, dropped


def _copy_used_functions(source: graph_pb2.GraphDef, target: graph_pb2.GraphDef) -> None:
    library = {f.signature.name: f for f in source.library.function}
    if not library:
        return

    def referenced(node_defs) -> set[str]:
        names: set[str] = set()
        for node in node_defs:
            if node.op in library:
                names.add(node.op)
            for value in node.attr.values():
                if value.HasField("func"):
                    names.add(value.func.name)
                names.update(f.name for f in value.list.func)
        return names & library.keys()

    needed: set[str] = set()
    queue = deque(referenced(target.node))
    while queue:
        name = queue.popleft()
        if name in needed:
            continue
        needed.add(name)
        queue.extend(referenced(library[name].node_def))
    for name in sorted(needed):
        target.library.function.add().CopyFrom(library[name])
    for gradient in source.library.gradient:
        if gradient.function_name in needed:
            target.library.gradient.add().CopyFrom(gradient)


def dtype_name(enum: int) -> str:
    try:
        return dtypes.as_dtype(enum).name
    except TypeError:
        return types_pb2.DataType.Name(enum)


def dtype_enum(name: str) -> int:
    return dtypes.as_dtype(name).as_datatype_enum


def describe_input(node) -> dict:
    """Name, dtype and shape of a placeholder-like node, as recorded in the version."""
    dtype = node.attr["dtype"].type if "dtype" in node.attr else node.attr["T"].type
    shape = None
    if "shape" in node.attr and not node.attr["shape"].shape.unknown_rank:
        shape = [d.size if d.size >= 0 else None for d in node.attr["shape"].shape.dim]
    elif "_output_shapes" in node.attr and node.attr["_output_shapes"].list.shape:
        s = node.attr["_output_shapes"].list.shape[0]
        if not s.unknown_rank:
            shape = [d.size if d.size >= 0 else None for d in s.dim]
    return {
        "name": node.name,
        "dtype": dtype_name(dtype),
        "shape": shape,
        "optional": node.op == "PlaceholderWithDefault",
    }


def placeholders_read(graph_def: graph_pb2.GraphDef, outputs: list[str]) -> list[str]:
    """The placeholders ``outputs`` are computed from, in graph order."""
    nodes = {node.name: node for node in graph_def.node}
    needed = ancestors(nodes, outputs)
    return [n.name for n in graph_def.node
            if n.op in ("Placeholder", "PlaceholderV2", "PlaceholderWithDefault") and n.name in needed]


def detect_inputs(graph_def: graph_pb2.GraphDef, requested: list[str] | None) -> list[dict]:
    nodes = {node.name: node for node in graph_def.node}
    if requested:
        names = requested
    else:
        names = [n.name for n in graph_def.node if n.op in ("Placeholder", "PlaceholderV2", "PlaceholderWithDefault")]
    return [describe_input(nodes[name]) for name in names]
