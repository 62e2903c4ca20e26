"""A stored evaluation set read back in batches, for a comparison.

:func:`read_batches` streams the set's blob from storage and hands out :class:`EvalBatch`es of at most
``batch_size`` inputs, in the set's order (an image archive: its images sorted by path, see
``archive.py``; JSON Lines: line by line; ``.npz``: row by row; TFRecord: record by record), so that a
set larger than one request's worth never sits in memory whole.  The set was checked at upload
(``formats.py``); a blob that no longer reads as it did (damaged storage) raises InvalidRequest naming
where.  numpy is imported only to read an ``.npz`` set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from registry.errors import InvalidRequest, NotFound, StorageError
from registry.evaluation import IMAGES, JSONL, NPZ, TFRECORD, EvalBatch, EvalSetInfo
from registry.evaluation import archive as image_archive
from registry.evaluation import tfrecord
from registry.evaluation.formats import EXPECTED, NO_EXPECTED, SetProblem, json_lines, line_instances, npz_headers
from registry.storage import BlobStorage


def read_batches(storage: BlobStorage, eval_set: EvalSetInfo, batch_size: int) -> Iterator[EvalBatch]:
    """The inputs of ``eval_set`` in batches of at most ``batch_size``, with their keys and expected values.

    Images come as ``images`` (encoded bytes; keys: member paths), JSON Lines as ``instances`` (input name
    -> one value per input; keys ``line N`` or ``line N, instance I``; a bare value under the input name
    ``""``), ``.npz`` rows as ``instances`` of numpy rows (keys ``row N``, 1-based; the stacked arrays also
    in ``extra["arrays"]``), TFRecord records as ``examples`` (serialized tf.Examples; keys ``record N``;
    expected values from the set's label feature)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if eval_set.deleted_at is not None:
        raise NotFound(f"revision {eval_set.revision} of evaluation set {eval_set.name!r} of model "
                       f"{eval_set.model!r} was deleted: pick a revision that exists", code="eval_set_deleted")
    readers = {IMAGES: _images, JSONL: _jsonl, NPZ: _npz, TFRECORD: _tfrecord}
    if eval_set.format not in readers:
        raise InvalidRequest(f"evaluation set {eval_set.ref} has the unknown format {eval_set.format!r}",
                             code="invalid_eval_set")
    try:
        stream = storage.open(eval_set.sha256)
    except FileNotFoundError as exc:
        raise StorageError(f"the blob {eval_set.sha256} of evaluation set {eval_set.ref} is missing from storage; "
                           "ask an operator", code="blob_missing") from exc
    with stream:
        try:
            yield from readers[eval_set.format](stream, eval_set, batch_size)
        except (SetProblem, image_archive.ArchiveProblem, tfrecord.RecordError, ValueError) as exc:
            raise InvalidRequest(f"evaluation set {eval_set.ref} cannot be read back ({exc}): its blob is damaged; "
                                 "upload it again", code="invalid_eval_set") from exc


def _chunks(items: list, size: int) -> Iterator[tuple[int, list]]:
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def _images(stream, eval_set: EvalSetInfo, batch_size: int) -> Iterator[EvalBatch]:
    index = image_archive.index_images(stream)
    stream.seek(0)
    with image_archive.members(stream, random_access=True) as found:
        by_path = {m.path: m for m in found if not image_archive.skipped(m.path)}
        for start, paths in _chunks(index.images, batch_size):
            images = []
            for path in paths:
                with by_path[path].open() as handle:
                    images.append(handle.read())
            yield EvalBatch(start=start, keys=[str(p) for p in paths], images=images,
                            expected=index.expected[start:start + len(paths)] if index.expected is not None else None)


def _jsonl(stream, eval_set: EvalSetInfo, batch_size: int) -> Iterator[EvalBatch]:
    with_expected = bool(eval_set.summary.get(EXPECTED))
    start = 0
    keys: list[str] = []
    columns: dict[str, list] = {}
    expected: list[Any] = []

    def batch() -> EvalBatch:
        return EvalBatch(start=start, keys=list(keys), instances={k: list(v) for k, v in columns.items()},
                         expected=list(expected) if with_expected else None)

    for number, value in json_lines(stream):
        for key, row, wanted in line_instances(value, number):
            keys.append(key)
            for name, item in row.items():
                columns.setdefault(name, []).append(item)
            if with_expected:
                expected.append(None if wanted is NO_EXPECTED else wanted)
            if len(keys) == batch_size:
                yield batch()
                start += len(keys)
                keys.clear(), columns.clear(), expected.clear()
    if keys:
        yield batch()


def _npz(stream, eval_set: EvalSetInfo, batch_size: int) -> Iterator[EvalBatch]:
    import numpy as np  # only for .npz sets: the web app does not load it otherwise

    with np.load(stream, allow_pickle=False) as npz:
        headers = npz_headers(npz)
        count = next(iter(headers.values()))[0][0]
        with contextlib.ExitStack() as stack:
            rows = {name: _row_reader(np, npz, stack, name, header) for name, header in headers.items()}
            for start in range(0, count, batch_size):
                n = min(batch_size, count - start)
                arrays = {name: read(start, n) for name, read in rows.items()}
                inputs = {k: v for k, v in arrays.items() if k != EXPECTED}
                expected = None
                if EXPECTED in arrays:
                    expected = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                                for v in arrays[EXPECTED].tolist()]
                yield EvalBatch(start=start, keys=[f"row {start + i + 1}" for i in range(n)],
                                instances={k: list(v) for k, v in inputs.items()}, expected=expected,
                                extra={"arrays": inputs})


def _row_reader(np, npz, stack: contextlib.ExitStack, name: str, header):
    """A function (start, n) -> the array's rows start..start+n, read in order from the member's stream
    (C order), or sliced from the whole array (Fortran order, which cannot be read row by row)."""
    shape, fortran, dtype, offset = header
    if fortran:
        whole = npz[name]
        return lambda start, n: whole[start:start + n]
    handle = stack.enter_context(npz.zip.open(f"{name}.npy"))
    handle.read(offset)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def read(start: int, n: int):
        data = handle.read(row_bytes * n)
        if len(data) != row_bytes * n:
            raise ValueError(f"array {name!r} ends early")
        return np.frombuffer(data, dtype=dtype).reshape((n, *shape[1:]))
    return read


def _tfrecord(stream, eval_set: EvalSetInfo, batch_size: int) -> Iterator[EvalBatch]:
    label = eval_set.summary.get("label_feature")
    start, examples, keys, expected = 0, [], [], []
    # Content-addressed and checked at upload: the checksums are not computed again (pure Python, slow).
    for number, data in enumerate(tfrecord.records(stream, verify=False), 1):
        examples.append(data)
        keys.append(f"record {number}")
        if label:
            kind, values = tfrecord.parse_example(data).get(label, ("empty", []))
            expected.append(tfrecord.expected_value(kind, values) if values else None)
        if len(examples) == batch_size:
            yield EvalBatch(start=start, keys=keys, examples=examples, expected=expected if label else None)
            start += len(examples)
            examples, keys, expected = [], [], []
    if examples:
        yield EvalBatch(start=start, keys=keys, examples=examples, expected=expected if label else None)


def read_input(storage: BlobStorage, eval_set: EvalSetInfo, index: int) -> tuple[str, Any]:
    """Input ``index`` (0-based, in the set's order) of ``eval_set``: ("image", its bytes) for an image
    set, else ("json", the input as JSON: {input name: value}, or {"b64": ...} for a tf.Example), for a
    report's list of disagreements.  Streams the set up to it."""
    if not 0 <= index < eval_set.count:
        raise NotFound(f"evaluation set {eval_set.ref} has {eval_set.count} inputs, numbered 0 to "
                       f"{eval_set.count - 1}: there is no input {index}", code="input_not_found")
    for batch in read_batches(storage, eval_set, 64):
        at = index - batch.start
        if not 0 <= at < len(batch):
            continue
        if batch.images is not None:
            return "image", batch.images[at]
        if batch.examples is not None:
            import base64

            return "json", {"b64": base64.b64encode(batch.examples[at]).decode()}
        row = {name: values[at] for name, values in (batch.instances or {}).items()}
        return "json", {name: value.tolist() if hasattr(value, "tolist") else value for name, value in row.items()}
    raise NotFound(f"evaluation set {eval_set.ref} has no input {index}", code="input_not_found")
