"""What a comparison measures, as plain numpy: each figure a small pure function, and two accumulators
that take a comparison's outputs batch by batch (a set larger than one request streams through) and
give the figures at the end.

Classifiers (a classify signature, or a probability/score output): top-1 and top-k agreement between
versions, accuracy against expected labels, a confusion matrix per version over the classes seen,
the inputs on which versions disagree.  Numeric outputs: per output the largest and mean absolute
difference between versions, the share of values within a tolerance, MAE/RMSE against expected values.
Both: latency p50/p95 per version and inputs per second.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

MAX_LISTED = 1000  # disagreeing inputs named in a report (the count is always complete)


# -- pure figures --------------------------------------------------------------------------------

def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the ``k`` highest scores, best first (ties: the lower index first)."""
    scores = np.asarray(scores)
    k = max(1, min(k, scores.shape[1]))
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def agreement(a: Sequence, b: Sequence) -> float:
    """The share of inputs on which two versions' top-1 classes are the same."""
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    return float(np.mean(a == b)) if len(a) else 0.0


def topk_agreement(top_a: Sequence[Sequence], top_b: Sequence[Sequence]) -> float:
    """The share of inputs on which each version's top-1 class is among the other's top k."""
    if not len(top_a):
        return 0.0
    hits = [ra[0] in list(rb) and rb[0] in list(ra) for ra, rb in zip(top_a, top_b)]
    return float(np.mean(hits))


def accuracy(top: Sequence[Sequence], expected: Sequence, k: int = 1) -> float:
    """The share of inputs whose expected class is among the first ``k`` predicted."""
    if not len(expected):
        return 0.0
    return float(np.mean([e in list(row)[:k] for row, e in zip(top, expected)]))


def confusion(expected: Sequence, predicted: Sequence) -> dict:
    """A confusion matrix over the classes seen (in either list, sorted): ``matrix[i][j]`` counts the
    inputs of class ``classes[i]`` predicted as ``classes[j]``."""
    classes = sorted({str(c) for c in expected} | {str(c) for c in predicted},
                     key=lambda c: (not c.isdecimal(), int(c) if c.isdecimal() else 0, c))
    where = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for e, p in zip(expected, predicted):
        matrix[where[str(e)], where[str(p)]] += 1
    return {"classes": classes, "matrix": matrix.tolist()}


def disagreeing(top1: dict[int, Sequence]) -> list[int]:
    """The positions of the inputs on which the versions' top-1 classes are not all the same."""
    columns = list(top1.values())
    if not columns:
        return []
    return [i for i in range(len(columns[0])) if len({column[i] for column in columns}) > 1]


# |difference| histogram bins: below 1e-9 (0 included), then decades up to 10 and above (the last is open)
HISTOGRAM_EDGES = [0.0, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]


def abs_differences(a: np.ndarray, b: np.ndarray, tolerance: float) -> dict:
    """Sums of |a - b| over the values of one output: the largest, the sum, how many, how many within
    ``tolerance``, and a histogram over :data:`HISTOGRAM_EDGES` (bin i counts edges[i] <= |d| <
    edges[i+1], the last |d| >= 10; summed across batches, then :func:`difference_figures`)."""
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).ravel()
    zero = int(np.count_nonzero(diff == 0))
    rest = np.histogram(diff[diff > 0], bins=[*HISTOGRAM_EDGES[1:], np.inf])[0] if diff.size else []
    below = int(np.count_nonzero((diff > 0) & (diff < HISTOGRAM_EDGES[1])))
    return {"max": float(diff.max()) if diff.size else 0.0, "sum": float(diff.sum()), "values": int(diff.size),
            "within": int(np.count_nonzero(diff <= tolerance)),
            "histogram": [zero + below, *(int(c) for c in rest)] if diff.size else [0] * len(HISTOGRAM_EDGES)}


def errors(predicted: np.ndarray, expected: np.ndarray) -> dict:
    """Sums of the absolute and squared errors against expected values (then :func:`error_figures`)."""
    err = np.asarray(predicted, dtype=np.float64) - np.asarray(expected, dtype=np.float64)
    return {"abs": float(np.abs(err).sum()), "sq": float((err * err).sum()), "values": int(err.size)}


def merge(total: dict | None, part: dict) -> dict:
    """Two sums of :func:`abs_differences` or :func:`errors` as one."""
    if total is None:
        return dict(part)
    return {k: max(total[k], part[k]) if k == "max" else [x + y for x, y in zip(total[k], part[k])]
            if k == "histogram" else total[k] + part[k] for k in part}


def difference_figures(sums: dict) -> dict:
    n = sums["values"]
    return {"max_abs_diff": sums["max"], "mean_abs_diff": sums["sum"] / n if n else 0.0,
            "within_tolerance": sums["within"] / n if n else 0.0, "values": n,
            "histogram": {"edges": HISTOGRAM_EDGES, "counts": sums.get("histogram", [])}}


def error_figures(sums: dict) -> dict:
    n = sums["values"]
    return {"mae": sums["abs"] / n if n else 0.0, "rmse": float(np.sqrt(sums["sq"] / n)) if n else 0.0, "values": n}


def latency(batch_seconds: Sequence[float], batch_sizes: Sequence[int]) -> dict:
    """p50/p95 of a version's batch latencies (and per input), and inputs per second over all batches."""
    seconds = np.asarray(batch_seconds, dtype=np.float64)
    sizes = np.asarray(batch_sizes, dtype=np.float64)
    if not seconds.size:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "per_input_p50_ms": 0.0, "per_input_p95_ms": 0.0,
                "inputs_per_second": 0.0, "batches": 0}
    per_input = seconds / np.maximum(sizes, 1)
    total = float(seconds.sum())
    return {"p50_ms": float(np.percentile(seconds, 50) * 1000), "p95_ms": float(np.percentile(seconds, 95) * 1000),
            "per_input_p50_ms": float(np.percentile(per_input, 50) * 1000),
            "per_input_p95_ms": float(np.percentile(per_input, 95) * 1000),
            "inputs_per_second": float(sizes.sum() / total) if total > 0 else 0.0, "batches": int(seconds.size)}


# -- accumulators --------------------------------------------------------------------------------

class Timings:
    def __init__(self) -> None:
        self.seconds: dict[int, list[float]] = {}
        self.sizes: dict[int, list[int]] = {}

    def add(self, version: int, seconds: float, size: int) -> None:
        self.seconds.setdefault(version, []).append(seconds)
        self.sizes.setdefault(version, []).append(size)

    def figures(self, version: int) -> dict:
        return latency(self.seconds.get(version, []), self.sizes.get(version, []))


class ClassifierFigures:
    """Per version: each input's top-k classes (names where the version has them, else indices as
    text) and the sum of |score differences| per pair; figures at the end."""

    def __init__(self, versions: list[int], top_k: int) -> None:
        self.versions = versions
        self.top_k = top_k
        self.top: dict[int, list[list[str]]] = {v: [] for v in versions}  # class names (or indices as text)
        self.index: dict[int, list[list[str]]] = {v: [] for v in versions}  # class indices as text
        self.named: set[int] = set()  # the versions that name their classes
        self.scores: dict[int, list[float]] = {v: [] for v in versions}
        self.expected: list = []
        self.keys: list[str] = []
        self.score_diff: dict[tuple[int, int], dict | None] = {}

    def add(self, keys: list[str], scores: dict[int, np.ndarray], names: dict[int, list[str] | None],
            expected: list | None) -> None:
        self.keys += keys
        self.expected += list(expected) if expected is not None else [None] * len(keys)
        for v in self.versions:
            top = top_indices(scores[v], self.top_k)
            labels = names.get(v)
            if labels:
                self.named.add(v)
            self.index[v] += [[str(int(i)) for i in row] for row in top]
            self.top[v] += [[labels[i] if labels and i < len(labels) and labels[i] else str(int(i)) for i in row]
                            for row in top]
            self.scores[v] += [float(scores[v][r, row[0]]) for r, row in enumerate(top)]
        for a, b in itertools.combinations(self.versions, 2):
            if scores[a].shape == scores[b].shape and self.score_diff.get((a, b), {}) is not None:
                self.score_diff[(a, b)] = merge(self.score_diff.get((a, b)), abs_differences(scores[a], scores[b], 0))
            else:
                self.score_diff[(a, b)] = None

    def figures(self) -> dict:
        k = self.top_k
        top1 = {v: [row[0] for row in self.top[v]] for v in self.versions}
        # versions agree on a class by name when every one names its classes, else by index
        same = self.top if self.named == set(self.versions) else self.index
        first = {v: [row[0] for row in same[v]] for v in self.versions}
        pairs = []
        for a, b in itertools.combinations(self.versions, 2):
            sums = self.score_diff.get((a, b))
            pairs.append({"a": a, "b": b, "top1_agreement": agreement(first[a], first[b]),
                          f"top{k}_agreement": topk_agreement(same[a], same[b]), "topk": k,
                          "mean_abs_score_diff": difference_figures(sums)["mean_abs_diff"] if sums else None,
                          "max_abs_score_diff": sums["max"] if sums else None})
        labelled = [i for i, e in enumerate(self.expected) if e is not None]
        expected = [str(self.expected[i]) for i in labelled]
        per_version = {}
        for v in self.versions:
            entry: dict = {"accuracy": None}
            if labelled:
                top = [self.top[v][i] for i in labelled]
                entry["accuracy"] = {"top1": accuracy(top, expected, 1), f"top{k}": accuracy(top, expected, k),
                                     "k": k, "inputs": len(labelled),
                                     # as :compare has always answered: top-5 (of at most top_k)
                                     "top5": accuracy(top, expected, min(5, k)), "top5_of": min(5, k)}
                entry["confusion"] = {"against": "expected",
                                      **confusion(expected, [top1[v][i] for i in labelled])}
            elif v != self.versions[0]:
                ref = self.versions[0]
                entry["confusion"] = {"against": f"v{ref}", **confusion(first[ref], first[v])}
            per_version[v] = entry
        wrong = disagreeing(first)
        listed = [{"index": i, "key": self.keys[i], "expected": self.expected[i],
                   "top1": {str(v): top1[v][i] for v in self.versions}} for i in wrong[:MAX_LISTED]]
        return {"pairs": pairs, "versions": per_version, "disagreements": listed, "disagreement_count": len(wrong),
                "inputs": len(self.keys)}


class NumericFigures:
    """Per output and pair of versions: sums of |differences|; per version and output: sums of errors
    against expected values."""

    def __init__(self, versions: list[int], tolerance: float) -> None:
        self.versions = versions
        self.tolerance = tolerance
        self.diffs: dict[tuple[str, int, int], dict] = {}
        self.errors: dict[tuple[str, int], dict] = {}
        self.inputs = 0

    def add(self, outputs: dict[int, dict[str, np.ndarray]], expected: dict[str, np.ndarray] | None) -> None:
        """``outputs``: per version, each compared output as an array [batch, ...]; ``expected``: per
        output, the expected values of this batch (inputs without one left out as NaN)."""
        first = outputs[self.versions[0]]
        self.inputs += len(next(iter(first.values()))) if first else 0
        for key in first:
            for a, b in itertools.combinations(self.versions, 2):
                if key in outputs[a] and key in outputs[b] and np.shape(outputs[a][key]) == np.shape(outputs[b][key]):
                    self.diffs[(key, a, b)] = merge(self.diffs.get((key, a, b)),
                                                    abs_differences(outputs[a][key], outputs[b][key], self.tolerance))
        for key, values in (expected or {}).items():
            values = np.asarray(values, dtype=np.float64)
            for v in self.versions:
                predicted = np.asarray(outputs[v][key], dtype=np.float64).reshape(values.shape)
                keep = ~np.isnan(values)
                self.errors[(key, v)] = merge(self.errors.get((key, v)), errors(predicted[keep], values[keep]))

    def figures(self) -> dict:
        pairs = []
        for a, b in itertools.combinations(self.versions, 2):
            pairs.append({"a": a, "b": b, "outputs": {key: difference_figures(sums)
                                                      for (key, x, y), sums in sorted(self.diffs.items())
                                                      if (x, y) == (a, b)}})
        per_version = {v: {"errors": {key: error_figures(sums) for (key, w), sums in sorted(self.errors.items())
                                      if w == v} or None} for v in self.versions}
        return {"pairs": pairs, "versions": per_version, "tolerance": self.tolerance, "inputs": self.inputs}
