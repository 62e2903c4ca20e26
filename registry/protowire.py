"""A streaming check of protobuf wire format, so that the web app can reject a
file that is not a GraphDef or MetaGraphDef at upload time without importing
TensorFlow or holding the file in memory.

It reads only the top level of the message: each field's tag, and the lengths
it must skip.  That is enough to tell a graph from a JPEG, a text file or a
truncated copy, and a MetaGraphDef from a GraphDef.
"""

from __future__ import annotations

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
