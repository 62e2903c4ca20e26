"""The blob storage contract, on the local folder and on S3 (moto's server over
HTTP): content-addressed, streamed, never half-visible, nothing left behind."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from typing import Callable

import pytest

from registry.storage import BlobStorage, blob_key, open_storage


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


@dataclass
class Backend:
    storage: BlobStorage
    stored: Callable[[], list[str]]  # every object or file the backend holds, temporary ones included
    raw: Callable[[str], bytes]  # the bytes stored under a key, read around the interface


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        root = tmp_path / "blobs"
        storage = open_storage(root.as_uri())
        return Backend(storage,
                       lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
                       lambda key: (root / key).read_bytes())
    from tests.conftest import S3_BUCKET

    client = request.getfixturevalue("s3_server")
    prefix = f"contract-{uuid.uuid4().hex[:10]}"
    storage = open_storage(f"s3://{S3_BUCKET}/{prefix}")

    def stored() -> list[str]:
        answer = client.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}/")
        pending = client.list_multipart_uploads(Bucket=S3_BUCKET, Prefix=f"{prefix}/").get("Uploads", [])
        return sorted([o["Key"][len(prefix) + 1:] for o in answer.get("Contents", [])]
                      + [f"pending:{u['Key']}" for u in pending])

    return Backend(storage, stored,
                   lambda key: client.get_object(Bucket=S3_BUCKET, Key=f"{prefix}/{key}")["Body"].read())


def test_blob_is_stored_under_its_sha256(backend):
    data = b"frozen graph bytes" * 1000
    ref = backend.storage.put_stream(TrickleStream(data))
    digest = hashlib.sha256(data).hexdigest()
    assert (ref.sha256, ref.size, ref.created) == (digest, len(data), True)
    assert blob_key(digest) == f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    assert backend.stored() == [blob_key(digest)]
    assert backend.raw(blob_key(digest)) == data
    with backend.storage.open(digest) as stream:
        assert stream.read() == data
    assert backend.storage.size(digest) == len(data)


def test_storing_the_same_bytes_twice_keeps_one_blob(backend):
    first = backend.storage.put_stream(io.BytesIO(b"same"))
    second = backend.storage.put_stream(io.BytesIO(b"same"))
    assert first.sha256 == second.sha256 and second.created is False
    assert list(backend.storage.iter_digests()) == [first.sha256]
    assert backend.stored() == [blob_key(first.sha256)]


def test_a_blob_being_written_is_invisible_until_finished(backend):
    writer = backend.storage.writer()
    writer.write(b"half of it")
    digest = hashlib.sha256(b"half of it").hexdigest()
    assert not backend.storage.exists(digest)
    assert list(backend.storage.iter_digests()) == []
    writer.finish()
    assert backend.storage.exists(digest)


def test_an_aborted_write_leaves_nothing(backend):
    writer = backend.storage.writer()
    writer.write(b"x" * 10_000)
    writer.abort()
    assert backend.stored() == []


def test_a_failing_source_stream_leaves_nothing(backend):
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
        backend.storage.put_stream(Broken())
    assert backend.stored() == []


def test_seeking_reads_the_right_bytes(backend):
    data = bytes(range(256)) * 64
    ref = backend.storage.put_stream(io.BytesIO(data))
    with backend.storage.open(ref.sha256) as stream:
        stream.seek(1000)
        assert stream.read(24) == data[1000:1024]
        stream.seek(10)
        assert stream.read(5) == data[10:15]


def test_materialize_gives_a_local_file_with_the_same_bytes(backend, tmp_path):
    ref = backend.storage.put_stream(io.BytesIO(b"weights" * 999))
    target = tmp_path / "model.ckpt.data-00000-of-00001"
    backend.storage.materialize(ref.sha256, target)
    assert target.read_bytes() == b"weights" * 999


def test_deleting_a_blob_removes_it(backend):
    ref = backend.storage.put_stream(io.BytesIO(b"gone soon"))
    backend.storage.delete(ref.sha256)
    assert not backend.storage.exists(ref.sha256)
    assert backend.stored() == []


def test_unknown_storage_scheme_is_refused_with_the_supported_forms():
    from registry.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="file:///"):
        open_storage("ftp://example/blobs")
