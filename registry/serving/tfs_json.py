"""TensorFlow Serving's REST JSON for :predict, both request formats, on any signature.

Row format: ``{"instances": [...]}``, one entry per example, each a value (one
input) or an object keyed by input; answered with ``{"predictions": [...]}``.
Columnar format: ``{"inputs": value-or-object}``, batch dimension included;
answered with ``{"outputs": value-or-object}``.  ``signature_name`` picks the
signature (default ``serving_default``); a single output is answered without
its name.  Binary strings travel as ``{"b64": "..."}``: in inputs anywhere, in
outputs for the keys ending in ``_bytes`` (other string outputs are text, and
base64 only when they are not UTF-8).  Errors are ``{"error": "..."}`` (see
``api_rest.md``).

As in TF Serving, a value's dtype is checked here but not its shape against the
signature's static shape: the graph's ops check what they read.  One exception
(``check_rank``): an input declared with 3 or more dimensions takes values of
that rank only, because oneDNN's spatial kernels abort the worker or answer
wrongly on another rank instead of refusing it.

A body is measured before it is parsed: more values than
``REGISTRY_PREDICT_MAX_ELEMENTS`` is a 413 and nesting deeper than
``MAX_DEPTH`` a 400, found by a scan of the bytes that costs a fraction of
``json.loads`` (which would hold every number as a Python object, and fail
with ``RecursionError`` on deep nesting).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import numpy as np

from registry.errors import InvalidRequest, PayloadTooLarge

BYTES_SUFFIX = "_bytes"  # TF Serving's mark of an output whose strings are binary
MAX_DEPTH = 64  # nesting of a body: a tensor of rank 60 inside {"instances": [{"x": ...}]}
# A JSON string, escapes included; an unterminated one runs to the end (one pass, never backtracks).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_CHUNK = 1 << 22


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_predict_request")


def _deepest(brackets: bytes) -> int:
    """The deepest nesting of a run of ``[]{}``, in chunks (bounded memory for any body)."""
    array = np.frombuffer(brackets, dtype=np.uint8)
    depth = deepest = 0
    for start in range(0, len(array), _CHUNK):
        chunk = array[start:start + _CHUNK]
        levels = np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1), dtype=np.int64) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    return deepest


PREDICT_BODY = '{"instances": [...]} or {"inputs": ...}'
EXAMPLES_BODY = '{"examples": [{"feature": value, ...}, ...]}'


def load_body(data: bytes, max_elements: int, max_depth: int = MAX_DEPTH, *, shape: str = PREDICT_BODY) -> Any:
    """A :predict body parsed as JSON, once a scan of its bytes shows it is within bounds.

    The scan blanks out strings, then counts commas and brackets: a JSON text
    holds at most ``commas + containers + 1`` values, so that is the count
    checked against ``max_elements``.
    """
    structure = _STRING.sub(b'""', data)
    brackets = structure.translate(None, _NOT_BRACKETS)
    values = structure.count(b",") + len(brackets) // 2 + 1
    del structure
    if values > max_elements:
        raise PayloadTooLarge(f"the body carries about {values:,} values, more than the {max_elements:,} one "
                              "request may (REGISTRY_PREDICT_MAX_ELEMENTS): send fewer instances per request",
                              code="too_many_elements")
    deepest = _deepest(brackets) if len(brackets) > max_depth else 0  # no deeper than its brackets are many
    if deepest > max_depth:
        raise _bad(f"the body nests {deepest} levels deep, more than {max_depth}: a tensor's rank is its "
                   "nesting, and no model here takes one that deep")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc}): send {shape}", code="invalid_json") from exc


def check_answer_size(outputs: dict[str, np.ndarray], max_elements: int) -> None:
    """A JSON answer holds every value as text: refuse one larger than a request may be."""
    values = sum(int(np.size(a)) for a in outputs.values())
    if values > max_elements:
        raise PayloadTooLarge(f"the answer would carry {values:,} values, more than the {max_elements:,} a JSON "
                              "answer may (REGISTRY_PREDICT_MAX_ELEMENTS): send fewer instances, or use gRPC",
                              code="too_many_elements")


def signature_name(body: Any) -> str:
    """The body's ``signature_name`` ("" when it names none: the default signature)."""
    if not isinstance(body, dict):
        raise _bad('the body must be a JSON object: {"instances": [...]} or {"inputs": ...} for :predict, '
                   '{"examples": [...]} for :classify and :regress')
    name = body.get("signature_name", "")
    if name is None:
        return ""
    if not isinstance(name, str):
        raise _bad(f"JSON Value: {json.dumps(name)[:80]} not formatted correctly. 'signature_name' key must be a "
                   'string value, e.g. "serving_default"')
    return name


def decode_b64(value: dict) -> bytes:
    """``{"b64": "..."}`` as its bytes (TF Serving's binary values), or a 400 saying what is wrong."""
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise _bad(f"JSON Value: {json.dumps(value)[:80]} not formatted correctly for base64 data: a binary "
                   'value is {"b64": "<base64 string>"}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except binascii.Error as exc:
        raise _bad(f"Unable to base64 decode {value['b64'][:40]!r} ({exc}): send standard base64 "
                   "(A-Z a-z 0-9 + /, padded with =)") from exc


def _decode_strings(value: Any) -> Any:
    if isinstance(value, dict):
        return decode_b64(value)
    if isinstance(value, list):
        return [_decode_strings(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def check_rank(spec, array: np.ndarray, where: str) -> None:
    """Refuse a value of another rank than its input's when the input has 3 or more dimensions.

    Sizes are left to the graph's ops, as TF Serving leaves them, and so are
    lower ranks (TF Serving's own half_plus_two test feeds ``[2.0]`` to an ``x``
    of shape ``[-1, 1]``).  But TensorFlow's oneDNN kernels for convolutions and
    pooling, which image inputs reach, do not refuse a tensor of the wrong rank:
    they abort the inference worker (a CHECK failure) or answer with a wrong shape.
    """
    declared = spec.shape
    if declared is None or len(declared) < 3 or np.ndim(array) == len(declared):
        return
    shape = [-1 if d is None else d for d in declared]
    raise InvalidRequest(f"{where}: {spec.key} must have {len(declared)} dimensions (shape {shape}), got "
                         f"{np.ndim(array)} (shape {list(np.shape(array))}): send a {len(declared)}-dimensional "
                         "value, batch dimension included", code="invalid_input")


def to_array(value: Any, spec, where: str) -> np.ndarray:
    """A JSON value as an array of the input's dtype, or a 400 that says what is wrong.  Its shape is
    whatever the JSON nests (regular, not ragged): the graph checks it, as in TF Serving, but for the
    rank of inputs of 3 or more dimensions (``check_rank``)."""
    array = _to_array(value, spec, where)
    check_rank(spec, array, where)
    return array


def _to_array(value: Any, spec, where: str) -> np.ndarray:
    dtype = spec.dtype
    if dtype.name == "string":
        if _contains(value, lambda v: not isinstance(v, (str, dict, list))):
            raise _bad(f"{where}: expected strings (or {{\"b64\": ...}}) for {spec.key} (string), got numbers, "
                       "booleans or null")
        array = np.array(_decode_strings(value), dtype=object)
        if array.size and any(isinstance(v, list) for v in array.ravel()):
            raise _bad(f"{where}: {spec.key} is ragged (lists of different lengths): a tensor's rows must all "
                       "have the same shape")
        return array
    return _numbers(value, spec, where)


def _numbers(value: Any, spec, where: str) -> np.ndarray:
    """Numbers as the input's dtype: checked as whole arrays (a million values take milliseconds);
    anything irregular goes through the element-wise checks, which name the problem."""
    dtype = spec.dtype
    try:
        raw = np.array(value)
    except (ValueError, TypeError, OverflowError):
        raw = None  # ragged
    if raw is None or raw.dtype.kind not in "biuf":
        return _numbers_checked(value, spec, where)
    if dtype.is_bool and raw.dtype.kind != "b" and raw.size:
        raise _bad(f"{where}: expected true/false for {spec.key} (bool)")
    if dtype.is_integer and raw.size:
        if raw.dtype.kind == "f" and not np.all(np.isfinite(raw) & (np.floor(raw) == raw)):
            raise _bad(f"{where}: {spec.key} is {dtype.name}; got a fractional number")
        info = np.iinfo(dtype.as_numpy_dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise _bad(f"{where}: {spec.key} is {dtype.name}; a value is outside {info.min}..{info.max}")
    return raw.astype(dtype.as_numpy_dtype, copy=False)


def _numbers_checked(value: Any, spec, where: str) -> np.ndarray:
    dtype = spec.dtype
    if _contains(value, lambda v: isinstance(v, (str, dict))):
        raise _bad(f"{where}: expected numbers for {spec.key} ({dtype.name}), got strings or objects")
    if dtype.is_bool and _contains(value, lambda v: not isinstance(v, (bool, list))):
        raise _bad(f"{where}: expected true/false for {spec.key} (bool)")
    try:
        array = np.array(value, dtype=dtype.as_numpy_dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _bad(f"{where}: {spec.key} is not a regular {dtype.name} tensor (ragged: lists of different "
                   f"lengths, mixed rows, or out of range?): {exc}") from exc
    if dtype.is_integer and _contains(value, lambda v: isinstance(v, float) and not float(v).is_integer()):
        raise _bad(f"{where}: {spec.key} is {dtype.name}; got a fractional number")
    return array


def _contains(value: Any, test) -> bool:
    if isinstance(value, list):
        return any(_contains(v, test) for v in value)
    return test(value)


def parse_predict(body: Any, inputs: list) -> tuple[dict[str, np.ndarray], str]:
    """Feeds keyed by tensor name, and the format ("row" or "columnar") to answer in, for a signature
    with ``inputs``."""
    if not isinstance(body, dict):
        raise _bad('the body must be a JSON object with "instances" or "inputs"')
    if "instances" in body and "inputs" in body:
        raise _bad("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist: send "
                   'either "instances" (row format) or "inputs" (columnar format), not both')
    by_key = {s.key: s for s in inputs}
    by_key.update({s.name.rsplit(":", 1)[0]: s for s in inputs})
    required = [s for s in inputs if not getattr(s, "optional", False)]
    if "instances" in body:
        return _rows(body["instances"], inputs, by_key, required), "row"
    if "inputs" in body:
        return _columns(body["inputs"], inputs, by_key, required), "columnar"
    raise _bad('missing "instances" (row format) or "inputs" (columnar format)')


def _named(values: dict, by_key: dict, required: list, where: str) -> dict:
    unknown = sorted(set(values) - set(by_key))
    if unknown:
        raise _bad(f"{where}: unknown input(s) {', '.join(unknown)}; inputs are "
                   f"{', '.join(sorted({s.key for s in by_key.values()}))}")
    named = {by_key[k].key: v for k, v in values.items()}
    missing = [s.key for s in required if s.key not in named]
    if missing:
        raise _bad(f"{where}: missing input(s) {', '.join(missing)}")
    return named


def _rows(instances: Any, inputs: list, by_key: dict, required: list) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise _bad('"instances" must be a non-empty list, one entry per example')
    single = len(inputs) == 1
    if single and not any(isinstance(instance, dict) for instance in instances):
        return {inputs[0].name: to_array(instances, inputs[0], "instances")}  # the common case, at array speed
    columns: dict[str, list] = {}
    for i, instance in enumerate(instances):
        where = f"instances[{i}]"
        if isinstance(instance, dict) and not (single and set(instance) == {"b64"}):
            named = _named(instance, by_key, required, where)
        elif single:
            named = {inputs[0].key: instance}
        else:
            raise _bad(f"{where}: this model has {len(inputs)} inputs; give each instance as an object "
                       f"keyed by {', '.join(s.key for s in inputs)}")
        if i and set(named) != set(columns):
            raise _bad(f"{where}: every instance must name the same inputs")
        for key, value in named.items():
            columns.setdefault(key, []).append(value)
    specs = {s.key: s for s in inputs}
    return {specs[k].name: to_array(v, specs[k], "instances") for k, v in columns.items()}


def _columns(values: Any, inputs: list, by_key: dict, required: list) -> dict[str, np.ndarray]:
    if isinstance(values, dict) and not (len(inputs) == 1 and set(values) == {"b64"}):
        named = _named(values, by_key, required, "inputs")
    elif len(inputs) == 1:
        named = {inputs[0].key: values}
    else:
        raise _bad(f'"inputs": this model has {len(inputs)} inputs; give an object keyed by '
                   f"{', '.join(s.key for s in inputs)}")
    specs = {s.key: s for s in inputs}
    return {specs[k].name: to_array(v, specs[k], "inputs") for k, v in named.items()}


def _text(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:  # not text after all: base64, so the answer stays valid JSON
        return {"b64": base64.b64encode(value).decode()}


def _jsonable(array: np.ndarray, key: str) -> Any:
    """An output as JSON: strings as text, or as ``{"b64": ...}`` when the key ends in ``_bytes``."""
    if array.dtype == object or array.dtype.kind == "S":
        binary = key.endswith(BYTES_SUFFIX)
        flat = [({"b64": base64.b64encode(v).decode()} if binary else _text(v)) if isinstance(v, bytes) else v
                for v in array.ravel().tolist()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def format_predict(outputs: dict[str, np.ndarray], specs: list, form: str) -> dict:
    """The answer in the format of the request."""
    if form == "columnar":
        if len(specs) == 1:
            return {"outputs": _jsonable(outputs[specs[0].name], specs[0].key)}
        return {"outputs": {s.key: _jsonable(outputs[s.name], s.key) for s in specs}}
    rows = {s.key: np.asarray(outputs[s.name]) for s in specs}
    counts = {a.shape[0] if a.ndim else None for a in rows.values()}
    if len(counts) != 1 or None in counts:
        raise _bad("the outputs do not share a batch dimension, so they cannot be split into rows: "
                   'use the columnar format ("inputs")')
    n = counts.pop()
    if len(specs) == 1:
        return {"predictions": _jsonable(rows[specs[0].key], specs[0].key)}
    columns = {k: _jsonable(a, k) for k, a in rows.items()}
    return {"predictions": [{k: column[i] for k, column in columns.items()} for i in range(n)]}


def predict(graph, body: Any, max_elements: int) -> dict:
    """A :predict body run on the signature it names, answered in its own format."""
    from registry.serving.signature import find  # TensorFlow's protos: with the graph, not this module

    signature = find(graph, signature_name(body), api="predict")
    feeds, form = parse_predict(body, signature.inputs)
    outputs = graph.run(feeds, [s.name for s in signature.outputs])
    check_answer_size(outputs, max_elements)
    return format_predict(outputs, signature.outputs, form)
