"""Lookup tables inlined as constants, so that a frozen graph needs no initialisation.

Feature columns and ``tf.lookup`` look strings (or ids) up in a ``HashTableV2`` that an init op
fills (``InitializeTableV2`` or ``LookupTableImportV2`` from constant keys and values).  A frozen
GraphDef has no init ops: served as is, every lookup fails with "Table not initialized".  Here each
``LookupTableFindV2`` on a constant-filled table becomes plain ops over the table's contents as
constants::

    found_at = Equal(ExpandDims(keys, -1), table_keys)      # [..., K]
    value    = SelectV2(Any(found_at, -1), Gather(table_values, ArgMax(found_at, -1)), default)

keeping the lookup's node name, so its consumers are unchanged; ``LookupTableSizeV2`` becomes a
constant.  A table filled from one of a SavedModel's own vocabulary files (its ``assets/``) is
first rewritten as filled from constants read from that file (:mod:`registry.converter.vocabulary`).
Tables filled any other way are left as they are (the frozen graph then fails its verification,
saying the table is not initialised, and a file read is flagged by the op scan).

TF2 SavedModels keep the table in the top-level graph and everything else in functions: the
table's handle is an argument of the signature's function (which looks it up, possibly through
nested calls) and of an ``__inference__initializer`` function (which fills it).  Both are followed
statically from the calls' arguments; the lookups are rewritten inside the functions and the
handle argument, now unused, is removed from the functions and their calls, so the frozen
signatures need no table (a handle that goes into a ``tf.cond`` branch or a loop is followed, its
lookups rewritten, and the handle left in place, unused).

Over 400 lines because the TF2 part is the TF1 rewrite carried into function bodies: the
same lookups, followed through the calls that pass the table's handle.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from tensorflow.core.framework import attr_value_pb2, function_pb2, graph_pb2, node_def_pb2, types_pb2
from tensorflow.python.framework import op_def_registry, tensor_util


TABLE_OPS = ("HashTableV2", "HashTable")
INIT_OPS = ("InitializeTableV2", "InitializeTable", "LookupTableImportV2", "LookupTableImport")
FIND_OPS = ("LookupTableFindV2", "LookupTableFind")
SIZE_OPS = ("LookupTableSizeV2", "LookupTableSize")
CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")
# Control flow whose branch functions take the op's inputs after the first (the condition or index).
BRANCH_OPS = {"If": ("then_branch", "else_branch"), "StatelessIf": ("then_branch", "else_branch"),
              "Case": ("branches",), "StatelessCase": ("branches",)}
WHILE_OPS = ("While", "StatelessWhile")
IDENTITY_OPS = ("Identity", "Snapshot")


def node_name(ref: str) -> str:
    return ref.lstrip("^").split(":", 1)[0]


def resolve(nodes: dict, ref: str) -> str:
    """The node (or, in a function, the argument) that ``ref`` names, through Identity ops."""
    name, seen = node_name(ref), set()
    while name in nodes and nodes[name].op in IDENTITY_OPS and nodes[name].input and name not in seen:
        seen.add(name)
        name = node_name(nodes[name].input[0])
    return name


def through_identity(nodes: dict, name: str):
    return nodes.get(resolve(nodes, name))


def _constant(nodes: dict, ref: str) -> np.ndarray | None:
    node = through_identity(nodes, node_name(ref))
    if node is None or node.op != "Const":
        return None
    return tensor_util.MakeNdarray(node.attr["value"].tensor)


def data_inputs(node) -> list[str]:
    return [ref for ref in node.input if not ref.startswith("^")]


def called_functions(node) -> list[tuple[str, str]]:
    """``(attribute, function name)`` of every function ``node`` refers to."""
    found = []
    for key, value in node.attr.items():
        if value.HasField("func"):
            found.append((key, value.func.name))
        found.extend((key, f.name) for f in value.list.func)
    return [(key, name) for key, name in found if name]


def table_contents(graph_def: graph_pb2.GraphDef) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Table node name → (keys, values), for every table one init op fills from constants (in the
    graph, or in a function the graph calls with the table's handle, as TF2 initialisers do)."""
    nodes = {n.name: n for n in graph_def.node}
    contents: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    inits: dict[str, int] = {}
    fills = [(node, lambda ref: through_identity(nodes, node_name(ref)), lambda ref: _constant(nodes, ref))
             for node in graph_def.node if node.op in INIT_OPS]
    fills += _function_fills(graph_def, nodes)
    for init, table_of, value_of in fills:
        if len(init.input) < 3:
            continue
        table = table_of(init.input[0])
        if table is None or table.op not in TABLE_OPS:
            continue
        inits[table.name] = inits.get(table.name, 0) + 1
        keys, values = value_of(init.input[1]), value_of(init.input[2])
        if keys is not None and values is not None and keys.shape == values.shape:
            contents[table.name] = (keys.reshape(-1), values.reshape(-1))
    return {name: kv for name, kv in contents.items() if inits[name] == 1}  # filled twice: not ours to guess


def _function_fills(graph_def: graph_pb2.GraphDef, nodes: dict) -> list[tuple]:
    """Init ops inside the functions the graph calls: each with how to find, from a reference
    inside the function, the graph's table and a constant (a function constant, or the graph's
    constant the call passes)."""
    library = {f.signature.name: f for f in graph_def.library.function}
    fills = []
    for call in graph_def.node:
        if call.op not in CALL_OPS or call.attr["f"].func.name not in library:
            continue
        function = library[call.attr["f"].func.name]
        args = [a.name for a in function.signature.input_arg]
        body = {n.name: n for n in function.node_def}
        outer = dict(zip(args, data_inputs(call)))

        def table_of(ref, body=body, outer=outer):
            source = resolve(body, ref)
            return through_identity(nodes, node_name(outer[source])) if source in outer else None

        def value_of(ref, body=body, outer=outer):
            source = resolve(body, ref)
            if source in outer:
                return _constant(nodes, outer[source])
            return _constant(body, source)

        fills += [(node, table_of, value_of) for node in function.node_def if node.op in INIT_OPS]
    return fills


def const_node(name: str, value: np.ndarray, dtype: int) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op="Const")
    node.attr["dtype"].CopyFrom(attr_value_pb2.AttrValue(type=dtype))
    node.attr["value"].CopyFrom(attr_value_pb2.AttrValue(tensor=tensor_util.make_tensor_proto(value, dtype=dtype)))
    return node


def op_node(name: str, op: str, inputs: list[str], **attrs: attr_value_pb2.AttrValue) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op=op, input=inputs)
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def type_attr(dtype: int) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(type=dtype)


def _output(op: str) -> str:
    """The name of an op's first output, as a function body refers to it (``node:output:0``)."""
    return op_def_registry.get(op).output_arg[0].name


def inline_tables(graph_def: graph_pb2.GraphDef) -> int:
    """Rewrite, in place, every lookup in a constant-filled table as plain ops; return how many.
    Lookups inside functions (TF2 signatures) are rewritten too, and the table handle arguments
    they no longer need are removed."""
    contents = table_contents(graph_def)
    if not contents:
        return 0
    nodes = {n.name: n for n in graph_def.node}
    replaced = 0
    for index, node in enumerate(list(graph_def.node)):
        if node.op not in FIND_OPS + SIZE_OPS:
            continue
        table = through_identity(nodes, node_name(node.input[0]))
        if table is None or table.name not in contents:
            continue
        new_nodes = _replacement(node, contents[table.name], table, in_function=False)
        graph_def.node[index].CopyFrom(new_nodes[-1])
        graph_def.node.extend(new_nodes[:-1])
        replaced += 1
    return replaced + _inline_function_lookups(graph_def, contents, nodes)


def _replacement(node, kv: tuple[np.ndarray, np.ndarray], table, in_function: bool) -> list[node_def_pb2.NodeDef]:
    """The plain ops that replace one lookup (or size) of ``table``; the last one takes its name."""
    keys, values = kv
    if node.op in SIZE_OPS:
        new_nodes = [const_node(node.name, np.array(len(keys), np.int64), types_pb2.DT_INT64)]
    else:
        new_nodes = _lookup_nodes(node.name, node.input[1], node.input[2], keys, values,
                                  table.attr["key_dtype"].type, table.attr["value_dtype"].type, in_function)
    new_nodes[-1].input.extend(ref for ref in node.input if ref.startswith("^"))
    return new_nodes


def _lookup_nodes(name: str, keys_ref: str, default_ref: str, keys: np.ndarray, values: np.ndarray,
                  key_type: int, value_type: int, in_function: bool = False) -> list[node_def_pb2.NodeDef]:
    """The plain ops of one lookup; the last one takes the lookup's own name.  In a function body
    an input names its node's output (``node:output:0``), in a graph the node alone."""
    scope = f"{name}/inlined"

    def ref(node: str, op: str) -> str:
        return f"{node}:{_output(op)}:0" if in_function else node

    int32, int64, bool_ = (type_attr(t) for t in (types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_BOOL))
    key, value = type_attr(key_type), type_attr(value_type)
    if len(keys) == 0:  # an empty table: every key gets the default
        return [op_node(f"{scope}/shape", "Shape", [keys_ref], T=key, out_type=int32),
                op_node(name, "BroadcastTo", [default_ref, ref(f"{scope}/shape", "Shape")], T=value, Tidx=int32)]
    last_axis, found_at = ref(f"{scope}/last_axis", "Const"), ref(f"{scope}/found_at", "Equal")
    return [
        const_node(f"{scope}/table_keys", keys, key_type),
        const_node(f"{scope}/table_values", values, value_type),
        const_node(f"{scope}/last_axis", np.array(-1, np.int32), types_pb2.DT_INT32),
        const_node(f"{scope}/first_axis", np.array(0, np.int32), types_pb2.DT_INT32),
        op_node(f"{scope}/expanded", "ExpandDims", [keys_ref, last_axis], T=key, Tdim=int32),
        op_node(f"{scope}/found_at", "Equal",
                [ref(f"{scope}/expanded", "ExpandDims"), ref(f"{scope}/table_keys", "Const")],
                T=key, incompatible_shape_error=attr_value_pb2.AttrValue(b=True)),
        op_node(f"{scope}/found", "Any", [found_at, last_axis], Tidx=int32,
                keep_dims=attr_value_pb2.AttrValue(b=False)),
        op_node(f"{scope}/as_int", "Cast", [found_at], SrcT=bool_, DstT=int32,
                Truncate=attr_value_pb2.AttrValue(b=False)),
        op_node(f"{scope}/position", "ArgMax", [ref(f"{scope}/as_int", "Cast"), last_axis], T=int32, Tidx=int32,
                output_type=int64),
        op_node(f"{scope}/value", "GatherV2",
                [ref(f"{scope}/table_values", "Const"), ref(f"{scope}/position", "ArgMax"),
                 ref(f"{scope}/first_axis", "Const")],
                Tparams=value, Tindices=int64, Taxis=int32, batch_dims=attr_value_pb2.AttrValue(i=0)),
        op_node(name, "SelectV2", [ref(f"{scope}/found", "Any"), ref(f"{scope}/value", "GatherV2"), default_ref],
                T=value),
    ]


# -- lookups inside functions (TF2) ---------------------------------------------------------------------------


def _inline_function_lookups(graph_def: graph_pb2.GraphDef, contents: dict, nodes: dict) -> int:
    """Rewrite the lookups inside functions whose table argument is, at every call, one
    constant-filled table; then drop the table arguments nothing uses any more."""
    library = {f.signature.name: f for f in graph_def.library.function}
    if not library:
        return 0
    tables = _argument_tables(graph_def, library, contents, nodes)
    known = {key: next(iter(found)) for key, found in tables.items() if len(found) == 1 and None not in found}
    replaced = 0
    for function in library.values():
        name = function.signature.name
        args = [a.name for a in function.signature.input_arg]
        body = {n.name: n for n in function.node_def}
        renamed: dict[str, str] = {}
        for index, node in enumerate(list(function.node_def)):
            if node.op not in FIND_OPS + SIZE_OPS:
                continue
            source = resolve(body, node.input[0])
            table = known.get((name, args.index(source))) if source in args else None
            if table is None:
                continue
            renamed[node.name] = _output(node.op)
            new_nodes = _replacement(node, contents[table], nodes[table], in_function=True)
            function.node_def[index].CopyFrom(new_nodes[-1])
            function.node_def.extend(new_nodes[:-1])
            replaced += 1
        if renamed:  # consumers named the lookup's output ``values`` (``size``); the new node's is ``output``
            _rename_outputs(function, {f"{n}:{old}:": f"{n}:output:" for n, old in renamed.items()})
    if replaced:
        _drop_unused_table_arguments(graph_def, library, set(known))
    return replaced


def _argument_tables(graph_def: graph_pb2.GraphDef, library: dict, contents: dict,
                     nodes: dict) -> dict[tuple[str, int], set]:
    """(function, argument index) → the tables passed to it at its calls (None: something else,
    or a call we cannot follow), from the graph's calls down through nested calls, branches and loops."""
    tables: dict[tuple[str, int], set] = defaultdict(set)
    edges: list[tuple[tuple[str, int], tuple[str, int]]] = []
    for caller, node_defs in [(None, graph_def.node)] + [(f.signature.name, f.node_def) for f in library.values()]:
        body = {n.name: n for n in node_defs}
        args = [a.name for a in library[caller].signature.input_arg] if caller else []
        for node in node_defs:
            if node.op in library:  # a function called as an op: its arguments are not followed
                for index in range(len(library[node.op].signature.input_arg)):
                    tables[(node.op, index)].add(None)
            for attr, called in called_functions(node):
                if called not in library:
                    continue
                arity = len(library[called].signature.input_arg)
                if node.op in CALL_OPS and attr == "f" or node.op in WHILE_OPS and attr in ("cond", "body"):
                    passed = data_inputs(node)
                elif attr in BRANCH_OPS.get(node.op, ()):
                    passed = data_inputs(node)[1:]
                else:  # a dataset function, a function given as an attribute...: its arguments are not followed
                    passed = [None] * arity
                for index, ref in enumerate(passed[:arity]):
                    if ref is None:
                        tables[(called, index)].add(None)
                    elif caller is None:
                        table = through_identity(nodes, node_name(ref))
                        tables[(called, index)].add(table.name if table is not None and table.name in contents
                                                    else None)
                    elif (source := resolve(body, ref)) in args:
                        edges.append(((caller, args.index(source)), (called, index)))
                    else:
                        tables[(called, index)].add(None)
            if node.op in WHILE_OPS:
                edges += _loop_carried(node, library, tables)
    changed = True
    while changed:
        changed = False
        for source, target in edges:
            if not tables[source] <= tables[target]:
                tables[target] |= tables[source]
                changed = True
    return tables


def _loop_carried(loop, library: dict, tables: dict) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """A while loop's next iteration gets what its body returns: output ``i`` of the body is
    argument ``i`` of the body and the condition again (a table handle is returned unchanged)."""
    body_name, cond_name = loop.attr["body"].func.name, loop.attr["cond"].func.name
    if body_name not in library:
        return []
    body = library[body_name]
    nodes = {n.name: n for n in body.node_def}
    args = [a.name for a in body.signature.input_arg]
    edges = []
    for index, output in enumerate(body.signature.output_arg):
        source = resolve(nodes, body.ret.get(output.name, ""))
        for target in (body_name, cond_name):
            if source in args:
                edges.append(((body_name, args.index(source)), (target, index)))
            else:
                tables[(target, index)].add(None)
    return edges


def _rename_outputs(function, prefixes: dict[str, str]) -> None:
    def renamed(ref: str) -> str:
        for old, new in prefixes.items():
            if ref.startswith(old):
                return new + ref[len(old):]
        return ref

    for node in function.node_def:
        for i, ref in enumerate(node.input):
            node.input[i] = renamed(ref)
    for key, ref in list(function.ret.items()):
        function.ret[key] = renamed(ref)


def _aliases(function, index: int) -> set[str]:
    """An argument's name and the Identity ops of it."""
    body = {n.name: n for n in function.node_def}
    arg = function.signature.input_arg[index].name
    return {arg} | {n.name for n in function.node_def if n.op in IDENTITY_OPS and resolve(body, n.name) == arg}


def _drop_unused_table_arguments(graph_def: graph_pb2.GraphDef, library: dict, candidates: set) -> None:
    """Remove each table argument that is now only passed on to calls that drop it too, from its
    function and from every call of it."""
    droppable = set(candidates)
    node_defs = [graph_def.node] + [f.node_def for f in library.values()]
    branch_called = {called for nodes in node_defs for n in nodes for attr, called in called_functions(n)
                     if not (n.op in CALL_OPS and attr == "f")} | {n.op for nodes in node_defs for n in nodes}
    droppable = {key for key in droppable if key[0] not in branch_called}
    changed = True
    while changed:
        changed = False
        for key in sorted(droppable):
            if not _only_passed_on(library[key[0]], key[1], droppable):
                droppable.discard(key)
                changed = True
    if not droppable:
        return
    by_function: dict[str, list[int]] = defaultdict(list)
    for name, index in droppable:
        by_function[name].append(index)
    calls = [n for n in graph_def.node if n.op in CALL_OPS] + [
        n for f in library.values() for n in f.node_def if n.op in CALL_OPS]
    for call in calls:
        for index in sorted(by_function.get(call.attr["f"].func.name, ()), reverse=True):
            _drop_call_input(call, index)
    for name, indices in by_function.items():
        for index in sorted(indices, reverse=True):
            _drop_argument(library[name], index)


def _only_passed_on(function, index: int, droppable: set) -> bool:
    """Whether argument ``index`` is used only as an argument that the callee drops too."""
    aliases = _aliases(function, index)
    for node in function.node_def:
        if node.name in aliases:
            continue
        for position, ref in enumerate(data_inputs(node)):
            passed_on = node.op in CALL_OPS and (node.attr["f"].func.name, position) in droppable
            if node_name(ref) in aliases and not passed_on:
                return False
    return not any(node_name(ref) in aliases for ref in function.ret.values())


def _drop_call_input(call, index: int) -> None:
    """Remove input ``index`` from a call, with its entries in the call's per-input attributes."""
    inputs = list(call.input)
    del inputs[index]  # data inputs come first in a NodeDef
    del call.input[:]
    call.input.extend(inputs)
    if "Tin" in call.attr and index < len(call.attr["Tin"].list.type):
        del call.attr["Tin"].list.type[index]
    if "_input_shapes" in call.attr and index < len(call.attr["_input_shapes"].list.shape):
        del call.attr["_input_shapes"].list.shape[index]
    if "_read_only_resource_inputs" in call.attr:
        kept = [i - (i > index) for i in call.attr["_read_only_resource_inputs"].list.i if i != index]
        del call.attr["_read_only_resource_inputs"].list.i[:]
        call.attr["_read_only_resource_inputs"].list.i.extend(kept)


def _drop_argument(function, index: int) -> None:
    """Remove argument ``index`` (and the Identity ops of it) from ``function``."""
    aliases = _aliases(function, index)
    kept = []
    for node in function.node_def:
        if node.name not in aliases:  # copied: the repeated field is emptied below
            kept.append(node_def_pb2.NodeDef())
            kept[-1].CopyFrom(node)
            del kept[-1].input[:]
            kept[-1].input.extend(ref for ref in node.input if not (ref.startswith("^") and node_name(ref) in aliases))
    del function.node_def[:]
    function.node_def.extend(kept)
    del function.signature.input_arg[index]
    for field in ("arg_attr", "resource_arg_unique_id"):
        entries = getattr(function, field)
        moved = {}
        for key in sorted(entries):
            value = entries[key]
            if key != index:
                if field == "arg_attr":
                    copy = function_pb2.FunctionDef.ArgAttrs()
                    copy.CopyFrom(value)
                    value = copy
                moved[key - (key > index)] = value
        entries.clear()
        for key, value in moved.items():
            if field == "arg_attr":
                entries[key].CopyFrom(value)
            else:
                entries[key] = value
    shapes = function.attr["_input_shapes"].list.shape if "_input_shapes" in function.attr else None
    if shapes is not None and index < len(shapes):
        del shapes[index]
