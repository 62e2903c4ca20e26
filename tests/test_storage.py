"""Local blob storage: content-addressed, streamed, never half-visible."""

from __future__ import annotations

import hashlib
import io

import pytest

from registry.storage import blob_key, open_storage


class TrickleStream(io.RawIOBase):
    """A stream that hands out its bytes a few at a time, like a slow socket."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.data[self.pos:self.pos + min(self.step, size if size > 0 else self.step)]
        self.pos += len(chunk)
        return chunk


@pytest.fixture
def storage(tmp_path):
    return open_storage((tmp_path / "blobs").as_uri())


def test_blob_is_stored_under_its_sha256(storage, tmp_path):
    data = b"frozen graph bytes" * 1000
    ref = storage.put_stream(TrickleStream(data))
    digest = hashlib.sha256(data).hexdigest()
    assert (ref.sha256, ref.size, ref.created) == (digest, len(data), True)
    assert (tmp_path / "blobs" / blob_key(digest)).read_bytes() == data
    assert blob_key(digest) == f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    with storage.open(digest) as stream:
        assert stream.read() == data


def test_storing_the_same_bytes_twice_keeps_one_blob(storage):
    first = storage.put_stream(io.BytesIO(b"same"))
    second = storage.put_stream(io.BytesIO(b"same"))
    assert first.sha256 == second.sha256 and second.created is False
    assert list(storage.iter_digests()) == [first.sha256]


def test_a_blob_being_written_is_invisible_until_finished(storage):
    writer = storage.writer()
    writer.write(b"half of it")
    digest = hashlib.sha256(b"half of it").hexdigest()
    assert not storage.exists(digest)
    assert list(storage.iter_digests()) == []
    writer.finish()
    assert storage.exists(digest)


def test_an_aborted_write_leaves_nothing(storage, tmp_path):
    writer = storage.writer()
    writer.write(b"x" * 10_000)
    writer.abort()
    leftovers = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_failing_source_stream_leaves_nothing(storage, tmp_path):
    class Broken(io.RawIOBase):
        calls = 0

        def readable(self):
            return True

        def read(self, size=-1):
            self.calls += 1
            if self.calls > 3:
                raise ConnectionResetError("client went away")
            return b"y" * 100

    with pytest.raises(ConnectionResetError):
        storage.put_stream(Broken())
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []


def test_unknown_storage_scheme_is_refused_with_the_supported_form():
    from registry.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="file:///"):
        open_storage("ftp://example/blobs")
