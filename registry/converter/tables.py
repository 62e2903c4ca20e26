"""Lookup tables inlined as constants, so that a frozen graph needs no initialisation.

Feature columns and ``tf.lookup`` look strings (or ids) up in a ``HashTableV2`` that an init op
fills (``InitializeTableV2`` or ``LookupTableImportV2`` from constant keys and values).  A frozen GraphDef has no init ops:
served as is, every lookup fails with "Table not initialized".  Here each ``LookupTableFindV2`` on
a constant-filled table becomes plain ops over the table's contents as constants::

    found_at = Equal(ExpandDims(keys, -1), table_keys)      # [..., K]
    value    = SelectV2(Any(found_at, -1), Gather(table_values, ArgMax(found_at, -1)), default)

keeping the lookup's node name, so its consumers are unchanged; ``LookupTableSizeV2`` becomes a
constant.  A table filled from one of a SavedModel's own vocabulary files (its ``assets/``) is
first rewritten as filled from constants read from that file (:func:`inline_vocabulary_files`).
Tables filled any other way are left as they are (the frozen graph then fails its verification,
saying the table is not initialised, and a file read is flagged by the op scan).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import tensor_util

from registry.errors import ConversionError

TABLE_OPS = ("HashTableV2", "HashTable")
INIT_OPS = ("InitializeTableV2", "InitializeTable", "LookupTableImportV2", "LookupTableImport")
FIND_OPS = ("LookupTableFindV2", "LookupTableFind")
SIZE_OPS = ("LookupTableSizeV2", "LookupTableSize")


def _base(ref: str) -> str:
    return ref.lstrip("^").split(":", 1)[0]


node_name = _base


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


# -- vocabulary files -----------------------------------------------------------------------------------------

FILE_INIT_OPS = ("InitializeTableFromTextFileV2", "InitializeTableFromTextFile")
WHOLE_LINE, LINE_NUMBER = -2, -1
MAX_VOCABULARY_BYTES = 256 * 1024 * 1024  # a vocabulary file larger than this is not inlined


def inline_vocabulary_files(meta, root: Path) -> list[str]:
    """Rewrite, in ``meta``'s graph, every table filled from one of the SavedModel's own asset files
    (``InitializeTableFromTextFileV2``, as ``categorical_column_with_vocabulary_file`` and
    ``index_table_from_file`` write it) as a table filled from constants read from that file now, so
    that :func:`inline_tables` turns its lookups into plain ops and nothing reads a file when served.
    Returns the rewritten initialisers.  A file outside ``assets/`` or a table filled any other way
    is left alone (and the op scan flags it)."""
    assets = {node_name(a.tensor_info.name): a.filename for a in _asset_file_defs(meta)}
    nodes = {n.name: n for n in meta.graph_def.node}
    folder = (root / "assets").resolve()
    rewritten = []
    for node in meta.graph_def.node:
        if node.op not in FILE_INIT_OPS or len(node.input) < 2:
            continue
        table = _through_identity(nodes, _base(node.input[0]))
        source = _through_identity(nodes, _base(node.input[1]))
        if table is None or table.op not in TABLE_OPS or source is None or source.name not in assets:
            continue
        path = (folder / assets[source.name]).resolve()
        if path.parent != folder or not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_VOCABULARY_BYTES:
            continue
        try:
            keys, values = _read_vocabulary(path, node, table)
        except (ValueError, IndexError, KeyError, UnicodeDecodeError) as exc:
            raise ConversionError(f"the vocabulary file assets/{assets[source.name]} does not fit the table "
                                  f"{table.name!r} that reads it ({type(exc).__name__}: {exc}): save the model with "
                                  "the vocabulary it was trained with", code="invalid_vocabulary") from exc
        key_node = _const(f"{node.name}/inlined_keys", keys, table.attr["key_dtype"].type)
        value_node = _const(f"{node.name}/inlined_values", values, table.attr["value_dtype"].type)
        control = [ref for ref in node.input if ref.startswith("^")]
        replacement = _op(node.name, "InitializeTableV2", [node.input[0], key_node.name, value_node.name, *control],
                          Tkey=_type(table.attr["key_dtype"].type), Tval=_type(table.attr["value_dtype"].type))
        node.CopyFrom(replacement)
        meta.graph_def.node.extend([key_node, value_node])
        rewritten.append(node.name)
    return rewritten


def _asset_file_defs(meta) -> list:
    """The SavedModel's assets: ``asset_file_def`` (TF2 savers), or the ``saved_model_assets``
    collection the TF1 builder writes."""
    found = list(meta.asset_file_def)
    for packed in meta.collection_def["saved_model_assets"].any_list.value if "saved_model_assets" in \
            meta.collection_def else []:
        asset = meta_graph_pb2.AssetFileDef()
        if packed.Unpack(asset):
            found.append(asset)
    return found


def _read_vocabulary(path: Path, init, table) -> tuple[np.ndarray, np.ndarray]:
    """The (keys, values) TensorFlow's text-file initialiser would read: ``key_index`` and
    ``value_index`` pick a column (split by ``delimiter``), the whole line, or the line number."""
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    size = init.attr["vocab_size"].i
    if size > 0:
        lines = lines[:size]
    offset = init.attr["offset"].i if "offset" in init.attr else 0
    delimiter = init.attr["delimiter"].s or b"\t"

    def column(index: int, dtype: int) -> np.ndarray:
        if index == LINE_NUMBER:
            raw = [str(n + offset).encode() for n in range(len(lines))]
        elif index == WHOLE_LINE:
            raw = lines
        else:
            raw = [line.split(delimiter)[index] for line in lines]
        if dtype == types_pb2.DT_STRING:
            return np.array(raw, dtype=object)
        numpy_type = {types_pb2.DT_INT64: np.int64, types_pb2.DT_INT32: np.int32, types_pb2.DT_FLOAT: np.float32,
                      types_pb2.DT_DOUBLE: np.float64}[dtype]
        return np.array([numpy_type(v.decode()) for v in raw], dtype=numpy_type)

    return (column(init.attr["key_index"].i, table.attr["key_dtype"].type),
            column(init.attr["value_index"].i, table.attr["value_dtype"].type))
