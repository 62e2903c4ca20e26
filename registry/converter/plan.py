"""What a conversion freezes: every signature of a version, and the graph they share.

A SavedModel (TF1 or TF2) keeps every signature it was saved with.  Its graph is
read out of the MetaGraphDef as data, never loaded: the default signature's
inputs are named after their keys (placeholders become ``x`` rather than
``serving_default_x``) and it gets an ``Identity`` node per output key, so the
pulled ``.pb`` reads like the signature; the other signatures name the graph's
tensors as they are.  Checkpoint and frozen-graph pushes get ``serving_default``
from their recorded inputs and outputs, plus the signatures declared with the push.

The converter then freezes the union of the signatures' subgraphs into one
GraphDef (:func:`freeze_signatures`); a signature that cannot be frozen fails on
its own, with its reason, and the others are served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorflow.core.framework import attr_value_pb2, graph_pb2

from registry import signatures as sigs
from registry.converter import graphs
from registry.converter.graphs import dtype_name, node_name, unique_node_name as _node_name
from registry.errors import ConversionError

PLACEHOLDERS = ("Placeholder", "PlaceholderV2", "PlaceholderWithDefault")


@dataclass
class Plan:
    """The graph to freeze, its signatures (tensor names in that graph) and where its variables are."""

    graph_def: graph_pb2.GraphDef
    signatures: dict[str, dict[str, Any]]
    default: str
    checkpoint_prefix: str | None = None
    failed: dict[str, str] = field(default_factory=dict)  # signature → why it is not served
    object_graph: Any = None  # a TF2 SavedModel's SavedObjectGraph: which objects its functions capture

    @property
    def outputs(self) -> list[str]:
        """The default signature's output nodes (the version's output_nodes)."""
        return sigs.node_names(self.signatures[self.default], "outputs")

    @property
    def inputs(self) -> list[str]:
        return sigs.node_names(self.signatures[self.default], "inputs")

    def nodes(self, names: list[str] | None = None) -> list[str]:
        """Every node the signatures ``names`` (all: None) read or answer with."""
        out: list[str] = []
        for name in names if names is not None else list(self.signatures):
            for side in ("inputs", "outputs"):
                out += [n for n in sigs.node_names(self.signatures[name], side) if n not in out]
        return out


def _shape(proto) -> list[int | None] | None:
    if proto.unknown_rank:
        return None
    return [d.size if d.size >= 0 else None for d in proto.dim]


def meta_graph(proto):
    metas = list(proto.meta_graphs)
    serving = [m for m in metas if "serve" in m.meta_info_def.tags]
    if serving:
        return serving[0]
    if len(metas) == 1:
        return metas[0]
    tags = "; ".join(",".join(m.meta_info_def.tags) or "(none)" for m in metas)
    raise ConversionError(f"the SavedModel has no MetaGraphDef tagged 'serve' (its tag sets: {tags}): save it "
                          "with tags=['serve']", code="invalid_saved_model")


def saved_model_plan(proto, folder: Path, requested: str | None) -> Plan:
    """Every signature of a SavedModel's serving MetaGraphDef, read statically (nothing is loaded or run).
    ``requested`` is the signature the push named (its input_nodes/output_nodes); None: serving_default."""
    meta = meta_graph(proto)
    defs = {k: v for k, v in sorted(meta.signature_def.items()) if not k.startswith("__")}
    if requested and requested not in defs:
        have = ", ".join(defs) or "none"
        raise ConversionError(f"the SavedModel has no signature {requested!r} (it has: {have}): pass "
                              "signature=NAME with the push, or save it with that signature",
                              code="signature_not_found")
    if not defs:
        raise ConversionError("the SavedModel has no signatures: save it with signatures= (TF2) or "
                              "signature_def_map= (TF1)", code="invalid_saved_model")
    graph_def = graph_pb2.GraphDef()
    graph_def.CopyFrom(meta.graph_def)
    nodes = {n.name: n for n in graph_def.node}
    failed: dict[str, str] = {}
    for name, signature in defs.items():
        reason = _unusable(signature, nodes)
        if reason:
            failed[name] = reason
    usable = [n for n in defs if n not in failed]
    if not usable:
        raise ConversionError("no signature of the SavedModel can be frozen: " + "; ".join(
            f"{n}: {r}" for n, r in failed.items()), code="unsupported_signature")
    default = requested or (sigs.DEFAULT if sigs.DEFAULT in usable else usable[0])
    if default in failed:
        raise ConversionError(f"signature {default!r} cannot be frozen: {failed[default]}",
                              code="unsupported_signature")
    renames = _name_default_inputs(graph_def, defs[default], nodes)
    signatures = {}
    for name in usable:
        signature = defs[name]
        entry: dict[str, Any] = {"method": signature.method_name or sigs.PREDICT, "inputs": {}, "outputs": {}}
        for side in ("inputs", "outputs"):
            for key, info in sorted(getattr(signature, side).items()):
                base, _, port = info.name.partition(":")
                tensor = f"{renames.get(base, base)}:{port or '0'}"
                entry[side][key] = {"name": tensor, "dtype": dtype_name(info.dtype),
                                    "shape": _shape(info.tensor_shape)}
        signatures[name] = entry
    _name_default_outputs(graph_def, signatures[default])
    index = folder / "variables" / "variables.index"
    return Plan(graph_def, signatures, default, str(index.with_suffix("")) if index.is_file() else None, failed,
                meta.object_graph_def if meta.HasField("object_graph_def") else None)


def _unusable(signature, nodes: dict) -> str | None:
    """Why a SignatureDef cannot be frozen as it is, if it cannot."""
    for side in ("inputs", "outputs"):
        for key, info in getattr(signature, side).items():
            if info.WhichOneof("encoding") != "name":
                return f"{side[:-1]} {key!r} is a sparse or composite tensor; only dense tensors can be frozen"
            if node_name(info.name) not in nodes:
                return f"{side[:-1]} {key!r} names {info.name!r}, which is not in the graph"
    if not signature.outputs:
        return "it has no outputs"
    return None


def _name_default_inputs(graph_def: graph_pb2.GraphDef, signature, nodes: dict) -> dict[str, str]:
    """Rename the default signature's placeholders after their keys; return old → new node names."""
    taken = set(nodes)
    renames: dict[str, str] = {}
    for key, info in sorted(signature.inputs.items()):
        old, _, port = info.name.partition(":")
        if nodes[old].op not in PLACEHOLDERS or port not in ("", "0") or old == key or old in renames:
            continue  # a fed intermediate tensor (half_plus_two's x) keeps its name
        taken.discard(old)
        renames[old] = _node_name(key, taken)
    for node in graph_def.node:
        node.name = renames.get(node.name, node.name)
        for i, ref in enumerate(node.input):
            control, rest = ref.startswith("^"), ref.lstrip("^")
            base, _, port = rest.partition(":")
            if base in renames:
                node.input[i] = ("^" if control else "") + renames[base] + (f":{port}" if port else "")
    return renames


def _name_default_outputs(graph_def: graph_pb2.GraphDef, signature: dict) -> None:
    """An ``Identity`` node named after each output key of the default signature (unless the output
    node already carries the key's name, as TF1 signatures' often do)."""
    taken = {n.name for n in graph_def.node}
    for key, entry in signature["outputs"].items():
        base, _, port = entry["name"].partition(":")
        if base == key and port == "0":
            continue
        name = _node_name(key, taken)
        node = graph_def.node.add(name=name, op="Identity", input=[base if port == "0" else entry["name"]])
        node.attr["T"].CopyFrom(attr_value_pb2.AttrValue(type=graphs.dtype_enum(entry["dtype"])))
        entry["name"] = f"{name}:0"


def graph_plan(graph_def: graph_pb2.GraphDef, outputs: list[str], inputs: list[dict],
               declared: list[dict] | None) -> Plan:
    """A checkpoint or frozen-graph push: serving_default from its recorded inputs and outputs, and the
    signatures declared with the push (a declared serving_default replaces the recorded one)."""
    signatures = {sigs.DEFAULT: sigs.from_nodes(inputs, outputs)}
    existing = {n.name: n for n in graph_def.node}
    for item in declared or []:
        entry = {"method": item["method"], "inputs": {}, "outputs": {}}
        for side in ("inputs", "outputs"):
            for key, tensor in item[side].items():
                node = node_name(tensor)
                if node not in existing:
                    graphs.require_nodes(graph_def, [node], side[:-1])  # raises with the closest names
                spec = graphs.describe_input(existing[node]) if side == "inputs" else {}
                entry[side][key] = {"name": tensor, **({"dtype": spec["dtype"], "shape": spec["shape"]}
                                                       if spec and existing[node].op in PLACEHOLDERS else {})}
        signatures[item["name"]] = entry
    return Plan(graph_def, signatures, sigs.DEFAULT)


def freeze_plan(plan: Plan, checkpoint_prefix: str | None, key_map: dict[str, str], output: Path | None = None):
    """Freeze the union of the plan's signatures: ``(frozen, report, pruned)``, written to ``output`` if given
    (see ``freeze.freeze``).  When the union cannot
    be frozen, each signature is tried alone; those that fail are moved to ``plan.failed`` with their
    reason and the union of the others is frozen.  Raises when none can be."""
    from registry.converter.freeze import freeze  # TensorFlow's checkpoint reader

    def attempt(names: list[str], written: Path | None = output):
        pruned, dropped = graphs.extract_subgraph(plan.graph_def, plan.nodes(names))
        frozen, report = freeze(pruned, checkpoint_prefix, key_map, written)
        report.dropped_control_edges = dropped
        return frozen, report, pruned

    try:
        return attempt(list(plan.signatures))
    except ConversionError:
        if len(plan.signatures) == 1:
            raise
    errors: dict[str, ConversionError] = {}
    for name in list(plan.signatures):
        try:
            attempt([name], None)  # only whether it freezes: nothing is written
        except ConversionError as exc:
            errors[name] = exc
    if len(errors) == len(plan.signatures):
        first = errors.get(plan.default) or next(iter(errors.values()))
        raise ConversionError(
            "; ".join(f"signature {n!r}: {e.message}" for n, e in errors.items()) if len(errors) > 1
            else first.message, code=first.code)
    for name, exc in errors.items():
        plan.failed[name] = exc.message
        del plan.signatures[name]
    if plan.default not in plan.signatures:  # input_nodes and output_nodes describe a signature that serves
        plan.default = next(iter(plan.signatures))
    return attempt(list(plan.signatures))
