"""Vocabulary files read into constants, so that nothing reads a file when a model is served.

A table filled by ``InitializeTableFromTextFileV2`` reads a file when the graph is initialised:
the op scan flags it, and a frozen graph has no initialisation anyway.  When the file is one of
the SavedModel's own assets, the converter reads it now, from the upload's ``assets/`` folder
only, exactly as TensorFlow's text-file initialiser would, and rewrites the initialiser as
``InitializeTableV2`` from constants; :func:`registry.converter.tables.inline_tables` then turns
the table's lookups into plain ops.  Nothing of the upload is run.

A TF1 graph fills the table in the graph, from the asset's tensor.  A TF2 SavedModel fills it in
an ``__inference__initializer`` function that the init op calls with the table's handle and the
asset's path, which TF2 keeps in a variable the init op assigns from the asset's placeholder;
both are followed from the call's arguments.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from tensorflow.core.framework import node_def_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from registry.converter.tables import (
    CALL_OPS, IDENTITY_OPS, TABLE_OPS, called_functions, const_node, data_inputs, node_name, op_node, resolve,
    through_identity, type_attr,
)
from registry.errors import ConversionError

FILE_INIT_OPS = ("InitializeTableFromTextFileV2", "InitializeTableFromTextFile")
WHOLE_LINE, LINE_NUMBER = -2, -1
MAX_VOCABULARY_BYTES = 256 * 1024 * 1024  # a vocabulary file larger than this is not inlined
VARIABLE_READERS = ("VarIsInitializedOp", "ReadVariableOp")
INTEGER = re.compile(rb"\s*[+-]?[0-9]+\s*")


def inline_vocabulary_files(meta, root: Path) -> list[str]:
    """Rewrite, in ``meta``'s graph, every table filled from one of the SavedModel's own asset files
    (``InitializeTableFromTextFileV2``, as ``categorical_column_with_vocabulary_file``,
    ``index_table_from_file``, ``tf.lookup.TextFileInitializer`` and Keras' ``StringLookup`` write it)
    as a table filled from constants read from that file now, so that
    :func:`registry.converter.tables.inline_tables` turns its
    lookups into plain ops and nothing reads a file when served.  In a TF2 SavedModel the initialiser
    is a function the init op calls with the table's handle and the asset's path.  Returns the
    rewritten initialisers.  A table filled from a file that is no asset, or any other way, is left
    alone (and the op scan flags it); an asset that is missing, outside ``assets/``, too large or
    unreadable as the table's vocabulary raises."""
    assets = {node_name(a.tensor_info.name): a.filename for a in _asset_file_defs(meta)}
    nodes = {n.name: n for n in meta.graph_def.node}
    rewritten = []
    for node in meta.graph_def.node:
        if node.op not in FILE_INIT_OPS or len(node.input) < 2:
            continue
        table = through_identity(nodes, node_name(node.input[0]))
        filename = _asset_filename(nodes, node.input[1], assets)
        if table is None or table.op not in TABLE_OPS or filename is None:
            continue
        keys, values = _vocabulary(root, filename, node, table)
        key_node = const_node(f"{node.name}/inlined_keys", keys, table.attr["key_dtype"].type)
        value_node = const_node(f"{node.name}/inlined_values", values, table.attr["value_dtype"].type)
        node.CopyFrom(_filled_from(node, key_node.name, value_node.name, table))
        meta.graph_def.node.extend([key_node, value_node])
        rewritten.append(node.name)
    return rewritten + _inline_function_vocabulary_files(meta, root, assets, nodes)


def _filled_from(init, keys_ref: str, values_ref: str, table) -> node_def_pb2.NodeDef:
    """``InitializeTableV2`` of ``init``'s table from the given keys and values, under ``init``'s name."""
    control = [ref for ref in init.input if ref.startswith("^")]
    return op_node(init.name, "InitializeTableV2", [init.input[0], keys_ref, values_ref, *control],
                   Tkey=type_attr(table.attr["key_dtype"].type), Tval=type_attr(table.attr["value_dtype"].type))


def _inline_function_vocabulary_files(meta, root: Path, assets: dict, nodes: dict) -> list[str]:
    """The TF2 initialisers: a function called only from the graph, filling its table argument from
    its path argument; at every call the table is a ``HashTableV2`` and the path an asset."""
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    references: dict[str, list] = defaultdict(list)
    for caller, node_defs in [(None, meta.graph_def.node)] + [(f.signature.name, f.node_def)
                                                             for f in library.values()]:
        for node in node_defs:
            for attr, called in called_functions(node):
                references[called].append((caller, node, attr))
    rewritten = []
    for name, function in library.items():
        calls = references.get(name, [])
        if not calls or any(caller is not None or node.op not in CALL_OPS or attr != "f"
                            for caller, node, attr in calls):
            continue
        args = [a.name for a in function.signature.input_arg]
        body = {n.name: n for n in function.node_def}
        for init in list(function.node_def):
            if init.op not in FILE_INIT_OPS or len(init.input) < 2:
                continue
            table_arg, path_arg = resolve(body, init.input[0]), resolve(body, init.input[1])
            if table_arg not in args or path_arg not in args:
                continue
            found = set()
            for _, call, _ in calls:
                passed = data_inputs(call)
                if len(passed) != len(args):
                    found.add(None)
                    continue
                table = through_identity(nodes, node_name(passed[args.index(table_arg)]))
                filename = _asset_filename(nodes, passed[args.index(path_arg)], assets)
                found.add(None if table is None or table.op not in TABLE_OPS or filename is None else
                          (filename, table.name))
            if len(found) != 1 or None in found:  # no asset, or called for several tables: left to the op scan
                continue
            filename, table_name = found.pop()
            table = nodes[table_name]
            keys, values = _vocabulary(root, filename, init, table)
            key_node = const_node(f"{init.name}/inlined_keys", keys, table.attr["key_dtype"].type)
            value_node = const_node(f"{init.name}/inlined_values", values, table.attr["value_dtype"].type)
            init.CopyFrom(_filled_from(init, f"{key_node.name}:output:0", f"{value_node.name}:output:0", table))
            function.node_def.extend([key_node, value_node])
            rewritten.append(f"{name}/{init.name}")
    return rewritten


def _asset_filename(nodes: dict, ref: str, assets: dict) -> str | None:
    """The asset file a path tensor names: the asset's tensor itself (TF1), or a variable that
    only ever holds it (TF2 keeps an asset's path in a variable the init op assigns)."""
    source = through_identity(nodes, node_name(ref))
    if source is None:
        return None
    if source.name in assets:
        return assets[source.name]
    if source.op != "ReadVariableOp":
        return None
    handle = through_identity(nodes, node_name(source.input[0]))
    if handle is None or handle.op != "VarHandleOp":
        return None
    assigned = []
    for node in nodes.values():
        if node.op in IDENTITY_OPS or not any(resolve(nodes, ref) == handle.name for ref in data_inputs(node)):
            continue
        if node.op == "AssignVariableOp" and resolve(nodes, node.input[0]) == handle.name:
            assigned.append(resolve(nodes, node.input[1]))
        elif node.op not in VARIABLE_READERS:
            return None  # the handle goes somewhere that could write another path into it
    return assets[assigned[0]] if len(assigned) == 1 and assigned[0] in assets else None


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


def _vocabulary(root: Path, filename: str, init, table) -> tuple[np.ndarray, np.ndarray]:
    """The (keys, values) the initialiser ``init`` fills ``table`` with from the asset ``filename``,
    read from the upload's ``assets/`` folder and nowhere else."""
    folder = (root / "assets").resolve()
    path = (folder / filename).resolve()
    if not path.is_relative_to(folder) or path == folder:
        raise ConversionError(f"the SavedModel's asset {filename!r} (the vocabulary of table {table.name!r}) is "
                              "outside its assets/ folder: save the model with tf.saved_model.save, which copies "
                              "vocabulary files into assets/", code="invalid_vocabulary")
    if not path.is_file():
        raise ConversionError(f"the vocabulary file assets/{filename} of table {table.name!r} is not in the "
                              "archive: archive the whole SavedModel folder, assets/ included",
                              code="invalid_vocabulary")
    with path.open("rb") as handle:
        data = handle.read(MAX_VOCABULARY_BYTES + 1)
    if len(data) > MAX_VOCABULARY_BYTES:
        raise ConversionError(f"the vocabulary file assets/{filename} of table {table.name!r} is over "
                              f"{MAX_VOCABULARY_BYTES >> 20} MB, too large to inline in a frozen graph: use a "
                              "smaller vocabulary (or hash buckets)", code="invalid_vocabulary")
    try:
        return _read_vocabulary(data, init, table.attr["key_dtype"].type, table.attr["value_dtype"].type)
    except (ValueError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise ConversionError(f"the vocabulary file assets/{filename} does not fit the table {table.name!r} "
                              f"that reads it ({type(exc).__name__}: {exc}): save the model with the vocabulary "
                              "it was trained with", code="invalid_vocabulary") from exc


def _read_vocabulary(data: bytes, init, key_type: int, value_type: int) -> tuple[np.ndarray, np.ndarray]:
    """The (keys, values) TensorFlow's text-file initialiser reads from ``data``: lines end at
    ``\\n`` (every ``\\r`` dropped), at most ``vocab_size`` of them; ``key_index`` and
    ``value_index`` pick a column (split at ``delimiter``), the whole line, or the line number plus
    ``offset``.  What TensorFlow refuses (an empty line, too few lines or columns, a number that
    does not parse, a key given two values) raises ValueError."""
    lines = data.replace(b"\r", b"").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    size = init.attr["vocab_size"].i if "vocab_size" in init.attr else -1
    if size != -1:
        if len(lines) < size:
            raise ValueError(f"vocab_size is {size} but the file has {len(lines)} lines")
        lines = lines[:size]
    if not lines:
        raise ValueError("the file has no lines")
    if b"" in lines:
        raise ValueError(f"line {lines.index(b'') + 1} is empty")
    offset = init.attr["offset"].i if "offset" in init.attr else 0
    delimiter = (init.attr["delimiter"].s if "delimiter" in init.attr else b"")[:1] or b"\t"
    key_index, value_index = init.attr["key_index"].i, init.attr["value_index"].i
    rows = [line.split(delimiter) for line in lines] if max(key_index, value_index) >= 0 else []
    for number, row in enumerate(rows, 1):
        if len(row) <= max(key_index, value_index):
            raise ValueError(f"line {number} has {len(row)} columns, fewer than {max(key_index, value_index) + 1}")

    def column(index: int, dtype: int) -> np.ndarray:
        if index == LINE_NUMBER:
            if dtype != types_pb2.DT_INT64:
                raise ValueError("line numbers fill only int64 keys or values")
            return np.arange(len(lines), dtype=np.int64) + offset
        if index < WHOLE_LINE:
            raise ValueError(f"column index {index} is neither a column, the whole line (-2) nor the line number (-1)")
        raw = lines if index == WHOLE_LINE else [row[index] for row in rows]
        if dtype == types_pb2.DT_STRING:
            return np.array(raw, dtype=object)
        if dtype in (types_pb2.DT_INT64, types_pb2.DT_INT32):
            bad = next((token for token in raw if not INTEGER.fullmatch(token)), None)
            if bad is not None:
                raise ValueError(f"{bad[:40]!r} is not an integer")
            if dtype == types_pb2.DT_INT64:
                return np.array([int(token) for token in raw], dtype=np.int64)
            return np.array([int(token) + offset for token in raw], dtype=np.int32)  # as TensorFlow does
        numpy_type = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64}[dtype]
        bad = next((token for token in raw if b"_" in token), None)
        if bad is not None:
            raise ValueError(f"{bad[:40]!r} is not a number")
        return np.array([numpy_type(token.decode()) for token in raw], dtype=numpy_type)

    keys, values = column(key_index, key_type), column(value_index, value_type)
    first: dict = {}
    listed = values.tolist()
    for position, (key, value) in enumerate(zip(keys.tolist(), listed)):
        if key in first and listed[first[key]] != value:
            raise ValueError(f"key {key!r} is given two values ({listed[first[key]]!r} and {value!r})")
        first.setdefault(key, position)
    if len(first) < len(keys):  # a repeated key with the same value: the table holds it once
        keep = sorted(first.values())
        keys, values = keys[keep], values[keep]
    return keys, values
