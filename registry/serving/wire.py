"""What the label service and its inference workers send each other.

A message is a JSON header followed by raw buffers (arrays, a frozen graph),
on a stream socket: a 16-byte prefix (header length, buffer count, message id),
the header, the buffers' lengths, then the buffers.  Nothing is pickled: a worker runs
uploaded graphs, so what comes back from it is read as data only, and arrays
cross as their bytes (one copy each way, no per-element conversion).

A message goes out in one ``sendmsg`` (the buffers are not joined first) and
comes in through a read-ahead buffer, so a small request costs one system call
each way; a large buffer is read straight into its own memory.

The id travels in the prefix, not in the header, so that the header of a run
that repeats (the same version, inputs and shapes, and its answer) is the same
bytes each time: each end parses such a header once and remembers it.
"""

from __future__ import annotations

import json
import math
import select
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

# Array types that cross as raw bytes; strings cross as lengths + bytes.
NUMERIC_DTYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "bfloat16",
})


_DTYPES = {name: np.dtype(name) for name in NUMERIC_DTYPES if name != "bfloat16"}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_PREFIX = struct.Struct("<IIQ")  # header length, buffer count, message id
MAX_HEADER_BYTES = 1024 * 1024
MAX_BUFFERS = 10_000
_READ_AHEAD = 256 * 1024  # one recv takes up to this much; a larger buffer is read into its own memory
_IOV_MAX = 512  # buffers handed to one sendmsg (the kernel takes at most 1024)
_REMEMBERED_HEADERS = 256  # parsed headers a channel keeps (a run's request or answer repeats)
_REMEMBERED_BYTES = 1024  # longer headers (a load's tensor list, a comparison's targets) are parsed each time


def _not_json(value: Any) -> Any:
    raise TypeError(f"a message header cannot hold a {type(value).__name__}")


# A header's JSON, by one C encoder made once (json.dumps, and JSONEncoder.encode, make one per call: 35 us
# a header after a pause, against 22 us).  Headers are trees built here: no check for cycles (markers None).
_c_encoder = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
if _c_encoder is not None:
    def _encode(header: dict[str, Any]) -> str:
        return "".join(_c_encoder(header, 0))
else:  # a Python without the json accelerator
    _encode = json.JSONEncoder(separators=(",", ":"), default=_not_json).encode


class ProtocolError(Exception):
    """A message that does not follow this protocol (the other side is broken)."""


def _dtype(name: str) -> np.dtype:
    known = _DTYPES.get(name)
    if known is not None:
        return known
    if name != "bfloat16":
        raise ProtocolError(f"unsupported array type {name!r}")
    import ml_dtypes  # installed with TensorFlow: only for a bfloat16 array, never in the web process

    return np.dtype(ml_dtypes.bfloat16)


def encode_arrays(arrays: dict[str, np.ndarray]) -> tuple[list[dict], list]:
    """Each array's description (name, dtype, shape) and the buffers that carry its values."""
    described, buffers = [], []
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.kind in "OSU":
            items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.ravel().tolist()]
            described.append({"name": name, "dtype": "string", "shape": list(array.shape)})
            buffers += [np.array([len(v) for v in items], dtype=np.int64), b"".join(items)]
            continue
        dtype = _NAMES.get(array.dtype) or array.dtype.name  # numpy works a dtype's name out each time
        if dtype not in NUMERIC_DTYPES:
            raise ProtocolError(f"array {name} has the unsupported type {dtype}")
        described.append({"name": name, "dtype": dtype, "shape": list(array.shape)})
        buffers.append(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return described, buffers


def decode_arrays(described: list[dict], buffers: Sequence[bytes]) -> dict[str, np.ndarray]:
    """The arrays :func:`encode_arrays` described, checked against their buffers' sizes."""
    arrays: dict[str, np.ndarray] = {}
    position = 0
    try:
        for entry in described:
            shape = tuple(int(d) for d in entry["shape"])
            count = math.prod(shape)
            if count < 0:
                raise ProtocolError(f"array {entry['name']}: negative shape {list(shape)}")
            if entry["dtype"] == "string":
                lengths = np.frombuffer(buffers[position], dtype=np.int64)
                data = bytes(buffers[position + 1])  # items are bytes, whatever buffer type came in
                position += 2
                if len(lengths) != count or int(lengths.sum()) != len(data) or (lengths < 0).any():
                    raise ProtocolError(f"array {entry['name']}: string lengths do not match the data")
                ends = np.cumsum(lengths).tolist()
                items = [data[start:end] for start, end in zip([0] + ends[:-1], ends)]
                array = np.empty(count, dtype=object)
                array[:] = items
                arrays[entry["name"]] = array.reshape(shape)
                continue
            dtype = _dtype(entry["dtype"])
            data = buffers[position]
            position += 1
            if len(data) != count * dtype.itemsize:
                raise ProtocolError(f"array {entry['name']}: {len(data)} bytes for shape {list(shape)}")
            arrays[entry["name"]] = np.frombuffer(data, dtype=dtype).reshape(shape)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ProtocolError(f"malformed array description: {exc}") from exc
    if position != len(buffers):
        raise ProtocolError("more buffers than arrays")
    return arrays


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    """What ``arrays`` take on the wire (strings: their bytes plus 8 per element)."""
    total = 0
    for array in arrays.values():
        if array.dtype.kind in "OSU":
            total += sum(len(v) if isinstance(v, (bytes, str)) else 0 for v in array.ravel().tolist())
            total += 8 * array.size
        else:
            total += array.nbytes
    return total


class Channel:
    """One end of a worker's connection: whole messages, sent from any thread, received by one
    thread at a time."""

    def __init__(self, sock: socket.socket, *, max_bytes: int) -> None:
        self.sock = sock
        self.max_bytes = max_bytes  # refuse a larger buffer from the other side
        self._send_lock = threading.Lock()
        self._ahead = bytearray(_READ_AHEAD)  # what recv_into read beyond the message being parsed
        self._start = self._end = 0
        self._parsed: dict[bytes, dict[str, Any]] = {}  # header bytes seen before -> what they say

    def send(self, header: dict[str, Any], buffers: Sequence = (), *, id: int = 0) -> None:  # noqa: A002
        """Send ``header`` and ``buffers`` as message ``id`` (the receiver finds it as ``header["id"]``)."""
        data = _encode(header).encode()
        views = [memoryview(b).cast("B") for b in buffers]
        lengths = struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
        parts = [_PREFIX.pack(len(data), len(views), id) + data + lengths] + [v for v in views if v.nbytes]
        with self._send_lock:
            for start in range(0, len(parts), _IOV_MAX):
                _send_all(self.sock, parts[start:start + _IOV_MAX])

    def recv(self) -> tuple[dict[str, Any], list[bytearray]]:
        """The next message: its header (with its ``id``) and buffers; EOFError when the other side is
        gone.  The header is the caller's own, but the values in it may be shared with an earlier message
        whose header was the same bytes: read them, do not change them."""
        try:
            size, count, ident = _PREFIX.unpack(self._read(_PREFIX.size))
            if size > MAX_HEADER_BYTES or count > MAX_BUFFERS:
                raise ProtocolError(f"a message with a {size}-byte header and {count} buffers")
            data = bytes(self._read(size))
            parsed = self._parsed.get(data)
            if parsed is None:
                parsed = json.loads(data.decode())  # from str: from bytes json first works out the encoding
                if not isinstance(parsed, dict):
                    raise ProtocolError("a message header that is not an object")
                if size <= _REMEMBERED_BYTES:
                    if len(self._parsed) >= _REMEMBERED_HEADERS:
                        self._parsed.clear()
                    self._parsed[data] = parsed
            header = dict(parsed)
            header["id"] = ident
            lengths = struct.unpack(f"<{count}Q", self._read(8 * count)) if count else ()
            if any(n > self.max_bytes for n in lengths):
                raise ProtocolError(f"a buffer of {max(lengths)} bytes, more than {self.max_bytes}")
            buffers = [self._read(n) for n in lengths]
        except (ValueError, struct.error) as exc:  # UnicodeDecodeError and JSONDecodeError among them
            raise ProtocolError(f"unreadable message: {exc}") from exc
        except OSError as exc:
            raise EOFError(str(exc)) from exc
        return header, buffers

    def _read(self, size: int) -> bytearray:
        """Exactly ``size`` bytes: from what was read ahead, then from the socket."""
        available = self._end - self._start
        if size <= available:
            out = self._ahead[self._start:self._start + size]
            self._start += size
            return out
        out = bytearray(size)
        view = memoryview(out)
        view[:available] = memoryview(self._ahead)[self._start:self._end]
        filled = available
        self._start = self._end = 0
        while filled < size:
            if size - filled >= _READ_AHEAD:  # large: straight into its own memory
                got = self.sock.recv_into(view[filled:])
                if not got:
                    raise EOFError("the other side closed the connection")
                filled += got
                continue
            got = self.sock.recv_into(self._ahead)
            if not got:
                raise EOFError("the other side closed the connection")
            take = min(got, size - filled)
            view[filled:filled + take] = memoryview(self._ahead)[:take]
            filled += take
            self._start, self._end = take, got
        return out

    def readable(self, timeout: float) -> bool:
        """Whether a message (or the end of the connection) can be read within ``timeout`` seconds."""
        if self._end > self._start:
            return True
        return bool(select.select([self.sock], [], [], max(0.0, timeout))[0])

    def close(self) -> None:
        self.sock.close()


def _send_all(sock: socket.socket, parts: list) -> None:
    """``sendmsg`` until every byte of ``parts`` is sent (a large message goes out in pieces)."""
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts = parts[1:]
        if sent:
            parts = [memoryview(parts[0])[sent:]] + parts[1:]
