"""Blobs in a local folder: the embedded default."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator

from registry.errors import StorageError
from registry.storage import BlobInfo, BlobRef, BlobStorage, BlobWriter, TemporaryUpload, blob_key


def _mtime(stat: os.stat_result) -> datetime:
    return datetime.fromtimestamp(stat.st_mtime, timezone.utc)


class LocalBlobWriter(BlobWriter):
    def __init__(self, storage: "LocalStorage") -> None:
        super().__init__()
        self._storage = storage
        fd, name = tempfile.mkstemp(dir=storage.staging, prefix="upload-")
        self._tmp_path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._done = False

    def _write(self, data: bytes) -> None:
        self._file.write(data)

    def finish(self) -> BlobRef:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
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
        self._done = True
        return BlobRef(digest, self.size, created)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
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
