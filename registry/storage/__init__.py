"""Blob storage: content-addressed by sha256, written as streams.

* ``interfaces.py``: the blob interface (``BlobStorage``, ``BlobWriter``), keys and references;
* ``local.py``: a local folder (the embedded default);
* ``s3.py``: an S3 bucket (multipart while hashing; boto3 loads only when it is used).

Blobs are addressed ``sha256/<d[:2]>/<d[2:4]>/<digest>``; see ``interfaces.py``
for how writers publish a blob only when it is complete.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from registry.errors import InvalidRequest
from registry.storage.interfaces import (
    CHUNK_SIZE,
    BlobInfo,
    BlobRef,
    BlobStorage,
    BlobWriter,
    TemporaryUpload,
    blob_key,
    open_regular,
)
from registry.storage.local import LocalStorage

__all__ = [
    "CHUNK_SIZE", "BlobInfo", "BlobRef", "BlobStorage", "BlobWriter", "LocalStorage", "TemporaryUpload", "blob_key",
    "open_regular", "open_storage",
]


def open_storage(url: str) -> BlobStorage:
    """The storage backend a ``REGISTRY_STORAGE`` URL names."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else url
        return LocalStorage(Path(path))
    if parsed.scheme == "s3":
        from registry.storage.s3 import S3Storage  # boto3 loads only where S3 is used

        return S3Storage(url)
    raise InvalidRequest(
        f"unsupported storage URL {url!r}: use file:///path/to/folder or s3://bucket/prefix",
        code="bad_storage_url",
    )
