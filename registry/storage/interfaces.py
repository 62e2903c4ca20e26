"""Blob storage: content-addressed by sha256, written as streams.

Blobs are addressed ``sha256/<d[:2]>/<d[2:4]>/<digest>``.  A writer hashes what
it is given while it writes to a temporary name, and the blob appears under its
final key only in :meth:`BlobWriter.finish`, so a reader never sees half a blob
and an interrupted upload leaves nothing behind once aborted.

Storing bytes that are already stored refreshes the blob's modification time:
the garbage collector (``registry.jobs.gc``) only takes unreferenced blobs older than
its grace period, so a blob a push has just published (or re-used) is safe until
the push's version row is committed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Iterator


CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int
    created: bool = True  # False when an identical blob was already stored


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob as the garbage collector sees it."""

    sha256: str
    size: int
    modified: datetime  # timezone-aware UTC: last written (or re-published)


@dataclass(frozen=True)
class TemporaryUpload:
    """Something an upload in progress (or one killed mid-way) left: a temporary
    file or key, or an unfinished S3 multipart upload (``upload_id``)."""

    key: str
    size: int
    modified: datetime  # timezone-aware UTC: last time bytes arrived
    upload_id: str | None = None


def blob_key(digest: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"


class BlobWriter(ABC):
    """A blob being written: ``write`` chunks, then ``finish`` or ``abort``."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._write(data)
        return len(data)

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    # Whether local_path() gives the unpublished bytes as a local file (else an upload check spools them).
    keeps_local_file = False

    def end(self) -> None:
        """No more bytes will come: release what writing holds open (a file handle) and keep
        the bytes for :meth:`finish` or :meth:`abort`.  A push ends each part as it closes,
        so however many parts it has, it holds one open file at a time."""

    def local_path(self) -> Path | None:
        """The unpublished bytes as a local file, after :meth:`end`, where the backend keeps
        them in one (see ``keeps_local_file``): an upload check reads an archive there
        before anything of the push is published."""
        return None

    @abstractmethod
    def finish(self) -> BlobRef:
        """Publish the blob under its content key and return its reference."""

    @abstractmethod
    def abort(self) -> None:
        """Drop everything written so far; safe to call more than once."""


class BlobStorage(ABC):
    """Where blobs live.  Implementations: local folder (default), S3."""

    url: str

    @abstractmethod
    def writer(self) -> BlobWriter: ...

    @abstractmethod
    def open(self, digest: str) -> BinaryIO:
        """A readable, seekable stream of the blob; raises FileNotFoundError."""

    @abstractmethod
    def size(self, digest: str) -> int: ...

    @abstractmethod
    def exists(self, digest: str) -> bool: ...

    @abstractmethod
    def delete(self, digest: str) -> None: ...

    @abstractmethod
    def materialize(self, digest: str, dest: Path) -> None:
        """Make the blob readable as the local file ``dest`` (for TensorFlow,
        which reads checkpoints by path)."""

    @abstractmethod
    def iter_digests(self) -> Iterator[str]: ...

    @abstractmethod
    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every finished blob with its size and modification time."""

    @abstractmethod
    def blob_info(self, digest: str) -> BlobInfo:
        """One blob's size and modification time; raises FileNotFoundError."""

    @abstractmethod
    def iter_temporary(self) -> Iterator[TemporaryUpload]:
        """Temporary files, keys and unfinished multipart uploads of uploads in progress or abandoned."""

    @abstractmethod
    def delete_temporary(self, item: TemporaryUpload) -> None: ...

    @abstractmethod
    def check(self) -> None:
        """A cheap call that fails (StorageError) when the storage cannot be used: for /readyz."""

    def put_stream(self, stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> BlobRef:
        """Store everything read from ``stream``; never holds it whole in memory."""
        writer = self.writer()
        try:
            while chunk := stream.read(chunk_size):
                writer.write(chunk)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    def put_file(self, path: Path) -> BlobRef:
        """Store the regular file at ``path`` (see :func:`open_regular`)."""
        with open_regular(path) as stream:
            return self.put_stream(stream)


def open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading, refusing a symlink (it could point at a secret), a FIFO (it
    would block) or anything but a regular file: converter outputs are left by a sandboxed
    child that may have put any of these in their place."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
