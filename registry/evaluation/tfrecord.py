"""TFRecord files of ``tf.Example`` read without TensorFlow: the web app checks an uploaded set with this,
and the comparison reads it back in batches.

A record is framed as TensorFlow writes it (``tensorflow/core/lib/io/record_writer.cc``): the data's
length (uint64, little-endian), the masked CRC32C of those 8 bytes, the data, the masked CRC32C of the
data.  Both checksums are verified.  No CRC32C package is installed, so the table-driven one below
computes it (about 10 MB/s: an evaluation set is checked once, at upload).

An Example is read at the wire level (``registry.uploads.protowire``): ``Example.features`` = 1,
``Features.feature`` = 1 (a map entry: key = 1, value = 2), ``Feature.bytes_list`` = 1,
``.float_list`` = 2, ``.int64_list`` = 3, each a list whose ``value`` = 1 is packed or repeated.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from registry.uploads.protowire import FIXED32, LEN, VARINT, field_spans, varint

MASK_DELTA = 0xA282EAD8
MAX_RECORD_BYTES = 64 * 1024**2  # one serialized Example; a longer one is refused rather than read whole
KINDS = {1: "bytes_list", 2: "float_list", 3: "int64_list"}


def _table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord frames use it."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF


class RecordError(ValueError):
    """A TFRecord file that is not well framed; ``record`` is the 1-based number of the bad record."""

    def __init__(self, record: int, message: str) -> None:
        super().__init__(message)
        self.record = record


def records(stream: BinaryIO, *, verify: bool = True) -> Iterator[bytes]:
    """Each record's data, in order; RecordError for a truncated file, a bad checksum or a record over
    MAX_RECORD_BYTES."""
    number = 0
    while True:
        number += 1
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise RecordError(number, f"the file ends inside the header of record {number} (truncated?)")
        length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
        if verify and masked_crc(length_bytes) != length_crc:
            raise RecordError(number, f"record {number} has a bad length checksum: this is not a TFRecord file, "
                                      "or it is damaged from here on")
        (length,) = struct.unpack("<Q", length_bytes)
        if length > MAX_RECORD_BYTES:
            raise RecordError(number, f"record {number} is {length:,} bytes, more than the "
                                      f"{MAX_RECORD_BYTES // 2**20} MiB a record may be")
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise RecordError(number, f"the file ends inside record {number} (truncated?)")
        if verify and masked_crc(data) != struct.unpack("<I", footer)[0]:
            raise RecordError(number, f"record {number} has a bad data checksum: it is damaged")
        yield data


def _list_values(kind: str, buf: memoryview, start: int, end: int) -> list:
    """The values of a BytesList, FloatList or Int64List message in ``buf[start:end]``."""
    values: list = []
    for field, wire, value, field_start, field_end in field_spans(buf, start, end):
        if field != 1:
            continue
        if kind == "bytes_list":
            if wire != LEN:
                raise ValueError("a bytes_list value is not length-delimited")
            values.append(bytes(buf[value[0]:value[1]]))
        elif kind == "float_list":
            if wire == LEN:
                if (value[1] - value[0]) % 4:
                    raise ValueError("a packed float_list is not a whole number of floats")
                values.extend(struct.unpack(f"<{(value[1] - value[0]) // 4}f", buf[value[0]:value[1]]))
            elif wire == FIXED32:
                values.append(struct.unpack("<f", buf[field_end - 4:field_end])[0])
            else:
                raise ValueError("a float_list value is neither packed nor a 32-bit float")
        else:
            if wire == LEN:
                raw = _packed_varints(buf, *value)
            elif wire == VARINT:
                raw = [value]
            else:
                raise ValueError("an int64_list value is neither packed nor a varint")
            values.extend(v - (1 << 64) if v >= 1 << 63 else v for v in raw)
    return values


def _packed_varints(buf: memoryview, start: int, end: int) -> list[int]:
    out, i = [], start
    while i < end:
        try:
            value, i = varint(buf, i, end)
        except ValueError:
            raise ValueError("malformed varint in a packed int64_list") from None
        out.append(value)
    return out


def parse_example(data: bytes) -> dict[str, tuple[str, list]]:
    """A serialized tf.Example as ``{feature name: (kind, values)}``; ValueError when it is not one."""
    buf = memoryview(data)
    features: dict[str, tuple[str, list]] = {}
    for field, wire, value, _, _ in field_spans(buf, 0, len(buf)):
        if field != 1:
            continue
        if wire != LEN:
            raise ValueError("Example.features is not a message")
        for entry_field, entry_wire, entry, _, _ in field_spans(buf, *value):
            if entry_field != 1:
                continue
            if entry_wire != LEN:
                raise ValueError("Features.feature is not a map entry")
            name, kind, values = "", None, []
            for f, w, v, _, _ in field_spans(buf, *entry):
                if f == 1 and w == LEN:
                    try:
                        name = bytes(buf[v[0]:v[1]]).decode("utf-8")
                    except UnicodeDecodeError:
                        raise ValueError("a feature name is not UTF-8") from None
                elif f == 2 and w == LEN:
                    kind, values = None, []
                    for lf, lw, lv, _, _ in field_spans(buf, *v):
                        if lf in KINDS and lw == LEN:
                            kind = KINDS[lf]
                            values = _list_values(kind, buf, *lv)
            features[name] = (kind or "empty", values)
    return features


def expected_value(kind: str, values: list):
    """A label feature's value as a comparison expects it: one string (bytes decoded as UTF-8) or
    number, or a list of numbers for a vector."""
    if kind == "bytes_list":
        text = [v.decode("utf-8", "replace") for v in values]
        return text[0] if len(text) == 1 else text
    return values[0] if len(values) == 1 else list(values)
