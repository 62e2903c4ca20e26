"""An uploaded evaluation set checked before it is stored: which format it is, how many inputs it holds
and what they look like (its summary), or a 400 naming the line, member, array or record that is wrong.

No TensorFlow: the web app runs this.  numpy is imported inside the functions that need it, so that
importing this module (every API request does) costs nothing.

The formats (``registry.evaluation``'s constants), told by the file name, else by the first bytes:

* ``images``: ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` of images (see ``archive.py`` for the order and
  the labels files);
* ``jsonl``: ``.jsonl``/``.ndjson``/``.json``, one JSON value per line: ``{"instances": [...]}`` (TF
  Serving's row format: each instance an object of named inputs or one bare value; an optional
  ``"expected"`` list beside it, one per instance; or its columnar ``{"inputs": ...}``), or one
  instance (``{"x": [...], "expected": 3}``: every key but ``expected`` an input; or a bare value, the
  signature's only input).  Blank lines are skipped.  A bare value is filed under the input name ``""``
  (:data:`SINGLE_INPUT`);
* ``npz``: ``.npz`` arrays keyed by input name (loaded with ``allow_pickle=False``), an optional
  ``expected`` array, every array with the same first dimension (the number of inputs);
* ``tfrecord``: ``.tfrecord``/``.tfrecords``, serialized ``tf.Example``s, the expected value in the
  feature the upload names (``label_feature``).

Over 400 lines because it is every format's rules in one place (the image archive's are in
``archive.py``, TFRecord framing in ``tfrecord.py``); ``reader.py`` reads sets back with the same helpers.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from registry.errors import InvalidUpload
from registry.evaluation import IMAGES, JSONL, NPZ, TFRECORD
from registry.evaluation import archive as image_archive
from registry.evaluation import tfrecord
from registry.uploads.archives import ArchiveLimits, check_archive

SINGLE_INPUT = ""  # the input name of a bare JSON value: the signature's only input
EXPECTED = "expected"  # the JSON key and .npz array of expected values
MAX_LINE_BYTES = 64 * 1024**2  # one JSON line
MAX_DEPTH = 32  # nesting of one JSON input
MAX_LABELS = 1000  # distinct expected labels listed in a summary
EXTRA_MEMBERS = 1024  # archive members beyond the inputs: folders, the labels file
_SUFFIXES = {".zip": IMAGES, ".tar": IMAGES, ".tgz": IMAGES, ".gz": IMAGES, ".jsonl": JSONL, ".ndjson": JSONL,
             ".json": JSONL, ".npz": NPZ, ".tfrecord": TFRECORD, ".tfrecords": TFRECORD}
_SAVED_MODEL_WORDING = "the SavedModel archive is refused: "
_NPZ_KINDS = {"b": "bool", "i": "int", "u": "int", "f": "float", "U": "string", "S": "bytes"}


@dataclass(frozen=True)
class SetLimits:
    """How large a set may be: ``max_inputs`` (REGISTRY_EVAL_SET_MAX_INPUTS), and what an archive (of
    images, or an .npz) may unpack to, ``max_archive_bytes`` (REGISTRY_MAX_ARCHIVE_BYTES, as for SavedModel
    archives).  The upload's own size is bounded as it arrives (REGISTRY_EVAL_SET_MAX_BYTES)."""

    max_inputs: int = 100_000
    max_archive_bytes: int = 8 * 1024**3


class Checked(NamedTuple):
    format: str
    count: int
    summary: dict[str, Any]


class SetProblem(ValueError):
    """A problem with the set's content; the message names where it is."""


def check(path: Path, filename: str, *, label_feature: str | None = None,
          limits: SetLimits | None = None) -> Checked:
    """The format, number of inputs and summary of the set in the local file ``path`` (uploaded as
    ``filename``); InvalidUpload (400) names what is wrong and what to do."""
    limits = limits or SetLimits()
    refused = f"the evaluation set {filename!r} is refused"
    if path.stat().st_size == 0:
        raise InvalidUpload(f"{refused}: the file is empty", code="invalid_eval_set")
    fmt = detect(path, filename)
    if label_feature and fmt != TFRECORD:
        raise InvalidUpload(f"{refused}: label_feature names the label of a TFRecord set; this is a {fmt} set "
                            "(leave label_feature out)", code="invalid_eval_set")
    try:
        if fmt == IMAGES:
            count, summary = _check_images(path, limits)
        elif fmt == JSONL:
            count, summary = _check_jsonl(path, limits)
        elif fmt == NPZ:
            count, summary = _check_npz(path, limits)
        else:
            count, summary = _check_tfrecord(path, label_feature or None, limits)
    except InvalidUpload as exc:
        if exc.code == "unsafe_archive":  # the archive checks speak of SavedModels
            raise InvalidUpload(f"{refused}: {exc.message.removeprefix(_SAVED_MODEL_WORDING)}",
                                code=exc.code) from None
        raise
    except SetProblem as exc:
        raise InvalidUpload(f"{refused}: {exc}", code="invalid_eval_set") from None
    if count == 0:
        raise InvalidUpload(f"{refused}: it holds no inputs", code="invalid_eval_set")
    return Checked(fmt, count, summary)


def detect(path: Path, filename: str) -> str:
    """The format of a set: from its file name's suffix, else from its first bytes."""
    name = filename.lower()
    if name.endswith(".npz"):
        return NPZ
    suffix = PurePosixPath(name).suffix
    if suffix in _SUFFIXES and not (suffix == ".gz" and not name.endswith(".tar.gz")):
        return _SUFFIXES[suffix]
    with open(path, "rb") as f:
        head = f.read(512)
    if image_archive.is_zip(head):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return IMAGES  # the archive check says what is wrong with it
        return NPZ if names and all(n.endswith(".npy") for n in names) else IMAGES
    if head[:2] == image_archive.GZIP_MAGIC or head[257:262] == b"ustar":
        return IMAGES
    if len(head) >= 12 and tfrecord.masked_crc(head[:8]) == struct.unpack("<I", head[8:12])[0]:
        return TFRECORD  # first: a record's length may well begin with a digit or a brace
    if head.lstrip()[:1] in (b"{", b"[", b'"') or head.lstrip()[:1].isdigit():
        return JSONL
    raise InvalidUpload(
        f"cannot tell what kind of evaluation set {filename!r} is: send a .zip, .tar or .tar.gz of images, "
        "JSON Lines (.jsonl), numpy arrays (.npz) or a TFRecord file of tf.Examples (.tfrecord)",
        code="unknown_eval_set_format")


def _too_many(limits: SetLimits, where: str) -> SetProblem:
    return SetProblem(f"it has more than {limits.max_inputs:,} inputs ({where}; REGISTRY_EVAL_SET_MAX_INPUTS): "
                      "split it into several sets")


class _Labels:
    """The distinct string labels of a set's expected values, up to MAX_LABELS of them."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.truncated = False

    def add(self, value: Any) -> None:
        if isinstance(value, str) and value not in self.seen:
            if len(self.seen) < MAX_LABELS:
                self.seen.add(value)
            else:
                self.truncated = True

    def summary(self) -> dict:
        if not self.seen:
            return {}
        return {"labels": sorted(self.seen), **({"labels_truncated": True} if self.truncated else {})}


def _labels_summary(values) -> dict:
    labels = _Labels()
    for value in values:
        labels.add(value)
    return labels.summary()


# --- images -----------------------------------------------------------------------------------------

def _check_images(path: Path, limits: SetLimits) -> tuple[int, dict]:
    check_archive(path, ArchiveLimits(limits.max_archive_bytes, limits.max_inputs + EXTRA_MEMBERS))
    try:
        with open(path, "rb") as f:
            index = image_archive.index_images(f)
    except image_archive.ArchiveProblem as exc:
        raise SetProblem(str(exc)) from None
    if len(index.images) > limits.max_inputs:
        raise _too_many(limits, f"{len(index.images):,} images")
    summary: dict[str, Any] = {"images": dict(sorted(index.kinds.items())), EXPECTED: index.expected is not None}
    if index.labels_file is not None:
        summary["expected_file"] = str(index.labels_file)
        summary.update(_labels_summary(index.expected or []))
    return len(index.images), summary


# --- JSON Lines -------------------------------------------------------------------------------------

def json_lines(stream) -> Any:
    """``(line number, parsed value)`` of each non-blank line of a JSON Lines stream (bytes)."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            raise SetProblem(f"line {number} is longer than {MAX_LINE_BYTES // 2**20} MiB: put fewer instances on "
                             "a line")
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except UnicodeDecodeError:
            raise SetProblem(f"line {number} is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise SetProblem(f"line {number} is not JSON ({exc.msg} at column {exc.colno}): write one JSON "
                             'object per line, e.g. {"x": [1.0, 2.0], "expected": 3}') from None
        except RecursionError:
            raise SetProblem(f"line {number} is nested too deeply") from None


NO_EXPECTED = object()  # an instance without an expected value


def _columns(value: Any, number: int) -> list:
    """TF Serving's columnar ``{"inputs": ...}`` on one line, as rows."""
    columns = value["inputs"]
    if isinstance(columns, dict) and set(columns) != {"b64"}:
        lengths = {k: len(v) if isinstance(v, list) else None for k, v in columns.items()}
        if not columns or None in lengths.values() or len(set(lengths.values())) != 1:
            raise SetProblem(f'line {number}: "inputs" must map each input name to a list with one value per '
                             f"instance, all as long (they are {lengths})")
        return [{k: v[i] for k, v in columns.items()} for i in range(next(iter(lengths.values())))]
    if not isinstance(columns, list):
        raise SetProblem(f'line {number}: "inputs" must be a list (one value per instance) or an object of them')
    return columns


def line_instances(value: Any, number: int) -> list[tuple[str, dict[str, Any], Any]]:
    """The instances of one JSON line: ``(key, {input name: value}, expected or NO_EXPECTED)``; keys are
    ``line N``, or ``line N, instance I`` on a line of several.  ``{"inputs": ...}`` (TF Serving's
    columnar form) is taken as the rows it stands for."""
    if isinstance(value, dict) and ("instances" in value or "inputs" in value):
        if "instances" in value and "inputs" in value:
            raise SetProblem(f'line {number} has both "instances" and "inputs": give one of them')
        field = "instances" if "instances" in value else "inputs"
        rows = value["instances"] if field == "instances" else _columns(value, number)
        if not isinstance(rows, list) or not rows:
            raise SetProblem(f'line {number}: "{field}" must be a non-empty list of instances')
        unknown = sorted(set(value) - {field, EXPECTED})
        if unknown:
            raise SetProblem(f'line {number} has {", ".join(map(repr, unknown))} beside "{field}": only '
                             f'"{EXPECTED}" may be there')
        expected = value.get(EXPECTED, NO_EXPECTED)
        if expected is not NO_EXPECTED and (not isinstance(expected, list) or len(expected) != len(rows)):
            raise SetProblem(f'line {number}: "{EXPECTED}" must be a list with one value per instance '
                             f"({len(rows)})")
        out = []
        for i, row in enumerate(rows):
            key = f"line {number}" if len(rows) == 1 else f"line {number}, instance {i + 1}"
            out.append((key, _inputs(row, key), NO_EXPECTED if expected is NO_EXPECTED else expected[i]))
        return out
    if isinstance(value, dict) and set(value) != {"b64"}:
        inputs = {k: v for k, v in value.items() if k != EXPECTED}
        if not inputs:
            raise SetProblem(f"line {number} has no inputs, only {EXPECTED!r}")
        return [(f"line {number}", inputs, value.get(EXPECTED, NO_EXPECTED))]
    return [(f"line {number}", {SINGLE_INPUT: value}, NO_EXPECTED)]


def _inputs(row: Any, key: str) -> dict[str, Any]:
    if isinstance(row, dict) and set(row) != {"b64"}:
        if not row:
            raise SetProblem(f"{key} is an empty object: name its inputs")
        return row
    return {SINGLE_INPUT: row}


def _describe(value: Any, where: str) -> tuple[str | None, list[int]]:
    """(dtype, shape) of one JSON input: bool, int, float, string or bytes ({"b64": ...})."""
    import numpy as np  # only here: the web app imports this module

    if isinstance(value, list):
        try:
            array = np.asarray(value)
        except (ValueError, OverflowError):
            array = None
        if array is not None and array.dtype.kind in "biuf":
            return {"b": "bool", "i": "int", "u": "int", "f": "float"}[array.dtype.kind], list(array.shape)
    return _walk(value, where, 0)


def _walk(value: Any, where: str, depth: int) -> tuple[str | None, list[int]]:
    if depth > MAX_DEPTH:
        raise SetProblem(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, bool):
        return "bool", []
    if isinstance(value, int):
        return "int", []
    if isinstance(value, float):
        return "float", []
    if isinstance(value, str):
        return "string", []
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise SetProblem(f"{where} has a \"b64\" value that is not base64") from None
        return "bytes", []
    if isinstance(value, list):
        dtype, inner = None, None
        for item in value:
            item_type, item_shape = _walk(item, where, depth + 1)
            if inner is not None and item_shape != inner:
                raise SetProblem(f"{where} is a ragged list (items of shapes {inner} and {item_shape}): every row "
                                 "needs the same length")
            inner = item_shape
            dtype = _merge(dtype, item_type, where)
        return dtype, [len(value), *(inner or [])]
    raise SetProblem(f"{where} holds {json.dumps(value)[:40]}, which is no tensor value: use numbers, strings, "
                     'booleans, {"b64": "..."} for bytes, or lists of them')


def _merge(a: str | None, b: str | None, where: str) -> str | None:
    if a is None or a == b:
        return b
    if b is None:
        return a
    if {a, b} == {"int", "float"}:
        return "float"
    raise SetProblem(f"{where} mixes {a} and {b} values: one input has one type")


def _check_jsonl(path: Path, limits: SetLimits) -> tuple[int, dict]:
    inputs: dict[str, dict] = {}
    first_line = 0
    count = 0
    with_expected: bool | None = None
    expected_type: str | None = None
    expected_shape: list[int] | None = None
    expected_values = _Labels()
    with open(path, "rb") as f:
        for number, value in json_lines(f):
            for key, row, expected in line_instances(value, number):
                count += 1
                if count > limits.max_inputs:
                    raise _too_many(limits, f"at {key}")
                if not inputs:
                    first_line = number
                    for name, item in row.items():
                        dtype, shape = _describe(item, f"{key}, input {name!r}")
                        inputs[name] = {"dtype": dtype, "shape": shape}
                else:
                    if set(row) != set(inputs):
                        raise SetProblem(f"{key} has inputs {sorted(row)} but line {first_line} has {sorted(inputs)}: "
                                         "every instance needs the same inputs")
                    for name, item in row.items():
                        where = f"{key}, input {name!r}"
                        dtype, shape = _describe(item, where)
                        spec = inputs[name]
                        if shape != spec["shape"]:
                            raise SetProblem(f"{where} has shape {shape} but line {first_line}'s has {spec['shape']}: "
                                             "every instance of an input needs the same shape")
                        spec["dtype"] = _merge(spec["dtype"], dtype, where)
                has = expected is not NO_EXPECTED
                if with_expected is None:
                    with_expected = has
                elif has != with_expected:
                    raise SetProblem(f"{key} {'has' if has else 'has no'} expected value but line {first_line} "
                                     f"{'has none' if has else 'has one'}: give every instance an expected value "
                                     "or none")
                if has:
                    where = f"{key}, {EXPECTED!r}"
                    if isinstance(expected, dict) or expected is None:
                        raise SetProblem(f"{where} must be a label, a number or a list of numbers")
                    dtype, shape = _walk(expected, where, 0)
                    if expected_shape is not None and shape != expected_shape:
                        raise SetProblem(f"{where} has shape {shape} but line {first_line}'s has {expected_shape}")
                    expected_shape, expected_type = shape, _merge(expected_type, dtype, where)
                    expected_values.add(expected)
    summary: dict[str, Any] = {"inputs": inputs, EXPECTED: bool(with_expected)}
    if with_expected:
        summary["expected_dtype"], summary["expected_shape"] = expected_type, expected_shape
        summary.update(expected_values.summary())
    return count, summary


# --- .npz -------------------------------------------------------------------------------------------

def npz_headers(npz) -> dict[str, tuple[tuple[int, ...], bool, Any, int]]:
    """Each array of an open NpzFile as ``(shape, fortran order, dtype, data offset)``, read from its
    .npy header without loading it."""
    import numpy as np

    out = {}
    for info in npz.zip.infolist():
        if info.is_dir():
            continue
        if not info.filename.endswith(".npy"):
            raise SetProblem(f"member {info.filename} is not a .npy array: save the set with numpy.savez")
        name = info.filename[:-4]
        with npz.zip.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = reader(f)
            except ValueError as exc:
                raise SetProblem(f"array {name!r} is not a readable .npy array ({exc})") from None
            offset = f.tell()
        if dtype.hasobject or dtype.kind not in _NPZ_KINDS or dtype.names:
            raise SetProblem(f"array {name!r} has dtype {dtype}, which is not a number, boolean or string type: "
                             "object and structured arrays are refused (they need pickle)")
        if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != info.file_size:
            raise SetProblem(f"array {name!r} holds {info.file_size - offset:,} bytes of data, not what its shape "
                             f"{shape} and dtype {dtype} need: it is truncated or damaged")
        out[name] = (shape, fortran, dtype, offset)
    return out


def _check_npz(path: Path, limits: SetLimits) -> tuple[int, dict]:
    import numpy as np  # only here: the web app imports this module

    with open(path, "rb") as f:
        if not image_archive.is_zip(f.read(4)):
            raise SetProblem("it is not an .npz (a zip of .npy arrays): save the arrays with "
                             "numpy.savez(file, x=inputs, expected=labels)")
    check_archive(path, ArchiveLimits(limits.max_archive_bytes, EXTRA_MEMBERS))
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several kinds for a file that is no npz
        raise SetProblem(f"it is not a readable .npz file ({exc})") from None
    with npz:
        headers = npz_headers(npz)
    inputs = {k: v for k, v in headers.items() if k != EXPECTED}
    if not inputs:
        raise SetProblem("it has no input arrays: key each array by its input name, numpy.savez(file, x=...)")
    lengths = {}
    for name, (shape, _, _, _) in headers.items():
        if not shape:
            raise SetProblem(f"array {name!r} is a scalar: its first dimension must count the inputs")
        lengths[name] = shape[0]
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{k!r} has {v}" for k, v in lengths.items())
        raise SetProblem(f"its arrays have different first dimensions ({described}): every array needs one row per "
                         "input")
    count = next(iter(lengths.values()))
    if count > limits.max_inputs:
        raise _too_many(limits, f"{count:,} rows")
    summary: dict[str, Any] = {
        "inputs": {k: {"dtype": str(dtype), "shape": list(shape[1:])} for k, (shape, _, dtype, _) in inputs.items()},
        EXPECTED: EXPECTED in headers}
    if EXPECTED in headers:
        shape, _, dtype, _ = headers[EXPECTED]
        summary["expected_dtype"], summary["expected_shape"] = _NPZ_KINDS[dtype.kind], list(shape[1:])
        if dtype.kind in "US" and not shape[1:]:
            values = np.load(path, allow_pickle=False)[EXPECTED]
            summary.update(_labels_summary([v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                                            for v in np.unique(values).tolist()]))
    return count, summary


# --- TFRecord ---------------------------------------------------------------------------------------

def _check_tfrecord(path: Path, label_feature: str | None, limits: SetLimits) -> tuple[int, dict]:
    features: dict[str, dict] = {}
    labels = _Labels()
    label_kind = None
    count = 0
    with open(path, "rb") as f:
        try:
            for data in tfrecord.records(f):
                count += 1
                if count > limits.max_inputs:
                    raise _too_many(limits, f"at record {count}")
                try:
                    example = tfrecord.parse_example(data)
                except ValueError as exc:
                    raise SetProblem(f"record {count} is not a serialized tf.Example ({exc})") from None
                if not example:
                    raise SetProblem(f"record {count} is a tf.Example without features")
                for name, (kind, values) in example.items():
                    spec = features.setdefault(name, {"kind": kind, "length": len(values), "records": 0})
                    spec["records"] += 1
                    if spec["length"] != len(values):
                        spec["length"] = None  # varies
                    if spec["kind"] != kind and kind != "empty":
                        if spec["kind"] != "empty":
                            raise SetProblem(f"record {count}: feature {name!r} is a {kind} but a {spec['kind']} "
                                             "in an earlier record")
                        spec["kind"] = kind
                if label_feature is not None:
                    if label_feature not in example:
                        known = ", ".join(sorted(example)[:10])
                        raise SetProblem(f"record {count} has no feature {label_feature!r} (it has {known}): name the "
                                         "label feature every record has with label_feature")
                    kind, values = example[label_feature]
                    if not values:
                        raise SetProblem(f"record {count}: its label feature {label_feature!r} is empty")
                    label_kind = label_kind or kind
                    value = tfrecord.expected_value(kind, values)
                    labels.add(value)
        except tfrecord.RecordError as exc:
            raise SetProblem(f"{exc}: write it with tf.io.TFRecordWriter (no compression)") from None
    summary: dict[str, Any] = {"features": {k: {"kind": v["kind"], "length": v["length"],
                                                "in_every_record": v["records"] == count}
                                            for k, v in sorted(features.items())},
                               EXPECTED: label_feature is not None}
    if label_feature is not None:
        summary["label_feature"] = label_feature
        summary["expected_kind"] = label_kind
        summary.update(labels.summary())
    return count, summary

