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


def test_blobs_are_listed_with_their_size_and_modification_time(backend):
    from datetime import datetime, timedelta, timezone

    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    small = backend.storage.put_stream(io.BytesIO(b"a" * 10))
    large = backend.storage.put_stream(io.BytesIO(b"b" * 5000))
    writer = backend.storage.writer()
    writer.write(b"not finished")
    listed = {b.sha256: b for b in backend.storage.iter_blobs()}
    writer.abort()
    assert {d: b.size for d, b in listed.items()} == {small.sha256: 10, large.sha256: 5000}
    after = datetime.now(timezone.utc) + timedelta(seconds=5)
    assert all(before <= b.modified <= after for b in listed.values())
    assert backend.storage.blob_info(small.sha256) == listed[small.sha256]
    with pytest.raises(FileNotFoundError):
        backend.storage.blob_info("0" * 64)


def test_storing_the_same_bytes_again_makes_the_blob_young_again(backend):
    import time

    first = backend.storage.put_stream(io.BytesIO(b"re-used weights"))
    old = backend.storage.blob_info(first.sha256).modified
    time.sleep(1.1)  # S3 keeps LastModified to the second
    again = backend.storage.put_stream(io.BytesIO(b"re-used weights"))
    assert again.created is False
    assert backend.storage.blob_info(first.sha256).modified > old


def test_an_upload_in_progress_is_a_temporary_upload_until_it_finishes(backend):
    from registry.storage.s3 import PART_SIZE

    writer = backend.storage.writer()
    writer.write(b"p" * (PART_SIZE + 10))  # on S3: one part uploaded, a multipart upload open
    pending = list(backend.storage.iter_temporary())
    assert len(pending) == 1 and pending[0].size >= 10
    ref = writer.finish()
    assert list(backend.storage.iter_temporary()) == []
    assert backend.storage.exists(ref.sha256)


def test_deleting_an_abandoned_temporary_upload_leaves_nothing(backend):
    from registry.storage.s3 import PART_SIZE

    writer = backend.storage.writer()
    writer.write(b"q" * (PART_SIZE + 10))
    (pending,) = backend.storage.iter_temporary()
    backend.storage.delete_temporary(pending)
    assert list(backend.storage.iter_temporary()) == []
    writer.abort()  # the killed upload's own clean-up finds nothing and does not fail
    assert [key for key in backend.stored() if not key.startswith(".staging")] == []


def test_check_passes_on_working_storage(backend):
    backend.storage.check()
