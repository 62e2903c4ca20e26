"""An uploaded part on its way into blob storage, and the push it belongs to.

Each uploaded file streams straight into a blob writer while a running sha256
and a protobuf wire scan look at it; nothing is held whole in memory, and a
part's file is closed as soon as the part ends.  What the checks
(``registry.uploads.checks``) need of its bytes is kept as they pass: the
head, the tail and the wire scan; an archive is also kept as a local file.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from registry.entities import SAVED_MODEL_SOURCE
from registry.errors import StorageError
from registry.storage import BlobRef, BlobWriter
from registry.uploads.protowire import WireScanner

FILE_FIELDS = ("meta", "index", "data", "graph", "frozen", "saved_model", "keras", "labels")
# Form fields recorded under another version file role ("saved_model" is the SavedModel built for TF Serving).
ROLE_OF_FIELD = {"saved_model": SAVED_MODEL_SOURCE}
GRAPH_FIELDS = ("meta", "graph", "frozen")  # the parts whose protobuf wire format is checked
ARCHIVE_FIELDS = ("saved_model", "keras")  # the parts whose archive is checked before publishing
# The parts read whole as a local file before publishing: archives, and the inference graph (whether it
# holds any variable for the checkpoint beside it, see ``registry.uploads.checks.check_checkpoint_used``).
LOCAL_FIELDS = (*ARCHIVE_FIELDS, "graph")
HEAD_BYTES = 4096


class UploadSink:
    """One uploaded part on its way into blob storage, with what we learn from
    its bytes as they pass: head, tail and (for graph parts) the wire scan.

    ``keep_local`` parts (archives) are checked as a local file before they are
    published: the writer's own staging file, or a spooled copy where the storage
    keeps none (S3).
    """

    def __init__(self, writer: BlobWriter, *, scan: bool = True, keep_local: bool = False) -> None:
        self.writer = writer
        self.scanner = WireScanner() if scan else None
        self.head = bytearray()
        self.tail = b""
        self.ref: BlobRef | None = None
        self.finished = False
        self._spool = None
        if keep_local and not writer.keeps_local_file:
            self._spool = tempfile.NamedTemporaryFile(prefix="registry-upload-", delete=False)

    def write(self, data: bytes) -> int:
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self.tail = (self.tail + bytes(data[-16:]))[-16:]
        if self.scanner is not None:
            self.scanner.feed(data)
        if self._spool is not None:
            try:
                self._spool.write(data)
            except OSError as exc:
                raise StorageError(f"spooling an uploaded archive to {self._spool.name} for its check failed "
                                   f"({exc.strerror or exc}): free space in the temporary folder") from exc
        return self.writer.write(data)

    def end(self) -> None:
        """The part is complete: close the files it held open (its bytes stay until publish or abort)."""
        self.writer.end()
        if self._spool is not None and not self._spool.closed:
            self._spool.close()

    def local_path(self) -> Path:
        """The part's bytes as a local file, before they are published (``keep_local`` parts)."""
        self.end()
        path = Path(self._spool.name) if self._spool is not None else self.writer.local_path()
        if path is None:
            raise RuntimeError("this upload part was not received with keep_local=True")
        return path

    def kept_path(self) -> Path | None:
        """The part's bytes as a local file if it has one before publishing (None: it was received without
        ``keep_local`` on storage that stages elsewhere), for a check that may be skipped."""
        self.end()
        return Path(self._spool.name) if self._spool is not None else self.writer.local_path()

    def _drop_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            Path(self._spool.name).unlink(missing_ok=True)
            self._spool = None

    @property
    def size(self) -> int:
        return self.writer.size

    def looks_like_text(self) -> bool:
        head = bytes(self.head).lstrip()
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            # The head may end inside a multi-byte character.
            if exc.start < len(head) - 4:
                return False
        return bool(head) and (head[:1].isalpha() or head[:1] == b"#")

    def publish(self) -> BlobRef:
        self._drop_spool()
        self.ref = self.writer.finish()
        self.finished = True
        return self.ref

    def abort(self) -> None:
        self._drop_spool()
        if not self.finished:
            self.writer.abort()
            self.finished = True


@dataclass
class ReceivedFile:
    field: str
    filename: str
    sink: UploadSink


@dataclass
class PushRequest:
    files: list[ReceivedFile]
    output_nodes: list[str] = field(default_factory=list)
    input_nodes: list[str] = field(default_factory=list)
    description: str = ""
    preprocessing: dict = field(default_factory=dict)
    signature: str = ""  # for a pushed SavedModel: the signature to freeze (default serving_default)
    signatures: list[dict] = field(default_factory=list)  # declared with a checkpoint or frozen-graph push
    tags: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)  # source_commit, run_url, dataset
    version: int | None = None  # the version number asked for (TF Serving's folder number); None: the next one
