"""A frozen graph loaded with one copy of its weights (the inference worker's side).

A frozen GraphDef carries its weights as ``Const`` nodes.  Imported as it is,
each weight is held many times over once the graph has run: by the parsed
GraphDef, by the ``tf.Graph``, by the session's copy of the graph, by the
graphs grappler builds (constant folding copies every constant it touches, and
takes seconds on a 100 MB graph), by the executor's graph, and in the ``Const``
kernels' tensors: about 6x the frozen size.

So the weights are taken out before anything parses the graph.  The stored
bytes are scanned as protobuf wire format (:func:`split`): each large numeric
``Const`` is replaced, under its own name, by a ``ReadVariableOp`` of a
resource variable (``VarHandleOp`` with the constant's dtype and shape), and its
value is left where it is in the received buffer.  What is parsed and imported
is the small rest of the graph.  One ``Session.run`` of ``AssignVariableOp``\\ s
then copies each value, once, from the buffer into its variable; a
``ReadVariableOp`` hands the variable's tensor on without copying it.  Measured
on a 112 MB Inception-v3 graph: load and first run take 0.8 s against 3-6 s for
parse + import + first run of the GraphDef (grappler has a small graph to look
at, nothing to fold), and the version holds 125 MB once it has run, against
680 MB.  Runs are as fast: the weights are the same tensors either way (with
oneDNN, a constant filter's reordered copy is cached, a variable's is reordered
per run; measured within noise on Inception-v3, ``benchmarks/label_memory.py``).

Small constants (under ``MIN_WEIGHT_BYTES``: shapes, axes, scalars) stay
constants, so shape inference and grappler still see their values.  Bytes that
are not a GraphDef this scanner understands load the old way (parsed whole).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2, tensor_shape_pb2, types_pb2

from registry.uploads import protowire

tf1 = tf.compat.v1
MIN_WEIGHT_BYTES = 16 * 1024  # a Const with less tensor_content stays a Const
ALIGN = 64  # a fed array aligned to this is taken by TensorFlow without a copy (EIGEN_MAX_ALIGN_BYTES)
SUFFIX = "/_frozen_weight"  # VarHandleOp "<const>/_frozen_weight", its Placeholder "...value", AssignVariableOp
_WEIGHT_DTYPES = frozenset({
    types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16, types_pb2.DT_INT8,
    types_pb2.DT_INT16, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_UINT8, types_pb2.DT_UINT16,
    types_pb2.DT_UINT32, types_pb2.DT_UINT64, types_pb2.DT_BOOL, types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128,
})


class _NotAGraphDef(ValueError):
    """The scanner does not understand these bytes (they load the old way)."""


@dataclass(frozen=True)
class Weight:
    name: str  # the Const node it replaces
    dtype: int  # DataType enum
    shape: tuple[int, ...]
    start: int  # its tensor_content in the frozen bytes
    end: int


def _fields(data: memoryview, start: int, end: int):
    """(number, wire type, value, field start, field end) of each field of the message in data[start:end];
    a length-delimited field's value is the (start, end) of its payload."""
    try:
        yield from protowire.field_spans(data, start, end)
    except ValueError as exc:
        raise _NotAGraphDef(str(exc)) from exc


def _text(data: memoryview, span: tuple[int, int]) -> str:
    return bytes(data[span[0]:span[1]]).decode("utf-8")


def _shape(data: memoryview, span: tuple[int, int]) -> tuple[int, ...] | None:
    """A TensorShapeProto's dims (None: unknown rank or a negative size)."""
    dims = []
    for number, wire, value, _, _ in _fields(data, *span):
        if number == 3 and wire == 0 and value:  # unknown_rank
            return None
        if number == 2 and wire == 2:  # dim
            size = 0
            for dim_number, dim_wire, dim_value, _, _ in _fields(data, *value):
                if dim_number == 1 and dim_wire == 0:
                    size = dim_value - (1 << 64) if dim_value >= 1 << 63 else dim_value
            if size < 0:
                return None
            dims.append(size)
    return tuple(dims)


def _weight(data: memoryview, name: str, span: tuple[int, int]) -> Weight | None:
    """The weight a Const's ``value`` AttrValue holds, if it is one to take out."""
    dtype, shape, content, other = 0, None, None, False
    for number, wire, value, _, _ in _fields(data, *span):
        if number == 8 and wire == 2:  # AttrValue.tensor
            for t_number, t_wire, t_value, _, _ in _fields(data, *value):
                if t_number == 1 and t_wire == 0:
                    dtype = t_value
                elif t_number == 2 and t_wire == 2:
                    shape = _shape(data, t_value)
                elif t_number == 4 and t_wire == 2:
                    content = t_value
                elif t_number not in (3,):  # version_number aside, a typed *_val field
                    other = True
    if content is None or other or shape is None or dtype not in _WEIGHT_DTYPES:
        return None
    size = content[1] - content[0]
    itemsize = np.dtype(tf.as_dtype(dtype).as_numpy_dtype).itemsize
    if size < MIN_WEIGHT_BYTES or size != int(np.prod(shape, dtype=np.int64)) * itemsize:
        return None
    return Weight(name, dtype, shape, content[0], content[1])


def _node_weight(data: memoryview, span: tuple[int, int]) -> tuple[Weight | None, node_def_pb2.NodeDef]:
    """A NodeDef's weight (if it is a Const to take out) and the node without its attributes."""
    node = node_def_pb2.NodeDef()
    value_attr = None
    for number, wire, value, _, _ in _fields(data, *span):
        if wire != 2:
            continue
        if number == 1:
            node.name = _text(data, value)
        elif number == 2:
            node.op = _text(data, value)
        elif number == 3:
            node.input.append(_text(data, value))
        elif number == 4:
            node.device = _text(data, value)
        elif number == 5:  # attr: a map entry (key = 1, value = 2)
            key = entry = None
            for e_number, e_wire, e_value, _, _ in _fields(data, *value):
                if e_number == 1 and e_wire == 2:
                    key = bytes(data[e_value[0]:e_value[1]])
                elif e_number == 2 and e_wire == 2:
                    entry = e_value
            if key == b"value" and entry is not None:
                value_attr = entry
    if node.op != "Const" or value_attr is None:
        return None, node
    return _weight(data, node.name, value_attr), node


def _replacement(weight: Weight, node: node_def_pb2.NodeDef) -> list[node_def_pb2.NodeDef]:
    """The Const's stand-in (a ReadVariableOp under its name) and the variable it reads."""
    handle = node_def_pb2.NodeDef(name=weight.name + SUFFIX, op="VarHandleOp", device=node.device)
    handle.attr["dtype"].type = weight.dtype
    handle.attr["shape"].shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in weight.shape]))
    handle.attr["shared_name"].s = handle.name.encode()
    handle.attr["container"].s = b""
    read = node_def_pb2.NodeDef(name=weight.name, op="ReadVariableOp", device=node.device,
                                input=[handle.name] + [i for i in node.input if i.startswith("^")])
    read.attr["dtype"].type = weight.dtype
    value = node_def_pb2.NodeDef(name=handle.name + "/value", op="Placeholder", device=node.device)
    value.attr["dtype"].type = weight.dtype
    value.attr["shape"].shape.CopyFrom(handle.attr["shape"].shape)
    assign = node_def_pb2.NodeDef(name=handle.name + "/assign", op="AssignVariableOp", device=node.device,
                                  input=[handle.name, value.name])
    assign.attr["dtype"].type = weight.dtype
    return [read, handle, value, assign]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, encoded."""
    length, head = len(payload), bytearray([number << 3 | 2])
    while True:
        byte = length & 0x7F
        length >>= 7
        head.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(head) + payload


def split(frozen) -> tuple[graph_pb2.GraphDef, list[Weight], set[str], bool]:
    """The GraphDef without its large constants (each a variable read instead), the weights to assign
    (spans of ``frozen``), the op types of the original graph and whether it has a function library.
    Raises ValueError for bytes this scanner does not understand."""
    data = memoryview(frozen).cast("B")
    names: set[str] = set()
    ops: set[str] = set()
    functions = False
    nodes: list[tuple[int, int, Weight | None, node_def_pb2.NodeDef]] = []
    parts: list[bytes | tuple] = []
    for number, wire, value, start, end in _fields(data, 0, len(data)):
        if number == 1 and wire == 2:  # GraphDef.node
            weight, node = _node_weight(data, value)
            names.add(node.name)
            ops.add(node.op)
            nodes.append((start, end, weight, node))
            parts.append(nodes[-1])
        else:
            functions = functions or (number == 2 and wire == 2 and value[1] > value[0])  # GraphDef.library
            parts.append(bytes(data[start:end]))  # versions, library, ...: copied as they are
    weights = []
    out = []
    for part in parts:
        if isinstance(part, bytes):
            out.append(part)
            continue
        start, end, weight, node = part
        if weight is None or weight.name + SUFFIX in names:
            out.append(bytes(data[start:end]))
            continue
        weights.append(weight)
        out.extend(_field(1, n.SerializeToString()) for n in _replacement(weight, node))
    graph_def = graph_pb2.GraphDef()
    graph_def.ParseFromString(b"".join(out))
    return graph_def, weights, ops, functions


def _aligned_copy(data: memoryview, weight: Weight) -> np.ndarray:
    """The weight's value in memory of its own (aligned, so TensorFlow takes it without another copy)."""
    size = weight.end - weight.start
    raw = np.empty(size + ALIGN, np.uint8)
    offset = -raw.ctypes.data % ALIGN
    out = raw[offset:offset + size]
    out[:] = np.frombuffer(data, np.uint8, size, weight.start)
    return out.view(tf.as_dtype(weight.dtype).as_numpy_dtype).reshape(weight.shape)


@dataclass
class Loaded:
    graph: tf.Graph
    session: tf1.Session
    ops: set[str]  # the op types of the frozen graph as it was stored
    functions: bool  # it has a function library
    weight_bytes: int  # held in variables
    weights: int


def load(frozen, config=None) -> Loaded:
    """Import ``frozen`` (a serialized GraphDef) into a new graph and session, weights held once."""
    try:
        graph_def, weights, ops, functions = split(frozen)
    except (_NotAGraphDef, UnicodeDecodeError):
        graph_def, weights = graph_pb2.GraphDef(), []
        graph_def.ParseFromString(frozen)  # DecodeError for what protobuf cannot read either
        ops, functions = {node.op for node in graph_def.node}, bool(graph_def.library.function)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    del graph_def
    session = tf1.Session(graph=graph, config=config)
    if weights:
        data = memoryview(frozen).cast("B")
        feeds = {f"{w.name}{SUFFIX}/value:0": _aligned_copy(data, w) for w in weights}
        session.run([f"{w.name}{SUFFIX}/assign" for w in weights], feeds)
        del feeds
    return Loaded(graph, session, ops, functions, sum(w.end - w.start for w in weights), len(weights))
