"""Blobs in a local folder: the embedded default."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator

from registry.errors import StorageError
from registry.storage.interfaces import BlobInfo, BlobRef, BlobStorage, BlobWriter, TemporaryUpload, blob_key


def _mtime(stat: os.stat_result) -> datetime:
    return datetime.fromtimestamp(stat.st_mtime, timezone.utc)


def _write_failed(root: Path, exc: OSError) -> StorageError:
    """A StorageError (503) saying why the blob folder took no more bytes and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"the blob folder {root} is full ({exc.strerror}): free space there or raise its "
                            "quota", code="storage_full")
    if exc.errno == errno.EROFS:
        return StorageError(f"the blob folder {root} is on a read-only file system: make it writable",
                            code="storage_read_only")
    return StorageError(f"writing to the blob folder {root} failed ({exc.strerror or exc})")


class LocalBlobWriter(BlobWriter):
    """Writes to a temporary file in ``.staging`` and renames it into place.  A write that
    fails (disk full, read-only) removes the temporary file at once and raises StorageError."""

    keeps_local_file = True

    def __init__(self, storage: "LocalStorage") -> None:
        super().__init__()
        self._storage = storage
        try:
            fd, name = tempfile.mkstemp(dir=storage.staging, prefix="upload-")
        except OSError as exc:
            raise _write_failed(storage.root, exc) from exc
        self._tmp_path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._done = False

    def _write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise _write_failed(self._storage.root, exc) from exc

    def end(self) -> None:
        if self._done or self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            self.abort()
            raise _write_failed(self._storage.root, exc) from exc

    def local_path(self) -> Path | None:
        self.end()
        return None if self._done else self._tmp_path

    def finish(self) -> BlobRef:
        self.end()
        try:
            digest = self.hexdigest
            final = self._storage.path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            created = not final.exists()
            if not created:
                try:
                    os.utime(final)  # young again: the garbage collector leaves it alone for its grace period
                    self._tmp_path.unlink(missing_ok=True)
                except FileNotFoundError:  # collected just now: store ours
                    created = True
            if created:
                os.replace(self._tmp_path, final)
        except OSError as exc:
            self.abort()
            raise _write_failed(self._storage.root, exc) from exc
        self._done = True
        return BlobRef(digest, self.size, created)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):  # a full disk fails the flush that close() does
            self._file.close()
        self._tmp_path.unlink(missing_ok=True)


class LocalStorage(BlobStorage):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = self.root.as_uri()
        self.staging = self.root / ".staging"
        self.staging.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    def writer(self) -> LocalBlobWriter:
        return LocalBlobWriter(self)

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def materialize(self, digest: str, dest: Path) -> None:
        source = self.path(digest)
        if not source.is_file():
            raise FileNotFoundError(f"blob {digest} is missing from {self.root}")
        os.symlink(source, dest)

    def iter_digests(self) -> Iterator[str]:
        base = self.root / "sha256"
        if base.is_dir():
            for path in base.glob("*/*/*"):
                if path.is_file():
                    yield path.name

    def iter_blobs(self) -> Iterator[BlobInfo]:
        base = self.root / "sha256"
        if base.is_dir():
            for path in base.glob("*/*/*"):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                if path.is_file():
                    yield BlobInfo(path.name, stat.st_size, _mtime(stat))

    def blob_info(self, digest: str) -> BlobInfo:
        stat = self.path(digest).stat()
        return BlobInfo(digest, stat.st_size, _mtime(stat))

    def iter_temporary(self) -> Iterator[TemporaryUpload]:
        for path in self.staging.iterdir():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            yield TemporaryUpload(path.name, stat.st_size, _mtime(stat))

    def delete_temporary(self, item: TemporaryUpload) -> None:
        (self.staging / item.key).unlink(missing_ok=True)

    def check(self) -> None:
        if not self.root.is_dir() or not os.access(self.staging, os.W_OK):
            raise StorageError(f"the blob folder {self.root} is missing or not writable")
