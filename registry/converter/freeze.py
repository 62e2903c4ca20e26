"""Freezing: inline checkpoint values into an inference graph as constants.

Unlike TensorFlow's ``freeze_graph`` this builds no Saver and opens no Session:
variable values come straight from a checkpoint reader and the GraphDef is
rewritten in place (``VariableV2``/``VarHandleOp`` become ``Const``,
``ReadVariableOp`` becomes ``Identity``, ``ResourceGather`` becomes
``GatherV2``).  The upload's own restore and initializer ops never run.
Given a file, the frozen graph is written to it as it is built, each
variable's values straight from the reader's array, so that one variable at
a time is in memory (``graphfile``).

Which checkpoint key holds each variable is read in ``checkpoint_keys``.  Over 400 lines: the freeze
itself with what it needs at hand (the checkpoint reader, size limits, the checkpoint's global step,
and the rewrite of resource reads inside function bodies, which only the freeze does).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorflow.core.framework import graph_pb2, node_def_pb2, types_pb2
from tensorflow.python.framework import convert_to_constants as ctc, dtypes, tensor_util
from tensorflow.python.training import py_checkpoint_reader

from registry.converter.graphfile import GraphWriter, without_nodes, write_graph_def
from registry.converter.graphs import closest_names, node_name
from registry.errors import ConversionError

VARIABLE_OPS = {"VariableV2", "Variable"}
RESOURCE_VARIABLE_OPS = {"VarHandleOp"}
FUNCTION_CALL_OPS = {"StatefulPartitionedCall", "PartitionedCall", "If", "StatelessIf", "While", "StatelessWhile",
                     "Case", "StatelessCase"}


@dataclass
class FreezeReport:
    variables: int = 0
    variable_bytes: int = 0
    dropped_control_edges: int = 0
    variable_keys: dict[str, str] = field(default_factory=dict)


GRAPH_DEF_LIMIT = 2**31  # protobuf refuses to serialise or parse a message of 2 GiB or more


def check_graph_def_size(graph_def: graph_pb2.GraphDef, variables: list[tuple[list[int], int]]) -> None:
    """Fail before any weight is read when the frozen graph (the graph plus every variable's bytes, from
    the checkpoint's shapes) would pass protobuf's 2 GiB limit."""
    weights = sum(int(np.prod(shape, dtype=np.int64)) * dtypes.as_dtype(dtype).size for shape, dtype in variables)
    total = graph_def.ByteSize() + weights
    if total >= GRAPH_DEF_LIMIT:
        raise ConversionError(
            f"the frozen graph would be {total / 2**30:.2f} GiB ({weights / 2**30:.2f} GiB of weights), and a "
            f"GraphDef cannot reach 2 GiB (protobuf's limit), so this model cannot be frozen into one .pb: serve "
            "its SavedModel with TensorFlow Serving directly, or split the model into parts under 2 GiB",
            code="graph_too_large")


def open_checkpoint(prefix: str):
    try:
        return py_checkpoint_reader.NewCheckpointReader(prefix)
    except Exception as exc:  # the reader raises a variety of errors for bad files
        raise ConversionError(
            f"the checkpoint cannot be read ({_first_line(exc)}): upload the .index file and every "
            ".data-NNNNN-of-NNNNN shard written together by the same save",
            code="invalid_checkpoint",
        ) from exc


def global_step(prefix: str | None) -> int | None:
    """The training step a checkpoint was saved at: its ``global_step`` variable (a scalar integer),
    when it has one; None otherwise (lineage, nothing depends on it)."""
    if not prefix:
        return None
    try:
        reader = py_checkpoint_reader.NewCheckpointReader(prefix)
        for key in ("global_step", "global_step/.ATTRIBUTES/VARIABLE_VALUE"):
            if reader.has_tensor(key):
                value = reader.get_tensor(key)
                if getattr(value, "shape", None) == () and getattr(value.dtype, "kind", "") in "iu":
                    return int(value)
    except Exception:  # lineage is best effort: an unreadable step is simply not recorded
        return None
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fill_const(node: node_def_pb2.NodeDef, name: str, value: np.ndarray, dtype_enum: int,
                content: bool = True) -> bool:
    """Make ``node`` a Const holding ``value``, writing the bytes once; with ``content`` False, leave its
    ``tensor_content`` out (a GraphWriter writes it from the array).  Returns whether ``node`` holds the
    values (strings always do: they are no tensor_content)."""
    node.name = name
    node.op = "Const"
    node.attr["dtype"].type = dtype_enum
    tensor = node.attr["value"].tensor
    if value.dtype.kind in "OSU":
        tensor.CopyFrom(tensor_util.make_tensor_proto(value, dtype=dtypes.as_dtype(dtype_enum)))
        return True
    # make_tensor_proto is several times slower on big arrays than writing the bytes directly.
    tensor.dtype = dtype_enum
    for size in value.shape:
        tensor.tensor_shape.dim.add(size=size)
    if content:
        tensor.tensor_content = np.ascontiguousarray(value).tobytes()
    return content


def _declared_shape(node) -> list[int] | None:
    if "shape" not in node.attr or node.attr["shape"].shape.unknown_rank:
        return None
    return [d.size for d in node.attr["shape"].shape.dim]


def freeze(
    graph_def: graph_pb2.GraphDef,
    checkpoint_prefix: str | None,
    key_map: dict[str, str] | None = None,
    output: Path | None = None,
) -> tuple[graph_pb2.GraphDef, FreezeReport]:
    """Return a copy of ``graph_def`` (already pruned to the outputs) with every
    variable replaced by its checkpoint value.

    With ``output``, the frozen graph is written there as it is built (the bytes
    ``SerializeToString(deterministic=True)`` gives) and the returned copy leaves
    the variables' constants without their values (their dtype and shape kept)."""
    report = FreezeReport()
    variables = [n for n in graph_def.node if n.op in VARIABLE_OPS | RESOURCE_VARIABLE_OPS]
    if variables and checkpoint_prefix is None:
        raise ConversionError(
            f"the graph has {len(variables)} variables but no checkpoint was uploaded: "
            "push the .index and .data files too, or upload an already-frozen graph",
            code="missing_checkpoint",
        )
    reader = open_checkpoint(checkpoint_prefix) if variables else None
    shapes = reader.get_variable_to_shape_map() if reader else {}
    key_map = key_map or {}

    dtype_map = reader.get_variable_to_dtype_map() if reader else {}
    # Check every variable against the checkpoint before reading any value.
    dtype_of: dict[str, int] = {}
    for node in variables:
        key = key_map.get(node.name, node.name)
        if key not in shapes:
            close = closest_names(key, shapes.keys())
            hint = f" Closest keys in the checkpoint: {', '.join(close)}." if close else ""
            raise ConversionError(
                f"variable {node.name!r} is not in the checkpoint.{hint} The graph and the checkpoint do "
                "not belong together: upload the checkpoint saved from this graph",
                code="checkpoint_mismatch",
            )
        declared = _declared_shape(node)
        if declared is not None and list(shapes[key]) != declared and -1 not in declared:
            raise ConversionError(
                f"variable {node.name!r} has shape {declared} in the graph but {list(shapes[key])} in the "
                "checkpoint: upload the checkpoint saved from this graph",
                code="checkpoint_mismatch",
            )
        expected = dtypes.as_dtype(node.attr["dtype"].type).base_dtype
        if dtype_map[key].base_dtype != expected:
            raise ConversionError(
                f"variable {node.name!r} is {expected.name} in the graph but {dtype_map[key].name} in the "
                "checkpoint: upload the checkpoint saved from this graph",
                code="checkpoint_mismatch",
            )
        dtype_of[node.name] = expected.as_datatype_enum
        report.variable_keys[node.name] = key
    report.variables = len(dtype_of)
    check_graph_def_size(graph_def, [(shapes[report.variable_keys[n]], dtype_of[n]) for n in dtype_of])

    def read(name: str) -> np.ndarray:
        key = report.variable_keys[name]
        try:
            value = reader.get_tensor(key)
        except Exception as exc:
            raise ConversionError(
                f"variable {key!r} cannot be read from the checkpoint ({_first_line(exc)}): a .data shard is "
                "truncated or from another save; upload the files written together by one save",
                code="invalid_checkpoint",
            ) from exc
        report.variable_bytes += value.nbytes
        return value

    resource_vars = {n.name for n in variables if n.op in RESOURCE_VARIABLE_OPS}
    # Tensors that carry a resource handle (the VarHandleOp and Identity copies of it).
    handle_of: dict[str, str] = {name: name for name in resource_vars}
    changed = True
    while changed:
        changed = False
        for node in graph_def.node:
            if node.op == "Identity" and node.name not in handle_of and node.attr["T"].type == types_pb2.DT_RESOURCE:
                source = node_name(node.input[0])
                if source in handle_of:
                    handle_of[node.name] = handle_of[source]
                    changed = True

    if any(node.op in FUNCTION_CALL_OPS and any(node_name(i) in handle_of for i in node.input if not i.startswith("^"))
           for node in graph_def.node):
        frozen = _freeze_through_functions(graph_def, {name: read(name) for name in dtype_of}, dtype_of)
        if output is None:
            return frozen, report
        write_graph_def(frozen, output)
        return _without_values(frozen, set(dtype_of)), report

    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(GraphWriter(output)) if output is not None else None
        for node in graph_def.node:
            added = len(out.node)
            if node.name in dtype_of:
                # Values are read one at a time, straight into the output graph (or file).
                value = read(node.name)
                const = out.node.add()
                if not _fill_const(const, node.name, value, dtype_of[node.name], content=writer is None):
                    writer.node(const, value)
                    added += 1  # written
                del value  # gone before the next variable is read
            elif node.name in handle_of:  # an Identity of a handle: now an Identity of a value
                new = out.node.add()
                new.CopyFrom(node)
                new.attr["T"].type = dtype_of[handle_of[node.name]]
            elif any(node_name(i) in handle_of for i in node.input if not i.startswith("^")):
                new, extra = _rewrite_resource_consumer(node, handle_of, dtype_of)
                out.node.extend(extra)
                out.node.add().CopyFrom(new)
            else:
                out.node.add().CopyFrom(node)
            if writer is not None:
                for new in out.node[added:]:
                    writer.node(new)
        if writer is not None:
            writer.finish(out)
    return out, report


def _without_values(graph_def: graph_pb2.GraphDef, names: set[str]) -> graph_pb2.GraphDef:
    """A copy of ``graph_def`` whose constants ``names`` leave out their tensor_content."""
    out = without_nodes(graph_def)
    for node in graph_def.node:
        if node.name in names and node.op == "Const":
            stripped = node_def_pb2.NodeDef()  # its own message: the values leave memory with it
            stripped.CopyFrom(node)
            stripped.attr["value"].tensor.ClearField("tensor_content")
            out.node.add().CopyFrom(stripped)
        else:
            out.node.add().CopyFrom(node)
    return out


def _freeze_through_functions(graph_def: graph_pb2.GraphDef, values: dict[str, np.ndarray],
                              dtype_of: dict[str, int]) -> graph_pb2.GraphDef:
    """Freeze a graph whose variable handles flow into function calls (TF2 SavedModels, If/While).

    TensorFlow's own constant conversion rewrites each called function so that it takes the
    variable's value instead of its handle (``ReadVariableOp`` becomes ``Identity`` inside).  It is
    given the values read from the checkpoint: it works on the GraphDef only and runs nothing.
    """
    data = ctc._ConverterData(graph_def)  # noqa: SLF001 - the converter's data holder, fed by our reader
    for name, value in values.items():
        data.tensor_data[name] = ctc._TensorData(numpy=value, dtype=dtype_of[name], index=None)  # noqa: SLF001
    try:
        converted, _ = ctc._replace_variables_by_constants(data)  # noqa: SLF001
    except (ValueError, KeyError, TypeError) as exc:
        raise ConversionError(
            f"the graph passes variables to functions in a way that cannot be frozen ({_first_line(exc)}): pass "
            "output nodes of the inference part of the graph, or upload a frozen graph", code="unsupported_graph",
        ) from exc
    for function in converted.library.function:
        _gathers_from_values(function)
    return converted


def _gathers_from_values(function) -> None:
    """``ResourceGather`` on a function argument that now carries the variable's value becomes
    ``GatherV2`` (TensorFlow's converter leaves gathers inside functions as they are, expecting
    the functions to be inlined first; a tf.gather or embedding lookup in a TF2 signature is one)."""
    args = {a.name: a for a in function.signature.input_arg}
    nodes = {n.name: n for n in function.node_def}
    for node in list(function.node_def):
        if node.op != "ResourceGather":
            continue
        source = node.input[0].split(":", 1)[0]
        while source in nodes and nodes[source].op == "Identity":
            source = nodes[source].input[0].split(":", 1)[0]
        arg = args.get(source)
        if arg is None or arg.type == types_pb2.DT_RESOURCE:
            continue
        if node.attr["batch_dims"].i:
            raise ConversionError(f"node {node.name!r} in function {function.signature.name!r} gathers from a "
                                  "variable with batch_dims; freezing it is not supported: upload a frozen graph",
                                  code="unsupported_graph")
        axis = function.node_def.add(name=f"{node.name}/frozen_axis", op="Const")
        axis.attr["dtype"].type = types_pb2.DT_INT32
        axis.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(np.array(0, dtype=np.int32)))
        node.op = "GatherV2"
        node.input.insert(2, f"{axis.name}:output:0")
        node.attr["Tparams"].type = arg.type
        node.attr["Taxis"].type = types_pb2.DT_INT32
        node.attr["batch_dims"].i = 0
        for attr in ("dtype", "validate_indices"):
            if attr in node.attr:
                del node.attr[attr]


def _rewrite_resource_consumer(
    node, handle_of: dict[str, str], dtype_of: dict[str, int]
) -> tuple[node_def_pb2.NodeDef, list[node_def_pb2.NodeDef]]:
    """The value-reading op that replaces a reader of a (now constant) variable,
    with any constants it needs."""
    var = handle_of[node_name(node.input[0])]
    dtype_enum = dtype_of[var]
    new = node_def_pb2.NodeDef()
    new.CopyFrom(node)
    if node.op == "ReadVariableOp":
        new.op = "Identity"
        del new.attr["dtype"]
        new.attr["T"].type = dtype_enum
        return new, []
    if node.op == "ResourceGather":
        if node.attr["batch_dims"].i:
            raise ConversionError(
                f"node {node.name!r} gathers from variable {var!r} with batch_dims; freezing it is not "
                "supported: pass output nodes that avoid it or upload a frozen graph",
                code="unsupported_graph",
            )
        new.op = "GatherV2"
        axis_name = f"{node.name}/frozen_axis"
        new.input.insert(2, axis_name)
        for attr in ("dtype", "validate_indices", "batch_dims"):
            if attr in new.attr:
                del new.attr[attr]
        new.attr["Tparams"].type = dtype_enum
        new.attr["Taxis"].type = types_pb2.DT_INT32
        new.attr["batch_dims"].i = 0
        axis = node_def_pb2.NodeDef()
        _fill_const(axis, axis_name, np.array(0, dtype=np.int32), types_pb2.DT_INT32)
        return new, [axis]
    if node.op == "VariableShape":
        new.op = "Shape"
        new.attr["T"].type = dtype_enum
        return new, []
    raise ConversionError(
        f"node {node.name!r} ({node.op}) uses variable {var!r} in a way the freezer does not support; "
        "only reads (ReadVariableOp, ResourceGather, VariableShape) can be frozen. Pass output nodes of "
        "the inference part of the graph (is_training=False), or upload a frozen graph",
        code="unsupported_graph",
    )
