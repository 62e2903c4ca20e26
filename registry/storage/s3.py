"""Blobs in an S3 bucket (or anything that speaks the S3 API: MinIO, Ceph, moto).

Chosen with ``REGISTRY_STORAGE=s3://bucket/prefix``.  Credentials, region and
endpoint come from the standard AWS configuration (environment variables
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, shared
config files, instance roles), read by boto3 itself.

Layout: ``<prefix>/sha256/<d[:2]>/<d[2:4]>/<digest>`` for blobs (each carrying
the user metadata ``sha256=<digest>``) and ``<prefix>/uploads/<uuid>`` for
uploads in progress.  A blob smaller than one part goes up with a single
``put_object`` straight to its final key once its digest is known; a larger one
streams as a multipart upload to a temporary key and is copied to its final key
in :meth:`S3BlobWriter.finish`, so the final key only ever holds a complete blob.

Over 400 lines (about 540) on purpose: the backend, its streaming multipart
writer and its ranged reader share one client and one translation of S3's
errors into ``StorageError``, and change together.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
)

from registry.errors import StorageError
from registry.storage.interfaces import BlobInfo, BlobRef, BlobStorage, BlobWriter, TemporaryUpload, blob_key

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024  # S3 wants >= 5 MiB for every part but the last
COPY_LIMIT = 5 * 1024**3  # copy_object handles up to 5 GiB; beyond, multipart copy
DOWNLOAD_CHUNK = 1024 * 1024
DOWNLOAD_RESUMES = 3
S3_ERRORS = (ClientError, BotoCoreError)

_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket", "NoSuchUpload"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "AllAccessDisabled"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_missing(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and (
        _code(exc) in _NOT_FOUND
        or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message') or exc}"
    return str(exc) or type(exc).__name__


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(
            f"bad S3 storage URL {url!r}: write it as s3://bucket or s3://bucket/prefix",
            code="bad_storage_url",
        )
    return parsed.netloc, parsed.path.strip("/")


class S3BlobWriter(BlobWriter):
    """Hashes while it uploads; at most one part (plus one incoming chunk) in memory."""

    def __init__(self, storage: "S3Storage") -> None:
        super().__init__()
        self._storage = storage
        self._client = storage.client
        self._bucket = storage.bucket
        self._tmp_key = storage.key_for_upload(uuid.uuid4().hex)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []
        self._tmp_exists = False  # the multipart upload was completed into the temporary key
        self._done = False

    # -- writing -----------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self._done:
            raise StorageError("this blob writer is already finished or aborted")
        self._buffer += data
        while len(self._buffer) >= PART_SIZE:
            part = bytes(self._buffer[:PART_SIZE])
            del self._buffer[:PART_SIZE]
            self._upload_part(part)

    def _upload_part(self, part: bytes) -> None:
        try:
            if self._upload_id is None:
                created = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._tmp_key)
                self._upload_id = created["UploadId"]
            number = len(self._parts) + 1
            answer = self._client.upload_part(
                Bucket=self._bucket, Key=self._tmp_key, UploadId=self._upload_id,
                PartNumber=number, Body=part,
            )
        except S3_ERRORS as exc:
            raise self._storage.error("uploading a part of a blob", exc) from exc
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    # -- publishing --------------------------------------------------------
    def finish(self) -> BlobRef:
        if self._done:
            raise StorageError("this blob writer is already finished or aborted")
        digest = self.hexdigest
        final = self._storage.key(digest)
        try:
            if self._upload_id is None:
                created = self._finish_small(digest, final)
            else:
                created = self._finish_multipart(digest, final)
        except S3_ERRORS as exc:
            raise self._storage.error(f"storing blob {digest}", exc) from exc
        self._done = True
        self._buffer = bytearray()
        return BlobRef(digest, self.size, created)

    def _finish_small(self, digest: str, final: str) -> bool:
        created = not self._storage.exists(digest)
        # One request, straight to the final key: S3 shows an object only once it is whole.
        # Written even when it exists, so that its LastModified is fresh for the garbage collector.
        self._client.put_object(
            Bucket=self._bucket, Key=final, Body=bytes(self._buffer), Metadata={"sha256": digest},
        )
        return created

    def _finish_multipart(self, digest: str, final: str) -> bool:
        if self._buffer:
            part = bytes(self._buffer)
            self._buffer = bytearray()
            self._upload_part(part)
        self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self._tmp_key, UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._upload_id = None
        self._tmp_exists = True
        created = not self._storage.exists(digest)
        # Copied even when it exists (same bytes), so that its LastModified is fresh for the garbage collector.
        source = {"Bucket": self._bucket, "Key": self._tmp_key}
        if self.size <= COPY_LIMIT:
            self._client.copy_object(
                Bucket=self._bucket, Key=final, CopySource=source,
                Metadata={"sha256": digest}, MetadataDirective="REPLACE",
            )
        else:  # managed copy: multipart UploadPartCopy, server side
            self._client.copy(source, self._bucket, final, ExtraArgs={"Metadata": {"sha256": digest}})
        self._delete_tmp()
        return created

    def _delete_tmp(self) -> None:
        self._client.delete_object(Bucket=self._bucket, Key=self._tmp_key)
        self._tmp_exists = False

    # -- giving up ---------------------------------------------------------
    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        try:
            if self._upload_id is not None:
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._tmp_key, UploadId=self._upload_id,
                )
                self._upload_id = None
            if self._tmp_exists:
                self._delete_tmp()
        except S3_ERRORS as exc:  # never hide the error that made the caller abort
            log.warning(
                "could not clean up the aborted upload s3://%s/%s (%s); a bucket lifecycle rule "
                "for %s should remove it", self._bucket, self._tmp_key, _describe(exc),
                self._storage.key_for_upload(""),
            )


class S3RangeReader(io.RawIOBase):
    """A read-only, seekable view of one S3 object, fetched lazily by ranged GETs.

    Sequential reads stream through one GET from the current position to the
    end of the object; a seek drops the open response and the next read starts
    a new range there.
    """

    def __init__(self, storage: "S3Storage", key: str, size: int, etag: str | None = None) -> None:
        super().__init__()
        self._storage = storage
        self._key = key
        self._size = size
        self._etag = etag
        self._pos = 0
        self._body = None  # the open response body
        self._body_end = 0  # offset just past the end of the open response's range

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise ValueError("negative seek position")
        if target != self._pos:
            self._drop_body()
            self._pos = target
        return self._pos

    def readinto(self, buffer) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        if self._body is None or self._pos >= self._body_end:
            self._open_body()
        want = min(want, self._body_end - self._pos)
        try:
            data = self._body.read(want)
        except S3_ERRORS as exc:
            self._drop_body()
            raise self._storage.error(f"reading {self._key}", exc) from exc
        if not data:
            self._drop_body()
            raise StorageError(f"s3://{self._storage.bucket}/{self._key} ended early at byte {self._pos}")
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _open_body(self) -> None:
        self._drop_body()
        end = self._size
        extra = {"IfMatch": self._etag} if self._etag else {}
        try:
            answer = self._storage.client.get_object(
                Bucket=self._storage.bucket, Key=self._key, Range=f"bytes={self._pos}-{end - 1}", **extra,
            )
        except S3_ERRORS as exc:
            raise self._storage.error(f"reading {self._key}", exc) from exc
        self._body = answer["Body"]
        self._body_end = end

    def _drop_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # pragma: no cover - closing a dead socket
                pass
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()


def make_client():
    """The S3 client every part of the registry uses (blobs, the TF Serving export): the standard
    AWS configuration, with retries and timeouts suited to big objects."""
    return boto3.session.Session().client(
        "s3",
        config=Config(
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        ),
    )


class S3Storage(BlobStorage):
    def __init__(self, url: str, *, client=None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.client = client or make_client()
        self._check_bucket()

    # -- keys --------------------------------------------------------------
    def _join(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def key(self, digest: str) -> str:
        return self._join(blob_key(digest))

    def key_for_upload(self, name: str) -> str:
        return self._join(f"uploads/{name}")

    # -- errors ------------------------------------------------------------
    def error(self, doing: str, exc: BaseException) -> StorageError:
        """A StorageError saying what failed and what to check."""
        where = f"s3://{self.bucket}"
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None)
        if isinstance(exc, NoCredentialsError):
            hint = ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    "(or AWS_PROFILE, or give the machine an IAM role)")
        elif isinstance(exc, EndpointConnectionError):
            hint = (f"cannot reach the S3 endpoint {endpoint}: check AWS_ENDPOINT_URL / "
                    "AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION and the network")
        elif isinstance(exc, ClientError) and _code(exc) in ("NoSuchBucket",):
            hint = f"the bucket {self.bucket!r} does not exist: create it or fix REGISTRY_STORAGE"
        elif isinstance(exc, ClientError) and _code(exc) in _DENIED:
            hint = (f"access to bucket {self.bucket!r} was denied ({_describe(exc)}): check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or AWS_PROFILE, "
                    "and that the policy allows s3:GetObject, PutObject, DeleteObject and ListBucket")
        else:
            hint = _describe(exc)
        return StorageError(f"S3 storage {where} failed {doing}: {hint}")

    def _check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ParamValidationError as exc:
            raise StorageError(
                f"bad S3 storage URL {self.url!r}: {exc}", code="bad_storage_url",
            ) from None
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if _is_missing(exc):
                raise StorageError(
                    f"S3 bucket {self.bucket!r} (REGISTRY_STORAGE={self.url}) does not exist: "
                    "create it or fix the URL",
                    code="bad_storage_url",
                ) from None
            if status == 403 or _code(exc) in _DENIED:
                raise StorageError(
                    f"access to S3 bucket {self.bucket!r} was denied: check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket policy",
                ) from None
            raise self.error("checking the bucket", exc) from None
        except BotoCoreError as exc:
            raise self.error("checking the bucket", exc) from None

    # -- BlobStorage -------------------------------------------------------
    def writer(self) -> S3BlobWriter:
        return S3BlobWriter(self)

    def _head(self, digest: str) -> dict:
        key = self.key(digest)
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"blob {digest} is missing from {self.url}") from None
            raise self.error(f"looking up blob {digest}", exc) from exc
        except BotoCoreError as exc:
            raise self.error(f"looking up blob {digest}", exc) from exc

    def _checked_head(self, digest: str) -> dict:
        head = self._head(digest)
        stored = head.get("Metadata", {}).get("sha256")
        if stored != digest:
            raise StorageError(
                f"s3://{self.bucket}/{self.key(digest)} is labelled sha256={stored!r}, not {digest}: "
                "the object was replaced outside the registry",
                code="blob_corrupt",
            )
        return head

    def open(self, digest: str) -> BinaryIO:
        head = self._checked_head(digest)
        raw = S3RangeReader(self, self.key(digest), int(head["ContentLength"]), head.get("ETag"))
        return io.BufferedReader(raw, buffer_size=256 * 1024)  # type: ignore[return-value]

    def size(self, digest: str) -> int:
        return int(self._head(digest)["ContentLength"])

    def exists(self, digest: str) -> bool:
        try:
            self._head(digest)
        except FileNotFoundError:
            return False
        return True

    def delete(self, digest: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))
        except S3_ERRORS as exc:
            if not _is_missing(exc):
                raise self.error(f"deleting blob {digest}", exc) from exc

    def materialize(self, digest: str, dest: Path) -> None:
        """Download to ``dest``, hashing on the way; ``dest`` appears only if the sha256 matches."""
        dest = Path(dest)
        head = self._checked_head(digest)
        size = int(head["ContentLength"])
        partial = dest.with_name(f".{dest.name}.part-{uuid.uuid4().hex[:8]}")
        hasher = hashlib.sha256()
        written = 0
        resumes = 0
        try:
            with open(partial, "wb") as out:
                while written < size:
                    try:
                        answer = self.client.get_object(
                            Bucket=self.bucket, Key=self.key(digest),
                            Range=f"bytes={written}-", IfMatch=head["ETag"],
                        ) if written else self.client.get_object(
                            Bucket=self.bucket, Key=self.key(digest), IfMatch=head["ETag"],
                        )
                        body = answer["Body"]
                        try:
                            while chunk := body.read(DOWNLOAD_CHUNK):
                                hasher.update(chunk)
                                out.write(chunk)
                                written += len(chunk)
                        finally:
                            body.close()
                    except BotoCoreError as exc:  # connection dropped mid-body: resume where it stopped
                        resumes += 1
                        if resumes > DOWNLOAD_RESUMES:
                            raise self.error(f"downloading blob {digest}", exc) from exc
                        log.warning("resuming the download of %s at byte %d: %s", digest, written, exc)
                        continue
                    except ClientError as exc:
                        raise self.error(f"downloading blob {digest}", exc) from exc
                    if written < size:
                        resumes += 1
                        if resumes > DOWNLOAD_RESUMES:
                            raise StorageError(f"download of blob {digest} stopped at byte {written} of {size}")
                out.flush()
                os.fsync(out.fileno())
            if written != size or hasher.hexdigest() != digest:
                raise StorageError(
                    f"s3://{self.bucket}/{self.key(digest)} is corrupt: its content hashes to "
                    f"{hasher.hexdigest()} ({written} bytes), not {digest}; restore it from a backup "
                    "or push the version again",
                    code="blob_corrupt",
                )
            os.replace(partial, dest)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def iter_digests(self) -> Iterator[str]:
        return (blob.sha256 for blob in self.iter_blobs())

    def iter_blobs(self) -> Iterator[BlobInfo]:
        base = self._join("sha256/")
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    try:
                        if self.key(name) != obj["Key"]:
                            continue
                    except ValueError:
                        continue
                    yield BlobInfo(name, int(obj["Size"]), obj["LastModified"])
        except S3_ERRORS as exc:
            raise self.error("listing blobs", exc) from exc

    def blob_info(self, digest: str) -> BlobInfo:
        head = self._head(digest)
        return BlobInfo(digest, int(head["ContentLength"]), head["LastModified"])

    def iter_temporary(self) -> Iterator[TemporaryUpload]:
        prefix = self.key_for_upload("")
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield TemporaryUpload(obj["Key"], int(obj["Size"]), obj["LastModified"])
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    # An upload still receiving parts is young by its newest part, however old it is.
                    parts = self.client.list_parts(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
                    modified = max([upload["Initiated"], *(p["LastModified"] for p in parts)])
                    yield TemporaryUpload(upload["Key"], sum(int(p["Size"]) for p in parts), modified,
                                          upload_id=upload["UploadId"])
        except S3_ERRORS as exc:
            raise self.error("listing temporary uploads", exc) from exc

    def delete_temporary(self, item: TemporaryUpload) -> None:
        try:
            if item.upload_id is not None:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=item.key, UploadId=item.upload_id)
            else:
                self.client.delete_object(Bucket=self.bucket, Key=item.key)
        except S3_ERRORS as exc:
            if not _is_missing(exc):
                raise self.error(f"removing the temporary upload {item.key}", exc) from exc

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except S3_ERRORS as exc:
            raise self.error("checking the bucket", exc) from exc

    # -- direct downloads --------------------------------------------------
    def presigned_url(self, digest: str, filename: str, expires: int = 300,
                      content_type: str | None = None) -> str:
        """A time-limited URL the client can GET the blob from directly."""
        params = {
            "Bucket": self.bucket,
            "Key": self.key(digest),
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
        }
        if content_type:
            params["ResponseContentType"] = content_type
        try:
            return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)
        except S3_ERRORS as exc:
            raise self.error(f"signing a URL for blob {digest}", exc) from exc
