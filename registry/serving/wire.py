"""What the label service and its inference workers send each other.

A message is a JSON header followed by raw buffers (arrays, a frozen graph),
framed by ``multiprocessing.connection``.  Nothing is pickled: a worker runs
uploaded graphs, so what comes back from it is read as data only, and arrays
cross as their bytes (one copy each way, no per-element conversion).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

# Array types that cross as raw bytes; strings cross as lengths + bytes.
NUMERIC_DTYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "bfloat16",
})


class ProtocolError(Exception):
    """A message that does not follow this protocol (the other side is broken)."""


def _dtype(name: str) -> np.dtype:
    if name not in NUMERIC_DTYPES:
        raise ProtocolError(f"unsupported array type {name!r}")
    if name == "bfloat16":
        import ml_dtypes  # installed with TensorFlow: only for a bfloat16 array, never in the web process

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


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
        if array.dtype.name not in NUMERIC_DTYPES:
            raise ProtocolError(f"array {name} has the unsupported type {array.dtype.name}")
        described.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape)})
        buffers.append(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return described, buffers


def decode_arrays(described: list[dict], buffers: Sequence[bytes]) -> dict[str, np.ndarray]:
    """The arrays :func:`encode_arrays` described, checked against their buffers' sizes."""
    arrays: dict[str, np.ndarray] = {}
    position = 0
    try:
        for entry in described:
            shape = tuple(int(d) for d in entry["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            if entry["dtype"] == "string":
                lengths = np.frombuffer(buffers[position], dtype=np.int64)
                data = buffers[position + 1]
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
    """One end of a worker's connection: whole messages, sent from any thread."""

    def __init__(self, connection: Connection, *, max_bytes: int) -> None:
        self.connection = connection
        self.max_bytes = max_bytes  # refuse a larger frame from the other side
        self._send_lock = threading.Lock()

    def send(self, header: dict[str, Any], buffers: Sequence = ()) -> None:
        header = dict(header, buffers=len(buffers))
        data = json.dumps(header, separators=(",", ":")).encode()
        with self._send_lock:
            self.connection.send_bytes(data)
            for buffer in buffers:
                self.connection.send_bytes(buffer)

    def recv(self) -> tuple[dict[str, Any], list[bytes]]:
        """The next message; EOFError when the other side is gone."""
        try:
            header = json.loads(self.connection.recv_bytes(1024 * 1024))
            count = int(header.get("buffers", 0))
            if count < 0 or count > 10_000:
                raise ProtocolError(f"a message with {count} buffers")
            buffers = [self.connection.recv_bytes(self.max_bytes) for _ in range(count)]
        except (OSError, ValueError, AttributeError) as exc:
            if isinstance(exc, OSError) and not str(exc).startswith("bad message length"):
                raise EOFError(str(exc)) from exc
            raise ProtocolError(f"unreadable message: {exc}") from exc
        return header, buffers

    def close(self) -> None:
        self.connection.close()
