"""What a comparison runs on (:class:`Source`): uploaded images, uploaded JSON (TF Serving's
``instances``/``inputs``, or ``examples`` for classify/regress signatures), or a stored evaluation set,
each handed out in batches of :class:`registry.evaluation.EvalBatch` (read again when asked again)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidRequest
from registry.evaluation import IMAGES, TFRECORD, EvalBatch, EvalSetInfo
from registry.evaluation.reader import read_batches

IMAGE_INPUTS, INSTANCES, EXAMPLES = "images", "instances", "examples"


def _bad(message: str, code: str = "invalid_compare_request") -> InvalidRequest:
    return InvalidRequest(message, code=code)


@dataclass
class Source:
    """The inputs of a comparison: their kind, how many, and their batches (read again on demand)."""

    kind: str  # images, instances, examples
    total: int
    read: Callable[[int], Iterator[EvalBatch]]
    eval_set: EvalSetInfo | None = None
    upload: dict[str, Any] | None = None  # uploaded JSON, kept with a queued report for its job
    has_expected: bool = False

    def batches(self, size: int) -> Iterator[EvalBatch]:
        return self.read(max(1, size))


def _sliced(batch: EvalBatch) -> Callable[[int], Iterator[EvalBatch]]:
    """Batches of ``size`` from one batch held in memory (uploaded inputs)."""
    def read(size: int) -> Iterator[EvalBatch]:
        for start in range(0, len(batch), size):
            end = start + size
            yield EvalBatch(
                start=start, keys=batch.keys[start:end],
                images=batch.images[start:end] if batch.images is not None else None,
                instances=({k: v[start:end] for k, v in batch.instances.items()}
                           if batch.instances is not None else None),
                examples=batch.examples[start:end] if batch.examples is not None else None,
                expected=batch.expected[start:end] if batch.expected is not None else None)
    return read


def uploaded_images(images: list, expected: list | None) -> Source:
    """Images from a multipart request (``registry.serving.service.Image``), as :compare took them."""
    batch = EvalBatch(0, [image.name for image in images], images=[image.data for image in images],
                      expected=expected)
    return Source(IMAGE_INPUTS, len(images), _sliced(batch), has_expected=expected is not None)


def _columns(body: dict) -> tuple[dict[str, list], int]:
    """TF Serving's ``instances`` (rows) or ``inputs`` (columns) as input key -> one value per input;
    the key ``""`` stands for a signature's only input when the body does not name it."""
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise _bad('"instances" must be a non-empty list, one entry per input')
        named = [isinstance(r, dict) and set(r) != {"b64"} for r in rows]
        if any(named) and not all(named):
            raise _bad('"instances": give every instance as an object keyed by input name, or none')
        if not named[0]:
            return {"": list(rows)}, len(rows)
        columns: dict[str, list] = {}
        for i, row in enumerate(rows):
            if i and set(row) != set(columns):
                raise _bad(f"instances[{i}]: every instance must name the same inputs")
            for key, value in row.items():
                columns.setdefault(key, []).append(value)
        return columns, len(rows)
    values = body["inputs"]
    columns = dict(values) if isinstance(values, dict) and set(values) != {"b64"} else {"": values}
    counts = {len(v) if isinstance(v, list) else -1 for v in columns.values()}
    if len(counts) != 1 or -1 in counts or 0 in counts:
        raise _bad('"inputs": every input must be a list with one entry per input, all of the same length')
    return columns, counts.pop()


def uploaded_json(body: Any) -> Source:
    """A JSON body's inputs: ``instances``/``inputs`` (:predict's), or ``examples`` (:classify's), with
    an optional ``expected`` list (a label or value per input)."""
    if not isinstance(body, dict):
        raise _bad('the body must be a JSON object: {"versions": [...], "instances": [...]} or "inputs", '
                   '"examples", or "eval_set"')
    given = [k for k in ("instances", "inputs", "examples") if k in body]
    if len(given) != 1:
        raise _bad('send exactly one of "instances", "inputs" (TF Serving\'s :predict bodies), "examples" '
                   '(:classify and :regress) or "eval_set"')
    expected = body.get("expected")
    if given[0] == "examples":
        from registry.serving.examples import example_from_json  # TensorFlow's protos: a comparison needs them

        examples = body["examples"]
        if not isinstance(examples, list) or not examples:
            raise _bad('"examples" must be a non-empty list of {"feature": value, ...} objects')
        serialized = [example_from_json(e, f"examples[{i}]").SerializeToString() for i, e in enumerate(examples)]
        batch = EvalBatch(0, [f"examples[{i}]" for i in range(len(serialized))], examples=serialized)
        where = "examples"
    else:
        columns, count = _columns(body)
        batch = EvalBatch(0, [f"{given[0]}[{i}]" for i in range(count)], instances=columns)
        where = given[0]
    if expected is not None:
        if not isinstance(expected, list) or len(expected) != len(batch):
            raise _bad(f'"expected" must be a list with one label or value per input ({len(batch)}), not '
                       f"{len(expected) if isinstance(expected, list) else type(expected).__name__}",
                       code="invalid_expected")
        batch.expected = expected
    kind = EXAMPLES if where == "examples" else INSTANCES
    return Source(kind, len(batch), _sliced(batch), upload={k: body[k] for k in (*given, "expected") if k in body},
                  has_expected=expected is not None)


def eval_set_source(storage, info: EvalSetInfo) -> Source:
    """A stored evaluation set, read in batches when the comparison runs."""
    kind = IMAGE_INPUTS if info.format == IMAGES else EXAMPLES if info.format == TFRECORD else INSTANCES
    return Source(kind, info.count, lambda size: read_batches(storage, info, size), eval_set=info,
                  has_expected=bool((info.summary or {}).get("expected")))
