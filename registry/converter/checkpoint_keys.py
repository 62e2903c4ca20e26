"""Which checkpoint key holds each variable of an uploaded graph, read statically (nothing is run).

A Saver's restore ops name the key of each variable they assign (``restore_key_map``; in a TF2
SavedModel they live in a function the restore op calls); a TF2 SavedModel's object graph ties the
handles its functions capture to checkpoint objects (``object_graph_keys``), which is how Keras 3
exports must be read.  The freeze and the verification look values up by these keys.
"""

from __future__ import annotations

from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import trackable_object_graph_pb2

from registry.converter.freeze import open_checkpoint
from registry.converter.graphs import node_name

CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")  # a function call that takes tensors in order
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def restore_key_map(graph_def: graph_pb2.GraphDef) -> dict[str, str]:
    """Variable node → checkpoint key, read statically from the graph's restore ops.

    A Saver's restore subgraph is ``RestoreV2(tensor_names=Const) → [Identity] →
    Assign/AssignVariableOp(variable)``; following it tells which key holds each
    variable even when keys differ from node names.  Nothing is run.
    """
    mapping = _restore_keys(graph_def.node, lambda ref: ref if ":" in ref else ref + ":0")
    # TF2 (SavedModels): the restore ops live in a function the restore op calls with the
    # variables' handles; a key assigned to the function's k-th argument belongs to its k-th input.
    library = {f.signature.name: f for f in graph_def.library.function}
    for node in graph_def.node:
        if node.op in CALL_OPS and node.attr["f"].func.name in library:
            function = library[node.attr["f"].func.name]
            args = [a.name for a in function.signature.input_arg]
            for arg, key in _restore_keys(function.node_def, _function_tensor).items():
                if arg in args and args.index(arg) < len(node.input):
                    mapping[node_name(node.input[args.index(arg)])] = key
    return mapping


def object_graph_keys(graph_def: graph_pb2.GraphDef, object_graph, prefix: str) -> dict[str, str]:
    """Variable handle node → checkpoint key, through a TF2 SavedModel's object graph, as
    ``tf.saved_model.load`` finds them: a function call's last inputs are its captures, the
    SavedObjectGraph's ``bound_inputs`` name the objects they are, and the checkpoint's own object
    graph (node for node the same) names each variable's key.  Keras 3 exports serve from handles
    their restore function never assigns, so :func:`restore_key_map` alone does not find them."""
    functions = object_graph.concrete_functions
    reader = open_checkpoint(prefix)
    if not functions or not reader.has_tensor(OBJECT_GRAPH_KEY):
        return {}
    saved = trackable_object_graph_pb2.TrackableObjectGraph()
    saved.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    keys = {index: attribute.checkpoint_key for index, node in enumerate(saved.nodes)
            for attribute in node.attributes if attribute.name == "VARIABLE_VALUE"}
    mapping: dict[str, str] = {}
    for node in graph_def.node:
        function = functions.get(node.attr["f"].func.name) if node.op in CALL_OPS else None
        if function is None or not function.bound_inputs:
            continue
        inputs = [ref for ref in node.input if not ref.startswith("^")]
        if len(inputs) < len(function.bound_inputs):
            continue
        for ref, obj in zip(inputs[len(inputs) - len(function.bound_inputs):], function.bound_inputs):
            if obj in keys:
                mapping[node_name(ref)] = keys[obj]
    return mapping


def _function_tensor(ref: str) -> str:
    """``node:out_arg:i`` (inside a function) → ``node:i``; an argument name stays itself."""
    parts = ref.split(":")
    return f"{parts[0]}:{parts[-1]}" if len(parts) == 3 else (ref if ":" in ref else ref + ":0")


def _restore_keys(node_defs, tensor_of) -> dict[str, str]:
    """Assigned node (or function argument) → checkpoint key, for ``RestoreV2 → [Identity] → Assign``."""
    node_defs = list(node_defs)
    nodes = {n.name: n for n in node_defs}
    consumers: dict[str, list] = {}
    for node in node_defs:
        for ref in node.input:
            if not ref.startswith("^"):
                consumers.setdefault(tensor_of(ref), []).append(node)
    mapping: dict[str, str] = {}
    for node in node_defs:
        if node.op != "RestoreV2" or len(node.input) < 2:
            continue
        names_node = nodes.get(node_name(node.input[1]))
        if names_node is None or names_node.op != "Const":
            continue
        keys = [k.decode() for k in names_node.attr["value"].tensor.string_val]
        for index, key in enumerate(keys):
            pending = [f"{node.name}:{index}"]
            while pending:
                tensor = pending.pop()
                for consumer in consumers.get(tensor, []):
                    if consumer.op == "Identity":
                        pending.append(consumer.name + ":0")
                    elif consumer.op in ("Assign", "AssignVariableOp") and len(consumer.input) >= 2:
                        mapping[node_name(consumer.input[0])] = key
    return mapping
