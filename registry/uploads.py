"""Pushing a version: receive untrusted files as streams, check them, register them.

Each uploaded file streams straight into a blob writer while a running sha256
and a protobuf wire scan look at it; nothing is held whole in memory, and a
part's file is closed as soon as the part ends.  Every check (the archive check
of a SavedModel or Keras upload included) runs on the unpublished bytes, so a
refused push aborts its writers and leaves nothing behind.

Once published, blobs are never deleted by the push: identical bytes are one
blob, and another push in flight may have just published the same bytes and
not committed its version yet.  Should a push fail after publishing (the
database refuses its version), what it published is left to the garbage
collector (``registry.gc``), which deletes only blobs that are unreferenced
and older than its grace period, checking both again just before.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from dataclasses import dataclass, field

from registry import catalog
from registry.audit import SYSTEM, Actor
from registry.db import Database
from registry.archives import ArchiveLimits, check_archive, check_saved_model_archive
from registry.entities import (
    SAVED_MODEL_SOURCE,
    SOURCE_FROZEN,
    SOURCE_GRAPH,
    SOURCE_KERAS,
    SOURCE_META,
    SOURCE_SAVED_MODEL,
    NewFile,
    VersionInfo,
)
from registry.errors import InvalidUpload, StorageError
from registry.protowire import GRAPH_DEF_FIELDS, META_GRAPH_DEF_FIELDS, WireScanner
from registry.storage import BlobRef, BlobStorage, BlobWriter

log = logging.getLogger(__name__)

INDEX_MAGIC = bytes.fromhex("57fb808b247547db")  # TensorBundle/LevelDB table footer, little-endian
DATA_SHARD_RE = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/>]*(:\d+)?$")
FILE_FIELDS = ("meta", "index", "data", "graph", "frozen", "saved_model", "keras", "labels")
# Form fields recorded under another version file role ("saved_model" is the SavedModel built for TF Serving).
ROLE_OF_FIELD = {"saved_model": SAVED_MODEL_SOURCE}
ZIP_MAGIC = b"PK\x03\x04"
GZIP_MAGIC = b"\x1f\x8b"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
SIGNATURE_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")
GRAPH_FIELDS = ("meta", "graph", "frozen")  # the parts whose protobuf wire format is checked
ARCHIVE_FIELDS = ("saved_model", "keras")  # the parts whose archive is checked before publishing
MAX_LABELS_BYTES = 16 * 1024 * 1024
MAX_FILENAME_LENGTH = 255  # what the version_files table keeps
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


def parse_node_list(value: str | None, kind: str) -> list[str]:
    names = [part.strip() for part in (value or "").split(",") if part.strip()]
    for name in names:
        if not NODE_NAME_RE.match(name):
            raise InvalidUpload(
                f"{kind} {name!r} is not a valid TensorFlow node name: pass comma-separated names "
                "such as InceptionV3/Predictions/Reshape_1",
                code="invalid_node_name",
            )
    return names


def _by_field(files: Iterable[ReceivedFile]) -> dict[str, list[ReceivedFile]]:
    out: dict[str, list[ReceivedFile]] = {}
    for f in files:
        if f.field not in FILE_FIELDS:
            raise InvalidUpload(
                f"unknown file field {f.field!r}: send meta, index, data (repeatable), graph, frozen, "
                "saved_model, keras or labels",
                code="unknown_field",
            )
        if len(f.filename) > MAX_FILENAME_LENGTH:
            raise InvalidUpload(f"the {f.field!r} file's name is longer than {MAX_FILENAME_LENGTH} characters "
                                f"({f.filename[:40]!r}...): rename it", code="invalid_filename")
        out.setdefault(f.field, []).append(f)
    for name, items in out.items():
        if name != "data" and len(items) > 1:
            raise InvalidUpload(f"send one {name!r} file, not {len(items)}", code="duplicate_field")
    return out


def _check_not_empty(f: ReceivedFile) -> None:
    if f.sink.size == 0:
        raise InvalidUpload(
            f"the {f.field!r} file {f.filename!r} is empty: upload the real file", code="empty_file"
        )


def _check_graph(f: ReceivedFile, what: str) -> None:
    if f.field == "graph" and f.sink.looks_like_text():
        return  # a .pbtxt: the converter parses it
    scan = f.sink.scanner
    if scan.matches(GRAPH_DEF_FIELDS) and scan.counts.get(1, 0) >= 1:
        return
    if scan.matches(META_GRAPH_DEF_FIELDS) and scan.counts.get(3):
        raise InvalidUpload(
            f"the {f.field!r} file {f.filename!r} looks like a MetaGraphDef (.meta), not a GraphDef: "
            "send it as 'meta'",
            code="invalid_graph",
        )
    reason = scan.error or "it has no nodes"
    raise InvalidUpload(
        f"the {f.field!r} file {f.filename!r} is not a TensorFlow {what} ({reason}): upload the binary .pb"
        + (" or text .pbtxt" if f.field == "graph" else "")
        + " exactly as written",
        code="invalid_graph",
    )


def _check_meta(f: ReceivedFile) -> None:
    scan = f.sink.scanner
    if scan.matches(META_GRAPH_DEF_FIELDS) and scan.counts.get(2) == 1 and scan.counts.get(1, 0) <= 1:
        return
    reason = scan.error or "it holds no graph"
    if scan.error is None and scan.matches(GRAPH_DEF_FIELDS) and scan.counts.get(1, 0) > 1:
        reason = "it looks like a GraphDef: send that as 'graph' (inference graph) or 'frozen'"
    raise InvalidUpload(
        f"the 'meta' file {f.filename!r} is not a MetaGraphDef ({reason}): upload the model.ckpt.meta "
        "written by tf.compat.v1.train.Saver",
        code="invalid_meta_graph",
    )


def _check_index(f: ReceivedFile) -> None:
    if f.sink.tail[-8:] != INDEX_MAGIC:
        raise InvalidUpload(
            f"the 'index' file {f.filename!r} is not a checkpoint index (no TensorBundle footer; truncated?): "
            "upload the model.ckpt.index written with the .data shards",
            code="invalid_checkpoint_index",
        )


def _check_data(shards: list[ReceivedFile]) -> list[ReceivedFile]:
    """Shards named ``*.data-0000i-of-0000N``, all N of them, each once; returned in order."""
    numbered = []
    for shard in shards:
        match = DATA_SHARD_RE.search(shard.filename)
        if not match:
            raise InvalidUpload(
                f"data file {shard.filename!r} is not named like a checkpoint shard "
                "(model.ckpt.data-00000-of-00001): keep the names the Saver wrote",
                code="invalid_data_shard",
            )
        numbered.append((int(match.group(1)), int(match.group(2)), shard))
    totals = {total for _, total, _ in numbered}
    if len(totals) != 1:
        raise InvalidUpload("data shards come from different saves (their -of-N counts differ)", code="invalid_data_shard")
    total = totals.pop()
    indices = sorted(i for i, _, _ in numbered)
    if indices != list(range(total)):
        missing = sorted(set(range(total)) - set(indices))
        detail = f"missing shard(s) {', '.join(f'{m:05d}' for m in missing)}" if missing else "a shard is repeated"
        raise InvalidUpload(
            f"the checkpoint has {total} data shard(s) but the upload has {len(shards)} ({detail}): "
            "upload every .data-NNNNN-of-NNNNN file",
            code="missing_data_shard",
        )
    return [shard for _, _, shard in sorted(numbered, key=lambda t: t[0])]


def _check_labels(f: ReceivedFile) -> None:
    if f.sink.size > MAX_LABELS_BYTES:
        raise InvalidUpload(f"the labels file is larger than {MAX_LABELS_BYTES // 2**20} MiB", code="invalid_labels")
    try:
        bytes(f.sink.head).decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(f.sink.head) - 4:
            raise InvalidUpload("the labels file is not UTF-8 text (one label per line)", code="invalid_labels") from exc


def plan_push(request: PushRequest) -> tuple[str, list[ReceivedFile]]:
    """Check which files came and that each is what it claims; return the
    version's source kind and the files in the order they are recorded."""
    files = _by_field(request.files)
    for items in files.values():
        for f in items:
            if f.sink.scanner is not None:
                f.sink.scanner.finish()
            _check_not_empty(f)
    tf2 = [name for name in ("saved_model", "keras") if name in files]
    if tf2:
        extra = sorted(set(files) - {tf2[0], "labels"})
        if extra:
            raise InvalidUpload(
                f"a {tf2[0]} push is frozen from that file alone: do not send {', '.join(extra)} with it",
                code="conflicting_files",
            )
        f = files[tf2[0]][0]
        head = bytes(f.sink.head)
        if tf2[0] == "saved_model":
            if not head.startswith((ZIP_MAGIC, GZIP_MAGIC)):
                raise InvalidUpload(
                    f"the 'saved_model' file {f.filename!r} is not a .zip or .tar.gz: archive the SavedModel "
                    "folder (saved_model.pb + variables/), e.g. tar czf model.tar.gz -C export_dir .",
                    code="invalid_saved_model")
            source = SOURCE_SAVED_MODEL
        else:
            name = f.filename.lower()
            if head.startswith(ZIP_MAGIC) and not name.endswith(".keras"):
                raise InvalidUpload(f"the 'keras' file {f.filename!r} is a Keras v3 archive: name it *.keras",
                                    code="invalid_keras")
            if head.startswith(HDF5_MAGIC) and not name.endswith((".h5", ".hdf5")):
                raise InvalidUpload(f"the 'keras' file {f.filename!r} is HDF5: name it *.h5", code="invalid_keras")
            if not head.startswith((ZIP_MAGIC, HDF5_MAGIC)):
                raise InvalidUpload(
                    f"the 'keras' file {f.filename!r} is neither a .keras archive nor an .h5 file: save it with "
                    "model.save('model.keras')", code="invalid_keras")
            source = SOURCE_KERAS
        ordered = files[tf2[0]]
    elif "frozen" in files:
        extra = sorted(set(files) - {"frozen", "labels"})
        if extra:
            raise InvalidUpload(
                f"a frozen graph is registered as is: do not send {', '.join(extra)} with it", code="conflicting_files"
            )
        _check_graph(files["frozen"][0], "GraphDef")
        source = SOURCE_FROZEN
        ordered = files["frozen"]
    else:
        if "index" not in files or "data" not in files:
            missing = [name for name in ("index", "data") if name not in files]
            if not files.keys() - {"labels"}:
                raise InvalidUpload(
                    "no model files: send meta + index + data (a checkpoint), graph + index + data, "
                    "or a single frozen graph",
                    code="missing_files",
                )
            raise InvalidUpload(
                f"the checkpoint is incomplete: missing {' and '.join(missing)} "
                "(send model.ckpt.index and every model.ckpt.data-NNNNN-of-NNNNN)",
                code="missing_files",
            )
        if "meta" not in files and "graph" not in files:
            raise InvalidUpload(
                "a checkpoint needs its graph: send the .meta file, an inference graph ('graph'), or both",
                code="missing_files",
            )
        if "meta" in files:
            _check_meta(files["meta"][0])
        if "graph" in files:
            _check_graph(files["graph"][0], "GraphDef")
        _check_index(files["index"][0])
        shards = _check_data(files["data"])
        source = SOURCE_GRAPH if "graph" in files else SOURCE_META
        ordered = files.get("meta", []) + files.get("graph", []) + files["index"] + shards
    if "labels" in files:
        _check_labels(files["labels"][0])
        ordered = ordered + files["labels"]
    return source, ordered


def _check_fields(source: str, request: PushRequest) -> None:
    if source in (SOURCE_SAVED_MODEL, SOURCE_KERAS):
        if request.output_nodes or request.input_nodes:
            raise InvalidUpload(f"a {source} push takes its inputs and outputs from the model's signature: "
                                "leave out output_nodes and input_nodes", code="conflicting_fields")
    elif request.signature:
        raise InvalidUpload("signature applies only to a pushed SavedModel", code="conflicting_fields")


def _check_archives(source: str, ordered: list[ReceivedFile], limits: ArchiveLimits) -> None:
    """Refuse an unsafe or bomb-like archive now, with a 400, before it is published,
    rather than fail the conversion later."""
    archive = next((f for f in ordered if f.field in ARCHIVE_FIELDS), None)
    if archive is None or (source == SOURCE_KERAS and not bytes(archive.sink.head).startswith(ZIP_MAGIC)):
        return
    if source == SOURCE_SAVED_MODEL:
        check_saved_model_archive(archive.sink.local_path(), limits)
    else:
        check_archive(archive.sink.local_path(), limits)


def push(
    db: Database, storage: BlobStorage, name: str, request: PushRequest, *, max_attempts: int = 3,
    archive_limits: ArchiveLimits | None = None,
    actor: Actor = SYSTEM,
) -> VersionInfo:
    """Validate, publish blobs and register the next version with a queued conversion."""
    catalog.validate_model_name(name)
    if request.signature and not SIGNATURE_RE.match(request.signature):
        raise InvalidUpload(f"signature {request.signature!r} is not a signature name (e.g. serving_default)",
                            code="invalid_signature")
    catalog.validate_preprocessing(request.preprocessing)
    if len(request.description) > 10_000:
        raise InvalidUpload("description is longer than 10,000 characters", code="invalid_description")
    try:
        source, ordered = plan_push(request)
        _check_fields(source, request)
        _check_archives(source, ordered, archive_limits or ArchiveLimits())
    except BaseException:
        abort(request.files)  # nothing is published yet: the staged bytes go at once
        raise
    try:
        for f in ordered:
            f.sink.publish()
        return catalog.create_version(
            db,
            name,
            source=source,
            files=[NewFile(ROLE_OF_FIELD.get(f.field, f.field), f.filename, f.sink.ref.sha256, f.sink.ref.size)
                   for f in ordered],
            signature=request.signature or None,
            description=request.description,
            output_nodes=request.output_nodes,
            input_nodes=request.input_nodes,
            preprocessing=request.preprocessing,
            max_attempts=max_attempts,
            actor=actor,
        )
    except BaseException:
        # What was published stays for the garbage collector: another push may be using the same bytes.
        abort(request.files)
        log.warning("push to %r failed after publishing its blobs; registry gc frees them once unreferenced "
                    "and older than its grace period", name)
        raise


def abort(files: Iterable[ReceivedFile]) -> None:
    for f in files:
        f.sink.abort()
