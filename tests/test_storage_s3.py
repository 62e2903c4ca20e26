"""S3 blob storage, against a real S3 API server (moto_server) over HTTP."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import uuid

import pytest
import requests

pytest.importorskip("moto", reason="moto[server] is not installed: pip install 'moto[server]>=5'")
boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")
from botocore.stub import Stubber  # noqa: E402

from registry.errors import StorageError  # noqa: E402
from registry.storage import blob_key, open_storage  # noqa: E402
from tests.conftest import S3_BUCKET as BUCKET, _free_port, make_settings, seed_database  # noqa: E402
from tests.helpers import frozen_form, push  # noqa: E402

MiB = 1024 * 1024


@pytest.fixture
def prefix():
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def storage(s3_server, prefix):
    from registry.storage.s3 import S3Storage

    return S3Storage(f"s3://{BUCKET}/{prefix}")


@pytest.fixture(scope="module")
def big_data():
    return os.urandom(20 * MiB + 12345)


def keys(client, prefix: str) -> list[str]:
    answer = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    return sorted(o["Key"] for o in answer.get("Contents", []))


def pending_uploads(client, prefix: str) -> list:
    return client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads", [])


def write_in_odd_chunks(writer, data: bytes, step: int = 777_777) -> None:
    for start in range(0, len(data), step):
        writer.write(data[start:start + step])


def test_open_storage_returns_the_s3_backend(s3_server, prefix):
    from registry.storage.s3 import S3Storage

    storage = open_storage(f"s3://{BUCKET}/{prefix}/")
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.url) == (BUCKET, prefix, f"s3://{BUCKET}/{prefix}")


def test_multipart_round_trip(storage, s3_server, prefix, big_data):
    digest = hashlib.sha256(big_data).hexdigest()
    writer = storage.writer()
    write_in_odd_chunks(writer, big_data)
    assert pending_uploads(s3_server, prefix), "a 20 MiB blob should stream as a multipart upload"
    assert not storage.exists(digest)  # invisible until finished
    ref = writer.finish()
    assert (ref.sha256, ref.size, ref.created) == (digest, len(big_data), True)

    final = f"{prefix}/{blob_key(digest)}"
    assert final == f"{prefix}/sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    assert keys(s3_server, prefix) == [final]  # no temporary object left
    assert pending_uploads(s3_server, prefix) == []
    head = s3_server.head_object(Bucket=BUCKET, Key=final)
    assert head["Metadata"] == {"sha256": digest}
    assert head["ContentLength"] == len(big_data)

    assert storage.exists(digest) and storage.size(digest) == len(big_data)
    assert list(storage.iter_digests()) == [digest]
    with storage.open(digest) as stream:
        assert stream.read() == big_data
    with storage.open(digest) as stream:
        assert stream.seekable()
        stream.seek(9 * MiB - 3)
        assert stream.tell() == 9 * MiB - 3
        assert stream.read(100) == big_data[9 * MiB - 3:9 * MiB + 97]
        stream.seek(17)
        assert stream.read(5) == big_data[17:22]
        stream.seek(-10, os.SEEK_END)
        assert stream.read() == big_data[-10:]
        assert stream.read(10) == b""

    # the same bytes again: stored once, nothing left behind
    again = storage.writer()
    write_in_odd_chunks(again, big_data, step=3 * MiB + 1)
    second = again.finish()
    assert (second.sha256, second.created) == (digest, False)
    assert keys(s3_server, prefix) == [final]
    assert pending_uploads(s3_server, prefix) == []

    storage.delete(digest)
    assert not storage.exists(digest) and keys(s3_server, prefix) == []
    storage.delete(digest)  # idempotent


def test_abort_mid_upload_leaves_nothing(storage, s3_server, prefix, big_data):
    writer = storage.writer()
    write_in_odd_chunks(writer, big_data[:10 * MiB])
    assert len(pending_uploads(s3_server, prefix)) == 1
    writer.abort()
    writer.abort()  # safe twice
    assert pending_uploads(s3_server, prefix) == []
    assert keys(s3_server, prefix) == []


def test_put_stream_aborts_when_the_source_fails(storage, s3_server, prefix, big_data):
    class Broken:
        def __init__(self):
            self.sent = 0

        def read(self, n):
            if self.sent >= 9 * MiB:
                raise OSError("client went away")
            self.sent += n
            return big_data[:n]

    with pytest.raises(OSError):
        storage.put_stream(Broken())
    assert pending_uploads(s3_server, prefix) == []
    assert keys(s3_server, prefix) == []


def test_small_blob(storage, s3_server, prefix):
    data = b"labels\n" * 1000
    digest = hashlib.sha256(data).hexdigest()
    writer = storage.writer()
    writer.write(data[:100])
    writer.write(data[100:])
    ref = writer.finish()
    assert (ref.sha256, ref.size, ref.created) == (digest, len(data), True)
    assert pending_uploads(s3_server, prefix) == []
    assert keys(s3_server, prefix) == [f"{prefix}/{blob_key(digest)}"]
    assert s3_server.head_object(Bucket=BUCKET, Key=f"{prefix}/{blob_key(digest)}")["Metadata"] == {"sha256": digest}
    with storage.open(digest) as stream:
        assert stream.read() == data
    assert storage.put_stream(io.BytesIO(data)).created is False
    empty = storage.put_stream(io.BytesIO(b""))
    assert empty.size == 0 and storage.size(empty.sha256) == 0
    with storage.open(empty.sha256) as stream:
        assert stream.read() == b""


def test_missing_blob(storage):
    digest = "0" * 64
    assert not storage.exists(digest)
    with pytest.raises(FileNotFoundError):
        storage.size(digest)
    with pytest.raises(FileNotFoundError):
        storage.open(digest)


def test_materialize_downloads_and_verifies(storage, s3_server, prefix, big_data, tmp_path):
    data = big_data[:6 * MiB + 7]
    ref = storage.put_stream(io.BytesIO(data))
    dest = tmp_path / "model.ckpt.data-00000-of-00001"
    storage.materialize(ref.sha256, dest)
    assert dest.read_bytes() == data and not dest.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]


def test_corrupted_object_is_refused(storage, s3_server, prefix, tmp_path):
    data = b"the real frozen graph" * 5000
    ref = storage.put_stream(io.BytesIO(data))
    key = f"{prefix}/{blob_key(ref.sha256)}"
    s3_server.put_object(Bucket=BUCKET, Key=key, Body=b"X" * len(data), Metadata={"sha256": ref.sha256})
    dest = tmp_path / "frozen.pb"
    with pytest.raises(StorageError, match="corrupt"):
        storage.materialize(ref.sha256, dest)
    assert list(tmp_path.iterdir()) == []

    # an object labelled with another digest is refused by open() too
    s3_server.put_object(Bucket=BUCKET, Key=key, Body=data, Metadata={"sha256": "f" * 64})
    with pytest.raises(StorageError, match="labelled"):
        storage.open(ref.sha256)
    with pytest.raises(StorageError):
        storage.materialize(ref.sha256, dest)
    assert list(tmp_path.iterdir()) == []


def test_missing_bucket_is_a_clear_error(s3_server):
    from registry.storage.s3 import S3Storage

    with pytest.raises(StorageError) as info:
        S3Storage("s3://no-such-registry-bucket/blobs")
    assert "no-such-registry-bucket" in info.value.message
    assert "create it or fix the URL" in info.value.message
    assert info.value.code == "bad_storage_url"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unreachable_endpoint_is_a_clear_error(s3_server):
    from botocore.config import Config

    from registry.storage.s3 import S3Storage

    client = boto3.session.Session().client(
        "s3", endpoint_url=f"http://127.0.0.1:{_free_port()}",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
        S3Storage(f"s3://{BUCKET}/x", client=client)


def test_bad_urls_are_refused(s3_server):
    from registry.storage.s3 import S3Storage

    with pytest.raises(StorageError, match="s3://bucket"):
        S3Storage("s3:///prefix-only")
    with pytest.raises(StorageError) as info:
        S3Storage("s3://Not_A_Valid:Bucket/x")
    assert info.value.code == "bad_storage_url"


# -- bad credentials --------------------------------------------------------------------------
# moto accepts any credentials, so botocore's Stubber makes the backend's own client answer as S3
# answers a bad key pair: a HEAD request gets a bare 403 (no body, so no error code), any other
# request an error document naming InvalidAccessKeyId (unknown key id) or SignatureDoesNotMatch
# (wrong secret).  Each test checks what the registry tells the user to fix.

BAD_KEY_ID = ("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
BAD_SECRET = ("SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
                                       "you provided. Check your key and signing method.")
TO_FIX = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def refuse_head(stub, operation: str) -> None:
    """Queue the answer S3 gives a HEAD request signed with a bad key pair."""
    stub.add_client_error(operation, service_error_code="403", service_message="Forbidden", http_status_code=403)


def names_what_to_fix(message: str) -> bool:
    return all(setting in message for setting in TO_FIX)


def test_bad_credentials_at_start_up_name_the_settings_to_fix(s3_server):
    from registry.storage.s3 import S3Storage, make_client

    client = make_client()
    with Stubber(client) as stub:
        refuse_head(stub, "head_bucket")
        with pytest.raises(StorageError) as info:
            S3Storage(f"s3://{BUCKET}/blobs", client=client)
        stub.assert_no_pending_responses()
    message = info.value.message
    assert message.startswith(f"access to S3 bucket {BUCKET!r} was denied: check AWS_ACCESS_KEY_ID"), message
    assert names_what_to_fix(message) and "does not exist" not in message


@pytest.mark.parametrize("code, text", [BAD_KEY_ID, BAD_SECRET], ids=[BAD_KEY_ID[0], BAD_SECRET[0]])
def test_bad_credentials_on_an_upload_name_the_s3_error_and_the_settings_to_fix(storage, s3_server, prefix,
                                                                                big_data, code, text):
    with Stubber(storage.client) as stub:
        stub.add_client_error("create_multipart_upload", service_error_code=code, service_message=text,
                              http_status_code=403)
        with pytest.raises(StorageError) as info:
            storage.put_stream(io.BytesIO(big_data[:9 * MiB]))  # past one part: a multipart upload
        stub.assert_no_pending_responses()
    message = info.value.message
    assert message.startswith(f"S3 storage s3://{BUCKET} failed uploading a part of a blob: access to bucket "
                              f"{BUCKET!r} was denied ({code}: {text}): check AWS_ACCESS_KEY_ID"), message
    assert names_what_to_fix(message)
    assert keys(s3_server, prefix) == [] and pending_uploads(s3_server, prefix) == []


def test_bad_credentials_on_a_download_name_the_settings_and_leave_no_file(storage, s3_server, prefix, tmp_path):
    ref = storage.put_stream(io.BytesIO(b"the frozen graph" * 1000))
    head = s3_server.head_object(Bucket=BUCKET, Key=f"{prefix}/{blob_key(ref.sha256)}")
    code, text = BAD_SECRET
    with Stubber(storage.client) as stub:  # the key pair was rotated after the blob was stored
        stub.add_response("head_object", {k: head[k] for k in ("ContentLength", "ETag", "Metadata")})
        stub.add_client_error("get_object", service_error_code=code, service_message=text, http_status_code=403)
        with pytest.raises(StorageError) as info:
            storage.materialize(ref.sha256, tmp_path / "frozen.pb")
        stub.assert_no_pending_responses()
    message = info.value.message
    assert f"failed downloading blob {ref.sha256}: access to bucket {BUCKET!r} was denied ({code}: {text})" in message
    assert names_what_to_fix(message)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial download


def test_bad_credentials_fail_readyz_and_a_push_with_503s_naming_the_settings(s3_server, prefix, tmp_path, models):
    from registry.app import create_app

    app = create_app(seed_database(make_settings(tmp_path / "home", storage_url=f"s3://{BUCKET}/{prefix}")))
    app.config["TESTING"] = True
    storage = app.extensions["registry"].storage
    client = app.test_client()
    try:
        with Stubber(storage.client) as stub:
            refuse_head(stub, "head_bucket")
            ready = client.get("/readyz")
            refuse_head(stub, "head_object")  # the push asks whether its blob is stored already
            pushed = push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
            stub.assert_no_pending_responses()
        assert ready.status_code == 503
        checks = ready.get_json()["checks"]
        assert checks["database"] == "ok"
        assert checks["storage"].startswith(f"error: S3 storage s3://{BUCKET} failed checking the bucket: access "
                                            f"to bucket {BUCKET!r} was denied (403: Forbidden)"), checks
        assert names_what_to_fix(checks["storage"])
        assert pushed.status_code == 503
        error = pushed.get_json()["error"]
        assert error["code"] == "storage_error" and names_what_to_fix(error["message"]), error
        assert f"access to bucket {BUCKET!r} was denied" in error["message"]
        assert client.get("/api/v1/models/cnn/versions/1").status_code == 404  # nothing was published
        assert keys(s3_server, prefix) == []
        assert client.get("/readyz").status_code == 200  # the real client again
    finally:
        app.extensions["registry"].db.dispose()


def test_presigned_url_downloads_the_blob(storage):
    import urllib.request

    data = b"presigned" * 100
    ref = storage.put_stream(io.BytesIO(data))
    url = storage.presigned_url(ref.sha256, "cnn-v1.pb", expires=60)
    with urllib.request.urlopen(url) as answer:
        assert answer.read() == data
        assert 'filename="cnn-v1.pb"' in answer.headers["Content-Disposition"]


@pytest.mark.slow
def test_registry_end_to_end_on_s3(s3_server, prefix, tmp_path, models):
    from registry.app import create_app
    from registry.jobs.worker import Worker

    settings = seed_database(make_settings(tmp_path / "home", storage_url=f"s3://{BUCKET}/{prefix}"))
    app = create_app(settings)
    app.config["TESTING"] = True
    registry = app.extensions["registry"]
    try:
        client = app.test_client()
        assert push(client, "cnn", frozen_form(models["frozen"].frozen_graph)).status_code == 202
        assert Worker(settings, registry.db, registry.storage).run_once() is True
        record = client.get("/api/v1/models/cnn/versions/1").get_json()
        assert record["status"] == "ready", record["status_message"]

        full = client.get("/api/v1/models/cnn/versions/1/frozen.pb")
        assert full.status_code == 200
        etag = full.headers["ETag"].strip('"')
        assert hashlib.sha256(full.data).hexdigest() == etag == record["frozen"]["sha256"]
        assert full.headers["X-Content-SHA256"] == etag

        part = client.get("/api/v1/models/cnn/versions/1/frozen.pb", headers={"Range": "bytes=10-99"})
        assert part.status_code == 206
        assert part.data == full.data[10:100]
        assert part.headers["Content-Range"] == f"bytes 10-99/{len(full.data)}"
        assert part.headers["ETag"] == full.headers["ETag"]

        stored = keys(s3_server, prefix)
        assert f"{prefix}/{blob_key(etag)}" in stored

        registry.settings = dataclasses.replace(settings, s3_presign=True)
        moved = client.get("/api/v1/models/cnn/versions/1/frozen.pb")
        assert moved.status_code == 302 and moved.headers["ETag"].strip('"') == etag
        assert requests.get(moved.headers["Location"], timeout=10).content == full.data
        assert client.get("/api/v1/models/cnn/versions/1/frozen.pb",
                          headers={"If-None-Match": f'"{etag}"'}).status_code == 304
        assert not [k for k in stored if "/uploads/" in k]
        assert not (tmp_path / "home" / "blobs").exists()
    finally:
        registry.stop_workers.set()
        registry.db.dispose()
