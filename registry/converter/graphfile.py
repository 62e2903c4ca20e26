"""Frozen graphs as files, written and read a node at a time.

A frozen graph is mostly its weights, and a protobuf message (upb) gives its
memory back only all at once: holding the whole frozen GraphDef, its serialized
bytes and a parsed copy together is what made converting a checkpoint take
eight times its size.  :class:`GraphWriter` writes a GraphDef node by node, a
constant's values straight from their array, and gives exactly the bytes
``GraphDef.SerializeToString(deterministic=True)`` gives for the whole graph
(the same upload keeps its sha256); :func:`read_graph_def` reads a file back a
node at a time, its big constants' values lifted out of their nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from google.protobuf.message import DecodeError
from tensorflow.core.framework import graph_pb2, node_def_pb2

NODE_FIELD = 1  # GraphDef.node: the lowest field number, so serialized first
ATTR_FIELD, ENTRY_KEY, ENTRY_VALUE, ATTR_TENSOR, TENSOR_CONTENT = 5, 1, 2, 8, 4
LENGTH_DELIMITED = 2
ALIGNMENT = 64  # TensorFlow copies a fed array unless it starts on such a boundary


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _header(field: int, length: int) -> bytes:
    """The tag and length that start a length-delimited field."""
    return _varint(field << 3 | LENGTH_DELIMITED) + _varint(length)


class GraphWriter:
    """Writes a GraphDef to ``path`` node by node (use as a context manager; :meth:`finish` writes the
    graph's other fields and must come last)."""

    def __init__(self, path: Path) -> None:
        self._file: BinaryIO = open(path, "wb")

    def __enter__(self) -> "GraphWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def node(self, node: node_def_pb2.NodeDef, values: np.ndarray | None = None) -> None:
        """Write ``node``; with ``values``, ``node`` is a Const whose tensor leaves out its
        ``tensor_content``, written here from the array (C order), as if the node held it."""
        content = None if values is None else np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        if content is None or not content.size:  # proto3 leaves an empty tensor_content out
            data = node.SerializeToString(deterministic=True)
            self._file.write(_header(NODE_FIELD, len(data)) + data)
            return
        if node.HasField("experimental_debug_info") or node.HasField("experimental_type") or \
                max(node.attr) != "value":
            raise ValueError(f"{node.name}: only a Const with its dtype and value attributes is written "
                             "from an array")  # fields serialized after attr["value"] would come first
        # A map entry's fields are its key and value; the node's attr entries come in key order, "value" last.
        tensor = node.attr["value"].tensor.SerializeToString(deterministic=True)
        tensor_length = len(tensor) + len(_header(TENSOR_CONTENT, content.size)) + content.size
        attr_length = len(_header(ATTR_TENSOR, tensor_length)) + tensor_length
        key = _header(ENTRY_KEY, len(b"value")) + b"value"
        entry_length = len(key) + len(_header(ENTRY_VALUE, attr_length)) + attr_length
        rest = node_def_pb2.NodeDef()
        rest.CopyFrom(node)
        del rest.attr["value"]
        head = rest.SerializeToString(deterministic=True)
        node_length = len(head) + len(_header(ATTR_FIELD, entry_length)) + entry_length
        self._file.write(b"".join([
            _header(NODE_FIELD, node_length), head, _header(ATTR_FIELD, entry_length), key,
            _header(ENTRY_VALUE, attr_length), _header(ATTR_TENSOR, tensor_length), tensor,
            _header(TENSOR_CONTENT, content.size)]))
        self._file.write(content.data)

    def finish(self, graph_def: graph_pb2.GraphDef) -> None:
        """Write ``graph_def``'s fields other than its nodes (versions, library), which follow the nodes."""
        self._file.write(without_nodes(graph_def).SerializeToString(deterministic=True))
        self._file.close()


def without_nodes(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
    """A GraphDef with ``graph_def``'s fields other than its nodes (each one present where it is)."""
    out = graph_pb2.GraphDef()
    for field, value in graph_def.ListFields():
        if field.name == "node":
            continue
        if field.message_type is not None:
            getattr(out, field.name).CopyFrom(value)
        else:
            setattr(out, field.name, value)
    return out


def write_graph_def(graph_def: graph_pb2.GraphDef, path: Path) -> None:
    """``graph_def.SerializeToString(deterministic=True)`` into ``path``, without a serialized copy of the
    whole graph in memory."""
    with GraphWriter(path) as writer:
        for node in graph_def.node:
            writer.node(node)
        writer.finish(graph_def)


def _read_varint(file: BinaryIO) -> int | None:
    """The next varint, or None at the end of the file."""
    value, shift = 0, 0
    while True:
        byte = file.read(1)
        if not byte:
            if shift:
                raise DecodeError("truncated varint")
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def read_graph_def(path: Path, lift_bytes: int | None = None) -> tuple[graph_pb2.GraphDef, dict[str, np.ndarray]]:
    """The GraphDef in ``path``, read a node at a time, and the values lifted out of it: each Const whose
    ``tensor_content`` is ``lift_bytes`` or more comes without it, its bytes returned apart (by node name,
    as uint8 arrays starting on a 64-byte boundary, which TensorFlow feeds where they lie rather than
    copying them).  At most two copies of one node's values are in memory at a time.  Raises DecodeError."""
    nodes: list[node_def_pb2.NodeDef] = []
    lifted: dict[str, np.ndarray] = {}
    rest = bytearray()  # the other fields (versions, library), parsed together at the end
    with open(path, "rb") as file:
        while (tag := _read_varint(file)) is not None:
            wire_type = tag & 7
            if wire_type == LENGTH_DELIMITED:
                length = _read_varint(file)
                data = file.read(length) if length is not None else b""
                if length is None or len(data) != length:
                    raise DecodeError("truncated field")
                if tag >> 3 != NODE_FIELD:
                    rest += _varint(tag) + _varint(length) + data
                    continue
                node = node_def_pb2.NodeDef.FromString(data)
                del data
                if lift_bytes is not None and length >= lift_bytes and node.op == "Const" and "value" in node.attr:
                    tensor = node.attr["value"].tensor
                    content = tensor.tensor_content
                    if len(content) >= lift_bytes:
                        tensor.ClearField("tensor_content")
                        node = node_def_pb2.NodeDef.FromString(node.SerializeToString())  # the values go with the old
                        lifted[node.name] = _aligned(content)
                        del content
                nodes.append(node)
            elif wire_type == 0:
                if (value := _read_varint(file)) is None:
                    raise DecodeError("truncated field")
                rest += _varint(tag) + _varint(value)
            elif wire_type in (1, 5):
                size = 8 if wire_type == 1 else 4
                data = file.read(size)
                if len(data) != size:
                    raise DecodeError("truncated field")
                rest += _varint(tag) + data
            else:
                raise DecodeError(f"unexpected wire type {wire_type}")
    graph_def = graph_pb2.GraphDef()
    graph_def.ParseFromString(bytes(rest))
    graph_def.node.extend(nodes)
    return graph_def, lifted


def _aligned(data: bytes) -> np.ndarray:
    """``data`` copied into a uint8 array that starts on a 64-byte boundary (Eigen's alignment)."""
    buffer = np.empty(len(data) + ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    out = buffer[start:start + len(data)]
    out[:] = np.frombuffer(data, np.uint8)
    return out
