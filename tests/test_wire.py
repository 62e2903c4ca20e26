"""The protocol between the label service and its inference workers, over a real socket pair: arrays
and message ids arrive as sent, a header that repeats is each receiver's own, and what a broken (or
hostile) worker sends is refused as a protocol error, never taken as data."""

from __future__ import annotations

import math
import socket
import struct

import numpy as np
import pytest

from registry.serving import wire


@pytest.fixture
def ends():
    a, b = socket.socketpair()
    yield wire.Channel(a, max_bytes=1 << 20), wire.Channel(b, max_bytes=1 << 20), a  # a: the sender's raw end
    a.close()
    b.close()


def test_arrays_and_ids_arrive_as_sent(ends):
    sender, receiver, _ = ends
    arrays = {"x:0": np.arange(6, dtype=np.float32).reshape(2, 3), "s:0": np.array([b"a", b"", b"\xff"], dtype=object)}
    described, buffers = wire.encode_arrays(arrays)
    for ident in (1, 2, 2**40):
        sender.send({"op": "run", "arrays": described}, buffers, id=ident)
        header, data = receiver.recv()
        assert header["id"] == ident and header["op"] == "run"
        got = wire.decode_arrays(header["arrays"], data)
        assert got["x:0"].tolist() == arrays["x:0"].tolist() and got["x:0"].dtype == np.float32
        assert got["s:0"].tolist() == [b"a", b"", b"\xff"]


def test_headers_carry_json_values_exactly_and_refuse_anything_else(ends):
    sender, receiver, _ = ends
    header = {"op": "load", "tensors": ["x:0", "é:0"], "timeout_seconds": 2.5, "rss": 2**40, "nan": float("nan"),
              "ok": True, "none": None, "nested": {"a": [[], {}]}}
    sender.send(header, id=3)
    got, _ = receiver.recv()
    assert got.pop("id") == 3 and math.isnan(got.pop("nan"))  # NaN crosses as NaN
    assert got == {k: v for k, v in header.items() if k != "nan"}
    with pytest.raises(TypeError, match="float32"):
        sender.send({"seconds": np.float32(1.0)})  # numpy scalars are not JSON: callers convert them
    receiver.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        receiver.sock.recv(1, socket.MSG_PEEK)  # nothing half-sent after the refusal


def test_a_repeated_header_is_each_receivers_own(ends):
    """The second identical header is not parsed again, but changing the first one's keys does not
    change what the second says."""
    sender, receiver, _ = ends
    for ident in (7, 8):
        sender.send({"ok": True, "arrays": []}, id=ident)
    first, _ = receiver.recv()
    first["ok"] = False
    first["extra"] = 1
    second, _ = receiver.recv()
    assert second == {"ok": True, "arrays": [], "id": 8}


@pytest.mark.parametrize("header", [b"\xff\xfe", b"[1, 2]", b"{not json", b""])
def test_a_header_that_is_not_a_json_object_is_a_protocol_error(ends, header):
    _, receiver, raw = ends
    raw.sendall(struct.pack("<IIQ", len(header), 0, 1) + header)
    with pytest.raises(wire.ProtocolError):
        receiver.recv()


def test_oversized_headers_buffers_and_mismatched_arrays_are_refused(ends):
    _, receiver, raw = ends
    raw.sendall(struct.pack("<IIQ", wire.MAX_HEADER_BYTES + 1, 0, 1))
    with pytest.raises(wire.ProtocolError, match="header"):
        receiver.recv()
    a, b = socket.socketpair()
    try:
        small = wire.Channel(a, max_bytes=16)
        b.sendall(struct.pack("<IIQ", 2, 1, 1) + b"{}" + struct.pack("<Q", 17))
        with pytest.raises(wire.ProtocolError, match="17 bytes"):
            small.recv()
    finally:
        a.close()
        b.close()
    with pytest.raises(wire.ProtocolError, match="bytes for shape"):  # 4 bytes cannot be a 2x2 float32
        wire.decode_arrays([{"name": "y:0", "dtype": "float32", "shape": [2, 2]}], [b"\x00" * 4])
    with pytest.raises(wire.ProtocolError, match="unsupported"):
        wire.decode_arrays([{"name": "y:0", "dtype": "object", "shape": [1]}], [b"\x00" * 8])


def test_a_closed_connection_is_the_end_of_messages(ends):
    sender, receiver, _ = ends
    sender.send({"op": "exit"})
    assert receiver.recv()[0]["op"] == "exit"
    sender.close()
    with pytest.raises(EOFError):
        receiver.recv()
