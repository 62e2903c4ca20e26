"""Blobs in a local folder: the embedded default."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from registry.storage import BlobRef, BlobStorage, BlobWriter, blob_key


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
        if created:
            os.replace(self._tmp_path, final)
        else:
            self._tmp_path.unlink(missing_ok=True)
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
