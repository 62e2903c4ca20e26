"""What a push must be before anything of it is published: the right files, each what it claims.

Every check runs on the parts' unpublished bytes (their head, tail and wire
scan, see ``registry.uploads.files``; an archive's local copy), so a refused
push leaves nothing behind.  Each refusal is an ``InvalidUpload`` (400) that
says what to send instead.
"""

from __future__ import annotations

import json

import re
from collections.abc import Iterable

from registry import signatures
from registry.entities import SOURCE_FROZEN, SOURCE_GRAPH, SOURCE_KERAS, SOURCE_META, SOURCE_SAVED_MODEL
from registry.errors import InvalidUpload
from registry.uploads.archives import ArchiveLimits, check_archive, check_saved_model_archive
from registry.uploads.files import ARCHIVE_FIELDS, FILE_FIELDS, PushRequest, ReceivedFile
from registry.uploads.protowire import GRAPH_DEF_FIELDS, META_GRAPH_DEF_FIELDS, graph_def_ops

INDEX_MAGIC = bytes.fromhex("57fb808b247547db")  # TensorBundle/LevelDB table footer, little-endian
DATA_SHARD_RE = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/>]*(:\d+)?$")
ZIP_MAGIC = b"PK\x03\x04"
GZIP_MAGIC = b"\x1f\x8b"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
SIGNATURE_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")
MAX_LABELS_BYTES = 16 * 1024 * 1024
MAX_FILENAME_LENGTH = 255  # what the version_files table keeps
# GraphDef's fields as protobuf text format writes them: node, versions, library (and the deprecated version)
PBTXT_GRAPH_START = re.compile(r"^(?:node|versions|library|version)\s*[{<:]")
PBTXT_META_START = re.compile(r"^(?:meta_info_def|graph_def|saver_def|collection_def|signature_def|asset_file_def"
                              r"|object_graph_def)\s*[{<:]")


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
        _check_graph_text(f)  # a .pbtxt: the converter parses it
        return
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
    if f.sink.looks_like_text():  # a frozen graph is binary only
        reason = "it is a text file"
    raise InvalidUpload(
        f"the {f.field!r} file {f.filename!r} is not a TensorFlow {what} ({reason}): upload the binary .pb"
        + (" or text .pbtxt" if f.field == "graph" else "")
        + " exactly as written",
        code="invalid_graph",
    )


def _check_graph_text(f: ReceivedFile) -> None:
    """A text upload as 'graph' must start like a GraphDef in protobuf text format (``node {``,
    ``versions {``, ``library {``), after comments: a README or a CSV is refused here, not by the
    converter after the push took a version number.  The text/binary tell is the converter's own
    (``registry.converter.graphs.load_graph_def`` parses such a file as text), so nothing it would
    accept is refused here."""
    lines = bytes(f.sink.head).decode("utf-8", errors="replace").splitlines()
    first = next((line.strip() for line in lines if line.strip() and not line.strip().startswith("#")), None)
    if first is None or PBTXT_GRAPH_START.match(first):
        return  # only comments in the head: the converter reads the rest
    if PBTXT_META_START.match(first):
        hint = "it looks like a MetaGraphDef in text format: send the inference GraphDef, or a binary .meta as 'meta'"
    else:
        hint = f"it starts with {first[:60]!r}"
    raise InvalidUpload(
        f"the 'graph' file {f.filename!r} is text but not a TensorFlow GraphDef ({hint}; a .pbtxt GraphDef "
        "starts with 'node {'): send the inference graph as a binary .pb or a text .pbtxt",
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


def parse_signatures(value: object) -> list[dict]:
    """The ``signatures`` field of a push: a JSON list of ``{"name", "method", "inputs", "outputs"}``
    (registry.signatures.validate_declared), checked before anything is stored."""
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidUpload(f"signatures is not JSON ({exc}): send a list like [{{\"name\": \"classify\", "
                                '"method": "classify", "inputs": ["tf_example"], "outputs": ["scores"]}]',
                                code="invalid_signatures") from exc
    try:
        return signatures.validate_declared(value)
    except ValueError as exc:
        raise InvalidUpload(str(exc), code="invalid_signatures") from exc


def check_fields(source: str, request: PushRequest) -> None:
    """Node names and a signature go only with the kinds of push that use them."""
    if source in (SOURCE_SAVED_MODEL, SOURCE_KERAS):
        if request.output_nodes or request.input_nodes:
            raise InvalidUpload(f"a {source} push takes its inputs and outputs from the model's signature: "
                                "leave out output_nodes and input_nodes", code="conflicting_fields")
        if request.signatures:
            raise InvalidUpload(f"a {source} push keeps the signatures it was saved with: leave out signatures",
                                code="conflicting_fields")
    elif request.signature:
        raise InvalidUpload("signature applies only to a pushed SavedModel", code="conflicting_fields")


def holds_variables(ops: Iterable[str]) -> bool:
    """Whether a graph with these ops may read a checkpoint: it holds a variable (``VariableV2``,
    ``VarHandleOp``: what the freezer fills from the checkpoint) or an op of one (``ReadVariableOp``,
    ``VarIsInitializedOp``).  Generous on purpose: only a graph without any of them is refused."""
    return any("Variable" in op or op.startswith(("VarHandle", "_VarHandle", "VarIs")) for op in ops)


def unused_checkpoint_message(filename: str) -> str:
    """Why a checkpoint pushed with an inference graph that holds no variable is refused, at upload
    or (a text graph) by the converter, in the same words."""
    return (f"the 'graph' file {filename!r} reads no variable from the checkpoint (it has no variables: it is "
            "already frozen), so the checkpoint would be ignored: send the graph alone as 'frozen', without the "
            "checkpoint")


def check_checkpoint_used(source: str, ordered: list[ReceivedFile]) -> None:
    """Refuse a checkpoint pushed with an inference graph that uses none of it (an already-frozen
    graph, most often): it would be frozen as is, the checkpoint ignored.  Decided here for a binary
    GraphDef, read at the wire level from its local copy; a text graph, or one on storage without a
    local staging copy, is left to the converter, which refuses it with the same message."""
    graph = next((f for f in ordered if f.field == "graph"), None)
    if source != SOURCE_GRAPH or graph is None or graph.sink.looks_like_text():
        return
    path = graph.sink.kept_path()
    if path is None:
        return
    try:
        ops = [op for _, op in graph_def_ops(open(path, "rb"))]
    except (OSError, ValueError):
        return  # not readable as nodes here: the converter says what is wrong with it
    if not holds_variables(ops):
        raise InvalidUpload(unused_checkpoint_message(graph.filename), code="checkpoint_unused")


def check_archives(source: str, ordered: list[ReceivedFile], limits: ArchiveLimits) -> None:
    """Refuse an unsafe or bomb-like archive now, with a 400, before it is published,
    rather than fail the conversion later."""
    archive = next((f for f in ordered if f.field in ARCHIVE_FIELDS), None)
    if archive is None or (source == SOURCE_KERAS and not bytes(archive.sink.head).startswith(ZIP_MAGIC)):
        return
    if source == SOURCE_SAVED_MODEL:
        check_saved_model_archive(archive.sink.local_path(), limits)
    else:
        check_archive(archive.sink.local_path(), limits)
