"""Lookup tables inlined as constants, so that a frozen graph needs no initialisation.

Feature columns and ``tf.lookup`` look strings (or ids) up in a ``HashTableV2`` that an init op
fills (``InitializeTableV2`` or ``LookupTableImportV2`` from constant keys and values).  A frozen GraphDef has no init ops:
served as is, every lookup fails with "Table not initialized".  Here each ``LookupTableFindV2`` on
a constant-filled table becomes plain ops over the table's contents as constants::

    found_at = Equal(ExpandDims(keys, -1), table_keys)      # [..., K]
    value    = SelectV2(Any(found_at, -1), Gather(table_values, ArgMax(found_at, -1)), default)

keeping the lookup's node name, so its consumers are unchanged; ``LookupTableSizeV2`` becomes a
constant.  Tables filled any other way are left as they are (the frozen graph then fails its
verification, saying the table is not initialised).
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, types_pb2
from tensorflow.python.framework import tensor_util

TABLE_OPS = ("HashTableV2", "HashTable")
INIT_OPS = ("InitializeTableV2", "InitializeTable", "LookupTableImportV2", "LookupTableImport")
FIND_OPS = ("LookupTableFindV2", "LookupTableFind")
SIZE_OPS = ("LookupTableSizeV2", "LookupTableSize")


def _base(ref: str) -> str:
    return ref.lstrip("^").split(":", 1)[0]


def _through_identity(nodes: dict, name: str):
    node = nodes.get(name)
    while node is not None and node.op in ("Identity", "Snapshot") and node.input:
        node = nodes.get(_base(node.input[0]))
    return node


def _constant(nodes: dict, ref: str) -> np.ndarray | None:
    node = _through_identity(nodes, _base(ref))
    if node is None or node.op != "Const":
        return None
    return tensor_util.MakeNdarray(node.attr["value"].tensor)


def table_contents(graph_def: graph_pb2.GraphDef) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Table node name → (keys, values), for every table one init op fills from constants."""
    nodes = {n.name: n for n in graph_def.node}
    contents: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    inits: dict[str, int] = {}
    for node in graph_def.node:
        if node.op not in INIT_OPS or len(node.input) < 3:
            continue
        table = _through_identity(nodes, _base(node.input[0]))
        if table is None or table.op not in TABLE_OPS:
            continue
        inits[table.name] = inits.get(table.name, 0) + 1
        keys, values = _constant(nodes, node.input[1]), _constant(nodes, node.input[2])
        if keys is not None and values is not None and keys.shape == values.shape:
            contents[table.name] = (keys.reshape(-1), values.reshape(-1))
    return {name: kv for name, kv in contents.items() if inits[name] == 1}  # filled twice: not ours to guess


def _const(name: str, value: np.ndarray, dtype: int) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op="Const")
    node.attr["dtype"].CopyFrom(attr_value_pb2.AttrValue(type=dtype))
    node.attr["value"].CopyFrom(attr_value_pb2.AttrValue(tensor=tensor_util.make_tensor_proto(value, dtype=dtype)))
    return node


def _op(name: str, op: str, inputs: list[str], **attrs: attr_value_pb2.AttrValue) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op=op, input=inputs)
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _type(dtype: int) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(type=dtype)


def inline_tables(graph_def: graph_pb2.GraphDef) -> int:
    """Rewrite, in place, every lookup in a constant-filled table as plain ops; return how many."""
    contents = table_contents(graph_def)
    if not contents:
        return 0
    nodes = {n.name: n for n in graph_def.node}
    replaced = 0
    for index, node in enumerate(list(graph_def.node)):
        if node.op not in FIND_OPS + SIZE_OPS:
            continue
        table = _through_identity(nodes, _base(node.input[0]))
        if table is None or table.name not in contents:
            continue
        keys, values = contents[table.name]
        key_type, value_type = table.attr["key_dtype"].type, table.attr["value_dtype"].type
        control = [ref for ref in node.input if ref.startswith("^")]
        if node.op in SIZE_OPS:
            new_nodes = [_const(node.name, np.array(len(keys), np.int64), types_pb2.DT_INT64)]
        else:
            new_nodes = _lookup_nodes(node.name, node.input[1], node.input[2], keys, values, key_type, value_type)
        new_nodes[-1].input.extend(control)
        graph_def.node[index].CopyFrom(new_nodes[-1])
        graph_def.node.extend(new_nodes[:-1])
        replaced += 1
    return replaced


def _lookup_nodes(name: str, keys_ref: str, default_ref: str, keys: np.ndarray, values: np.ndarray,
                  key_type: int, value_type: int) -> list[node_def_pb2.NodeDef]:
    """The plain ops of one lookup; the last one takes the lookup's own name."""
    scope = f"{name}/inlined"
    if len(keys) == 0:  # an empty table: every key gets the default
        return [_op(f"{scope}/shape", "Shape", [keys_ref], T=_type(key_type), out_type=_type(types_pb2.DT_INT32)),
                _op(name, "BroadcastTo", [default_ref, f"{scope}/shape"], T=_type(value_type),
                    Tidx=_type(types_pb2.DT_INT32))]
    return [
        _const(f"{scope}/table_keys", keys, key_type),
        _const(f"{scope}/table_values", values, value_type),
        _const(f"{scope}/last_axis", np.array(-1, np.int32), types_pb2.DT_INT32),
        _const(f"{scope}/first_axis", np.array(0, np.int32), types_pb2.DT_INT32),
        _op(f"{scope}/expanded", "ExpandDims", [keys_ref, f"{scope}/last_axis"], T=_type(key_type),
            Tdim=_type(types_pb2.DT_INT32)),
        _op(f"{scope}/found_at", "Equal", [f"{scope}/expanded", f"{scope}/table_keys"], T=_type(key_type),
            incompatible_shape_error=attr_value_pb2.AttrValue(b=True)),
        _op(f"{scope}/found", "Any", [f"{scope}/found_at", f"{scope}/last_axis"], Tidx=_type(types_pb2.DT_INT32),
            keep_dims=attr_value_pb2.AttrValue(b=False)),
        _op(f"{scope}/as_int", "Cast", [f"{scope}/found_at"], SrcT=_type(types_pb2.DT_BOOL),
            DstT=_type(types_pb2.DT_INT32), Truncate=attr_value_pb2.AttrValue(b=False)),
        _op(f"{scope}/position", "ArgMax", [f"{scope}/as_int", f"{scope}/last_axis"], T=_type(types_pb2.DT_INT32),
            Tidx=_type(types_pb2.DT_INT32), output_type=_type(types_pb2.DT_INT64)),
        _op(f"{scope}/value", "GatherV2", [f"{scope}/table_values", f"{scope}/position", f"{scope}/first_axis"],
            Tparams=_type(value_type), Tindices=_type(types_pb2.DT_INT64), Taxis=_type(types_pb2.DT_INT32),
            batch_dims=attr_value_pb2.AttrValue(i=0)),
        _op(name, "SelectV2", [f"{scope}/found", f"{scope}/value", default_ref], T=_type(value_type)),
    ]
