"""How a shadow's answer compares with the primary's, per input: the same top-1 class for class scores,
numbers within a tolerance, strings equal; with the absolute differences of every numeric value."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Comparison:
    """Primary against shadow on one request: per input (row) whether they agree, and the differences."""

    agree: np.ndarray  # bool per row
    largest: np.ndarray  # per row: the largest |difference| of a numeric value
    values: int = 0
    sum_abs_diff: float = 0.0
    max_abs_diff: float = 0.0

    @property
    def rows(self) -> int:
        return int(self.agree.shape[0])


def is_class_scores(array: np.ndarray, labelled: bool) -> bool:
    """Rows of class scores: a float [batch, classes] output that a labels file names, or whose rows are
    probabilities (in [0, 1], summing to 1)."""
    if array.dtype.kind != "f" or array.ndim != 2 or array.shape[1] < 2:
        return False
    if labelled:
        return True
    return bool(np.all((array >= 0) & (array <= 1)) and np.allclose(array.sum(axis=1), 1.0, atol=1e-3))


def _rows(arrays: list[np.ndarray]) -> int:
    """The batch size the outputs share (1 when they share none: the request is one input)."""
    firsts = {a.shape[0] if a.ndim else None for a in arrays}
    return firsts.pop() if len(firsts) == 1 and None not in firsts and 0 not in firsts else 1


def compare(primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray], tolerance: float,
            scores: str | None = None) -> Comparison:
    """Compare the outputs both answered, per input: class scores by their top-1 class, other numbers
    within ``tolerance``, strings equal; a shape that differs is a disagreement on every input."""
    keys = [k for k in primary if k in shadow]
    arrays = {k: (np.asarray(primary[k]), np.asarray(shadow[k])) for k in keys}
    rows = _rows([p for p, _ in arrays.values()])
    result = Comparison(np.ones(rows, dtype=bool), np.zeros(rows))
    for key, (p, s) in arrays.items():
        if p.shape != s.shape:
            result.agree[:] = False
            continue
        p2, s2 = p.reshape(rows, -1), s.reshape(rows, -1)
        if p.dtype.kind not in "biuf" or s.dtype.kind not in "biuf":
            result.agree &= np.all(p2 == s2, axis=1)
            continue
        pf, sf = p2.astype(np.float64), s2.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(pf - sf)
        diff[np.isnan(pf) & np.isnan(sf)] = 0.0
        finite = np.isfinite(diff)
        if is_class_scores(p, labelled=key == scores) and is_class_scores(s, labelled=key == scores):
            row_agree = np.argmax(p2, axis=1) == np.argmax(s2, axis=1)
        else:
            row_agree = np.all(finite & (diff <= tolerance), axis=1)
        result.agree &= row_agree & np.all(finite, axis=1)
        shown = np.where(finite, diff, 0.0)
        if shown.shape[1]:
            result.largest = np.maximum(result.largest, shown.max(axis=1))
        result.values += int(finite.sum())
        result.sum_abs_diff += float(shown.sum())
        result.max_abs_diff = max(result.max_abs_diff, float(shown.max()) if shown.size else 0.0)
    return result
