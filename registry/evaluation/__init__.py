"""Comparative inference: stored evaluation sets, comparisons of versions on them (kept as reports),
and shadow traffic.

* ``formats.py``: the evaluation-set formats (a zip/tar of images with expected labels, JSON Lines of
  TF Serving instances, ``.npz`` arrays, TFRecord files of ``tf.Example``), checked at upload without
  TensorFlow (``archive.py``: image archives and their expected labels; ``tfrecord.py``: TFRecord
  framing with its CRC32C, and tf.Example read at the wire level);
* ``sets.py``: the service: add a revision, list, get, download, delete (audited);
* ``reader.py``: a stored set read back in batches (:class:`EvalBatch`) for a comparison;
* ``metrics.py``: what a comparison measures (agreement, accuracy, confusion, differences, latency);
* ``compare.py`` and ``reports.py``: comparisons run now or as a job, and the reports they leave.

The entities below are what the parts exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# the formats of an evaluation set
IMAGES = "images"  # a zip or tar of images, optional expected.txt or CSV (file,label)
JSONL = "jsonl"  # JSON Lines: {"instances": [...]} rows or one input object per line, optional "expected"
NPZ = "npz"  # numpy arrays keyed by input name, optional "expected" array
TFRECORD = "tfrecord"  # serialized tf.Examples, the expected value in a named label feature
FORMATS = (IMAGES, JSONL, NPZ, TFRECORD)


@dataclass(frozen=True)
class EvalSetInfo:
    """One revision of a stored evaluation set."""

    id: int
    model: str
    name: str
    revision: int
    format: str
    filename: str
    sha256: str
    size: int
    count: int  # inputs in the set
    summary: dict[str, Any]  # e.g. {"inputs": {name: {"dtype", "shape"}}, "expected": bool, "label_feature": ...}
    description: str
    created_by: str
    created_at: datetime
    deleted_at: datetime | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.revision}"


@dataclass
class EvalBatch:
    """Consecutive inputs of a set, as one request would carry them.

    Exactly one of ``images`` (encoded image bytes, as :label takes them), ``instances`` (input name ->
    list of values, one per input, as TF Serving's columnar ``inputs``) and ``examples`` (serialized
    tf.Examples, for classify/regress signatures) is set.  ``keys`` name each input (a file name in the
    archive, ``line 12``, ``row 3``, ``record 7``); ``expected`` holds each input's expected label or
    value where the set has them."""

    start: int  # index of the first input in the set
    keys: list[str]
    images: list[bytes] | None = None
    instances: dict[str, list] | None = None
    examples: list[bytes] | None = None
    expected: list[Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)
