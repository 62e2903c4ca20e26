"""Comparing versions on the same inputs, on any signature: uploaded images or JSON (TF Serving's
``instances``/``inputs``, or ``examples`` for classify/regress signatures), or a stored evaluation set
read batch by batch, so a set larger than one request streams through.

Before any version runs, every version's graph is loaded and the inputs' first batch is checked
against each version's signature inputs (name, dtype, shape): all mismatches are named in one 400.
Expected labels a version's labels file does not have are named too.  Then each batch runs on every
version (through the label service's batching inference workers) and the figures of
:mod:`registry.evaluation.metrics` accumulate; the report keeps today's ``:compare`` keys (versions,
agreement, images) beside the new ones.

A comparison is a classifier's when the signature classifies, or its score output is the version's
prediction output and the version has a labels file or a Softmax/Sigmoid there, or the output's rows
are probabilities; else numeric.  ``kind`` in the request overrides that.

The inputs are ``compare_inputs.py``'s, each version's feeding and checking ``compare_runners.py``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from registry import catalog
from registry.auth.audit import SYSTEM
from registry.errors import InferenceUnavailable, InvalidRequest, RegistryError
from registry.evaluation import EvalBatch, metrics, reports
from registry.evaluation.sets import get_eval_set
from registry.serving.compare_inputs import (EXAMPLES, IMAGE_INPUTS, INSTANCES, Source, eval_set_source,
                                             uploaded_images, uploaded_json)
from registry.serving.compare_runners import (Runner, check_instances, class_names, is_classifier, prepare,
                                              run_all, score_key)

CLASSIFIER, NUMERIC = "classifier", "numeric"
KINDS = (CLASSIFIER, NUMERIC)
MAX_MISMATCHES = 50
__all__ = ["CLASSIFIER", "EXAMPLES", "IMAGE_INPUTS", "INSTANCES", "NUMERIC", "Comparison", "Runner", "Source",
           "eval_set_source", "request_comparison", "run_report", "uploaded_images", "uploaded_json"]


def _bad(message: str, code: str = "invalid_compare_request") -> InvalidRequest:
    return InvalidRequest(message, code=code)


# -- the comparison ---------------------------------------------------------------------------------

class Comparison:
    """Several versions on one source of inputs; :meth:`check` refuses what does not fit before anything
    runs, :meth:`run` streams the batches through and returns the report."""

    def __init__(self, service, name: str, chosen: list[tuple[str, Any]], source: Source, *,
                 signature: str = "", top_k: int = 5, tolerance: float = 1e-6, kind: str | None = None,
                 strict_labels: bool = True, record_agreements: bool = True) -> None:
        if kind is not None and kind not in KINDS:
            raise _bad(f"kind must be {' or '.join(KINDS)}, not {kind!r}")
        self.service = service
        self.name = name
        self.chosen = chosen
        self.source = source
        self.signature = signature or ""
        self.top_k = top_k
        self.tolerance = tolerance
        self.kind = kind
        self.strict_labels = strict_labels  # JSON and sets: unknown expected labels are a 400
        self.record_agreements = record_agreements
        self.runners: list[Runner] = []

    @property
    def batch_size(self) -> int:
        return max(1, self.service.settings.compare_max_images)

    def check(self) -> None:
        """Load every version and check the inputs against each one's signature (one 400 naming every
        mismatch), and the expected labels against each labels file."""
        self.runners = [prepare(self.service, ref, version, self.source.kind, self.signature)
                        for ref, version in self.chosen]
        problems = [m for r in self.runners for m in r.mismatches]
        first = next(iter(self.source.batches(self.batch_size)), None)
        if first is None:
            raise _bad("there are no inputs to compare on", code="no_inputs")
        if self.source.kind == INSTANCES:
            for runner in self.runners:
                if runner.signature is not None and not runner.mismatches:
                    problems += check_instances(runner, first.instances or {})
        if problems:
            shown = problems[:MAX_MISMATCHES]
            more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
            raise InvalidRequest("the inputs do not fit the versions' signatures: " + "; ".join(shown) + more
                                 + ". Send inputs every compared version takes, or choose a signature with "
                                 "signature_name", code="signature_mismatch")
        if self.strict_labels and self.source.has_expected and self.kind != NUMERIC:
            self._check_labels()

    def _check_labels(self) -> None:
        labelled = [r for r in self.runners if r.graph.labels]
        if not labelled:
            return
        expected: list = []
        for batch in self.source.batches(self.batch_size):
            expected += [e for e in batch.expected or [] if e is not None]
        if not expected or not all(isinstance(e, str) for e in expected):
            return  # numbers: values of a numeric comparison, or class indices
        problems = []
        for runner in labelled:
            unknown = sorted({e for e in expected if e not in set(runner.graph.labels)})
            if unknown:
                listed = ", ".join(repr(u) for u in unknown[:20]) + (f" and {len(unknown) - 20} more"
                                                                      if len(unknown) > 20 else "")
                problems.append(f"v{runner.number}'s labels file has no {listed}")
        if problems:
            raise InvalidRequest("expected labels not in the labels file: " + "; ".join(problems)
                                 + ": give each input's expected label as the labels file names it",
                                 code="unknown_expected_label")

    def run(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        if not self.runners:
            self.check()
        numbers = [r.number for r in self.runners]
        timings = metrics.Timings()
        classifier: metrics.ClassifierFigures | None = None
        numeric: metrics.NumericFigures | None = None
        kind = self.kind
        keep_results = self.source.total <= self.service.settings.compare_max_images
        results: dict[int, list] = {n: [] for n in numbers}
        keys: list[str] = []
        expected_all: list = []
        done = 0
        started = time.perf_counter()
        for batch in self.source.batches(self.batch_size):
            outputs, took = run_all(self.service, self.runners, batch)
            for runner in self.runners:
                timings.add(runner.number, took[runner.number], len(batch))
            if kind is None:
                kind = CLASSIFIER if is_classifier(self.runners[0], outputs[numbers[0]]) else NUMERIC
            keys += batch.keys
            expected_all += list(batch.expected) if batch.expected is not None else [None] * len(batch)
            if kind == CLASSIFIER:
                classifier = classifier or metrics.ClassifierFigures(numbers, self.top_k)
                scores, names = {}, {}
                for runner in self.runners:
                    key = score_key(runner, outputs[runner.number])
                    if key is None or key not in outputs[runner.number]:
                        raise _bad(f"v{runner.number} has no output of class scores in signature "
                                   f"{getattr(runner.signature, 'name', '')!r}: compare it as numeric "
                                   '("kind": "numeric")', code="not_a_classifier")
                    rows = np.asarray(outputs[runner.number][key], dtype=np.float64).reshape(len(batch), -1)
                    scores[runner.number], names[runner.number] = rows, class_names(runner, outputs[runner.number])
                    if keep_results:
                        results[runner.number] += [
                            {"key": k, "image": k, "predictions": _top(row, names[runner.number], self.top_k)}
                            for k, row in zip(batch.keys, rows)]
                classifier.add(batch.keys, scores, names, batch.expected)
            else:
                numeric = numeric or metrics.NumericFigures(numbers, self.tolerance)
                compared = {n: {k: a.reshape(len(batch), -1) for k, a in outputs[n].items()
                                if a.dtype.kind in "biuf" and a.ndim >= 1 and a.shape[0] == len(batch)}
                            for n in numbers}
                numeric.add(compared, self._expected_values(batch, compared[numbers[0]]))
            done += len(batch)
            if progress is not None:
                progress(done, max(done, self.source.total))
        return self._report(kind, classifier, numeric, timings, results if keep_results else None, keys,
                            expected_all, time.perf_counter() - started)

    def _expected_values(self, batch: EvalBatch, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The expected values of a numeric batch, for its one output (or a regress signature's)."""
        if batch.expected is None or not outputs:
            return None
        key = next(iter(outputs)) if len(outputs) == 1 else ("outputs" if "outputs" in outputs else None)
        if key is None:
            return None
        width = outputs[key].shape[1]
        rows = []
        for value in batch.expected:
            if value is None:
                rows.append([np.nan] * width)
                continue
            row = np.asarray(value, dtype=np.float64).reshape(-1)
            if row.size != width:
                raise _bad(f"an expected value has {row.size} numbers but output {key} has {width} per input",
                           code="invalid_expected")
            rows.append(row)
        return {key: np.asarray(rows, dtype=np.float64)}

    def _report(self, kind, classifier, numeric, timings, results, keys, expected, seconds) -> dict[str, Any]:
        versions = []
        figures = classifier.figures() if classifier else numeric.figures() if numeric else {"versions": {}}
        for runner in self.runners:
            n = runner.number
            timing = timings.figures(n)
            total_ms = sum(timings.seconds.get(n, [])) * 1000
            entry = {"version": n, "ref": runner.ref, "aliases": runner.version.aliases,
                     "sha256": runner.version.frozen_sha256, "load_ms": runner.load_ms,
                     "latency_ms": round(total_ms, 3), "latency_per_image_ms": round(total_ms / max(1, len(keys)), 3),
                     "latency": timing, "inputs_per_second": timing["inputs_per_second"], "accuracy": None,
                     **figures["versions"].get(n, {})}
            if results is not None and kind == CLASSIFIER:
                entry["results"] = results[n]
            versions.append(entry)
        report: dict[str, Any] = {
            "model": self.name, "kind": kind, "signature": self._signature_used(), "inputs": len(keys),
            "eval_set": self.source.eval_set.ref if self.source.eval_set else None, "top_k": self.top_k,
            "tolerance": self.tolerance, "versions": versions,
            "timing_ms": {"preprocess": 0.0, "preprocessing_runs": 0, "total": round(seconds * 1000, 3)},
        }
        if kind == CLASSIFIER:
            listed = figures["disagreements"]
            report["agreement"] = {"pairs": figures["pairs"], "disagreements": [d["key"] for d in listed],
                                   "disagreement_count": figures["disagreement_count"], "inputs": listed}
            if results is not None and self.source.kind == IMAGE_INPUTS:
                wrong = {d["index"] for d in listed}
                report["images"] = [{"image": k, "expected": expected[i],
                                     "top1": {str(r.number): results[r.number][i]["predictions"][0]["label"]
                                              for r in self.runners}, "agree": i not in wrong}
                                    for i, k in enumerate(keys)]
            if self.record_agreements and figures["pairs"]:
                catalog.record_agreements(self.service.db, self.name, [
                    (p["a"], p["b"], p["top1_agreement"], p["mean_abs_score_diff"], len(keys))
                    for p in figures["pairs"]])
        elif numeric is not None:
            report["differences"] = {"pairs": figures["pairs"], "tolerance": self.tolerance}
        return report

    def _signature_used(self) -> str:
        first = self.runners[0]
        return first.signature.name if first.signature is not None else first.version.default_signature


def _top(row: np.ndarray, names: list[str] | None, k: int) -> list[dict]:
    order = metrics.top_indices(row[None, :], k)[0]
    return [{"index": int(i), "label": names[i] if names and i < len(names) and names[i] else str(int(i)),
             "score": float(row[i])} for i in order]


def pinned(chosen: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The versions as a report names them: number, sha256 of the graph run, and the ref asked for."""
    return [{"version": v.version, "sha256": v.frozen_sha256, "ref": ref} for ref, v in chosen]



# -- run now, or as a job ------------------------------------------------------------------------------

def request_comparison(service, name: str, source: Source, *, refs: list[str] | None, signature: str = "",
                       top_k: int = 5, tolerance: float = 1e-6, kind: str | None = None, strict_labels: bool = True,
                       actor=None) -> tuple[Any, bool]:
    """Check a comparison, then run it now (a small one: the stored report, True) or queue it as a job
    (more inputs than REGISTRY_COMPARE_SYNC_MAX: the queued report, False)."""
    actor = actor or SYSTEM
    settings = service.settings
    chosen = service._compare_versions(name, refs)
    comparison = Comparison(service, name, chosen, source, signature=signature, top_k=top_k, tolerance=tolerance,
                            kind=kind, strict_labels=strict_labels)
    comparison.check()
    stored = {"top_k": top_k, "tolerance": tolerance, "kind": kind, "strict_labels": strict_labels}
    # uploaded multipart images are not kept anywhere a job could read them: they always run now
    uploaded_images = source.kind == IMAGE_INPUTS and source.upload is None and source.eval_set is None
    run_now = source.total <= settings.compare_sync_max or uploaded_images
    if not run_now:
        if source.upload is not None:
            stored["inputs"] = source.upload
        candidate = max((v for _, v in chosen), key=lambda v: v.version)
        info = reports.create(service.db, name, versions=pinned(chosen), signature=signature, settings=stored,
                              total=source.total, eval_set=source.eval_set, job_version_id=candidate.id, actor=actor,
                              max_attempts=settings.job_max_attempts)
        return info, False
    info = reports.create(service.db, name, versions=pinned(chosen), signature=signature, settings=stored,
                          total=source.total, eval_set=source.eval_set, actor=actor)
    reports.start(service.db, info.id, source.total)
    try:
        report = comparison.run()
    except Exception as exc:
        reports.fail(service.db, info.id, getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")
        raise
    reports.finish(service.db, info.id, report, actor=actor)
    return reports.get(service.db, name, info.id), True


class JobFailed(Exception):
    """A comparison job that cannot succeed (retrying would not help)."""


class LeaseLost(Exception):
    """Another worker holds the job now: stop without recording anything."""


DONE, LOST = "done", "lost"


def run_report(service, storage, report_id: int, on_progress: Callable[[], bool] | None = None) -> str:
    """Run a queued report (the worker's compare job): versions as pinned, inputs as stored; progress
    written as it goes.  ``on_progress`` (the lease's heartbeat) returning False stops it.  Returns
    ``"done"``, ``"lost"`` (another worker holds the job now) or why it failed for good; raises what
    a later attempt may not meet (an inference worker that went away, the database away)."""
    db = service.db
    info = reports.load_for_run(db, report_id)
    if info.status == reports.DONE:
        return DONE
    try:
        chosen = []
        for entry in info.versions:
            version = service.resolve(info.model, str(entry["version"]))
            if entry.get("sha256") and version.frozen_sha256 != entry["sha256"]:
                raise JobFailed(f"version {entry['version']} is not the graph the report names any more")
            chosen.append((entry.get("ref") or str(entry["version"]), version))
        if info.eval_set is not None:
            source = eval_set_source(storage, get_eval_set(db, info.model, info.eval_set["name"],
                                                           info.eval_set["revision"]))
        elif info.settings.get("inputs") is not None:
            source = uploaded_json(info.settings["inputs"])
        else:
            raise JobFailed("the report keeps no inputs to run on")
        settings = info.settings
        comparison = Comparison(service, info.model, chosen, source, signature=info.signature,
                                top_k=int(settings.get("top_k") or 5), tolerance=float(settings.get("tolerance") or 0),
                                kind=settings.get("kind"), strict_labels=bool(settings.get("strict_labels", True)))
        comparison.check()
        reports.start(db, report_id, source.total)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - last[0] < 0.5:
                return
            last[0] = now
            reports.progress(db, report_id, done, total)
            if on_progress is not None and not on_progress():
                raise LeaseLost()

        report = comparison.run(progress)
    except LeaseLost:
        return LOST
    except InferenceUnavailable:
        raise  # a worker process went away: the job is tried again (bounded by its attempts)
    except (JobFailed, RegistryError) as exc:
        why = getattr(exc, "message", None) or str(exc)
        reports.fail(db, report_id, why)
        return why
    reports.finish(db, report_id, report)
    return DONE
