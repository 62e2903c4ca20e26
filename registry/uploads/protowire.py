"""A streaming check of protobuf wire format, so that the web app can reject a
file that is not a GraphDef or MetaGraphDef at upload time without importing
TensorFlow or holding the file in memory.

It reads only the top level of the message: each field's tag, and the lengths
it must skip.  That is enough to tell a graph from a JPEG, a text file or a
truncated copy, and a MetaGraphDef from a GraphDef.
"""

from __future__ import annotations

import mmap

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5

# field number -> wire type, for the messages we accept.
GRAPH_DEF_FIELDS = {1: LEN, 2: LEN, 3: VARINT, 4: LEN, 5: LEN}
META_GRAPH_DEF_FIELDS = {1: LEN, 2: LEN, 3: LEN, 4: LEN, 5: LEN, 6: LEN, 7: LEN}


class WireScanner:
    """Feed chunks with :meth:`feed`; afterwards :attr:`error` is None if the
    bytes were a well-formed sequence of top-level fields."""

    def __init__(self) -> None:
        self.fields: dict[int, int] = {}  # field number -> wire type seen
        self.counts: dict[int, int] = {}
        self.error: str | None = None
        self._skip = 0  # bytes still to skip inside a field
        self._varint = bytearray()  # pending varint bytes
        self._state = "tag"  # tag | len | varint
        self._field = 0

    def feed(self, chunk: bytes) -> None:
        if self.error is not None:
            return
        i, n = 0, len(chunk)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            byte = chunk[i]
            i += 1
            self._varint.append(byte)
            if byte & 0x80:
                if len(self._varint) > 10:
                    self.error = "malformed varint"
                    return
                continue
            value = 0
            for shift, b in enumerate(self._varint):
                value |= (b & 0x7F) << (7 * shift)
            self._varint.clear()
            if self._state == "tag":
                field, wire = value >> 3, value & 7
                if field == 0 or wire not in (VARINT, FIXED64, LEN, FIXED32):
                    self.error = f"invalid field tag {value}"
                    return
                self.fields.setdefault(field, wire)
                self.counts[field] = self.counts.get(field, 0) + 1
                self._field = field
                if wire == LEN:
                    self._state = "len"
                elif wire == VARINT:
                    self._state = "varint"
                else:
                    self._skip = 8 if wire == FIXED64 else 4
            elif self._state == "len":
                self._skip = value
                self._state = "tag"
            else:  # the value of a varint field
                self._state = "tag"

    def finish(self) -> None:
        if self.error is None and (self._skip or self._varint or self._state != "tag"):
            self.error = "the file ends in the middle of a field (truncated?)"

    def matches(self, schema: dict[int, int]) -> bool:
        return self.error is None and all(schema.get(f) == w for f, w in self.fields.items())


# -- the ops of a GraphDef, read without TensorFlow ---------------------------------------------

def field_spans(buf: memoryview, start: int, end: int):
    """``(field, wire type, value, field start, field end)`` of each field in ``buf[start:end]``; LEN
    values are the (offset, end) of their payload.  ValueError for bytes that are not wire format."""
    i = start
    while i < end:
        field_start = i
        tag, i = varint(buf, i, end)
        field, wire = tag >> 3, tag & 7
        if wire == VARINT:
            value, i = varint(buf, i, end)
        elif wire == LEN:
            length, i = varint(buf, i, end)
            if i + length > end:
                raise ValueError("a field runs past the end of its message")
            value, i = (i, i + length), i + length
        elif wire in (FIXED64, FIXED32):
            i += 8 if wire == FIXED64 else 4
            value = None
        else:
            raise ValueError(f"invalid wire type {wire}")
        yield field, wire, value, field_start, i


def _fields(buf: memoryview, start: int, end: int):
    """``(field, wire type, value)`` of each field in ``buf[start:end]``; LEN values are (offset, end)."""
    for field, wire, value, _, _ in field_spans(buf, start, end):
        yield field, wire, value


def varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    """The varint at ``buf[i]`` and the offset after it; ValueError when it is malformed."""
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError("malformed varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _node_name_and_op(buf: memoryview, start: int, end: int) -> tuple[str, str]:
    name = op = ""
    for field, wire, value in _fields(buf, start, end):
        if wire == LEN and field in (1, 2):
            text = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
            name, op = (text, op) if field == 1 else (name, text)
    return name, op


def graph_def_ops(handle) -> list[tuple[str, str]]:
    """Every ``(node name, op)`` of a binary GraphDef file, function bodies included, read at the
    wire level (``GraphDef.node`` = 1, ``.library`` = 2; ``FunctionDef.node_def`` = 3; ``NodeDef.name``
    = 1, ``.op`` = 2) from an open binary file.  Tensor contents are skipped by their length,
    never copied."""
    out: list[tuple[str, str]] = []
    with handle:
        if handle.seek(0, 2) == 0:
            return out
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                for field, wire, value in _fields(buf, 0, len(buf)):
                    if wire != LEN:
                        continue
                    if field == 1:
                        out.append(_node_name_and_op(buf, *value))
                    elif field == 2:
                        for f_field, f_wire, function in _fields(buf, *value):
                            if f_field != 1 or f_wire != LEN:
                                continue
                            fname = ""
                            for d_field, d_wire, part in _fields(buf, *function):
                                if d_wire == LEN and d_field == 1:  # signature (OpDef): its name is field 1
                                    fname = next((bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
                                                  for f, w, v in _fields(buf, *part) if f == 1 and w == LEN), "")
                                elif d_wire == LEN and d_field == 3:
                                    name, op = _node_name_and_op(buf, *part)
                                    out.append((f"{fname}/{name}", op))
            finally:
                buf.release()
    return out
