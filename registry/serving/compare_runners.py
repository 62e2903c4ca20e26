"""One version made ready for a comparison (:class:`Runner`): its graph loaded, its signature chosen,
the inputs checked against the signature's (name, dtype, shape) before anything runs; a batch run on
it; and how its outputs say whether the comparison is a classifier's."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from registry import signatures as sigs
from registry.errors import InvalidRequest
from registry.evaluation import EvalBatch
from registry.serving.compare_inputs import EXAMPLES, IMAGE_INPUTS
from registry.serving.images import LabelFeed


class _Image(NamedTuple):
    """An encoded image as the label service takes it (its ``Image``: the service imports this module)."""

    name: str
    data: bytes


def _describe(spec) -> str:
    shape = "?" if spec.shape is None else "[" + ", ".join("-1" if d is None else str(d) for d in spec.shape) + "]"
    return f"{spec.key} {spec.dtype.name} {shape}"


@dataclass
class Runner:
    ref: str
    version: Any  # VersionInfo
    graph: Any  # LoadedGraph
    load_ms: float
    signature: Any = None  # loader.Signature (None for images: :label's path)
    task: Any = None  # examples.Task for classify/regress signatures
    score_key: str | None = None  # the output ranked for a classifier
    names: list[str] | None = None  # class names (a labels file, or a classify signature's classes)
    mismatches: list[str] = field(default_factory=list)

    @property
    def number(self) -> int:
        return self.version.version

    def where(self) -> str:
        return f"v{self.number}"


def prepare(service, ref: str, version, kind: str, signature_name: str) -> Runner:
    """A version's graph loaded and its signature chosen (nothing run yet)."""
    graph, load_ms = service._timed_graph(version)
    runner = Runner(ref, version, graph, load_ms, names=graph.labels)
    if kind == IMAGE_INPUTS:
        if signature_name and signature_name != version.default_signature:
            runner.mismatches.append(f"v{version.version}: images run through the default signature "
                                     f"{version.default_signature!r}, not {signature_name!r}")
        try:
            service._image_input(version)
        except InvalidRequest as exc:
            runner.mismatches.append(f"v{version.version}: {exc.message}")
        return runner
    from registry.serving.signature import find  # TensorFlow's protos: with the graphs

    try:
        runner.signature = find(graph, signature_name, api="predict")
    except InvalidRequest as exc:
        runner.mismatches.append(f"v{version.version}: {exc.message}")
        return runner
    sig = runner.signature
    if sig.method in (sigs.CLASSIFY, sigs.REGRESS):
        if kind != EXAMPLES:
            runner.mismatches.append(
                f"v{version.version}: signature {sig.name!r} is a {sigs.short_method(sig.method)} signature: it "
                "takes serialized tf.Examples (send \"examples\", or a TFRecord set), not instances")
            return runner
        from registry.serving.examples import Task

        try:
            runner.task = Task.of(sig, sig.method)
        except InvalidRequest as exc:
            runner.mismatches.append(f"v{version.version}: {exc.message}")
            return runner
        if runner.task.examples.dtype.name != "string":
            runner.mismatches.append(f"v{version.version}: signature {sig.name!r} takes "
                                     f"{_describe(runner.task.examples)}, not serialized tf.Examples")
        if sig.method == sigs.CLASSIFY:
            classes, scores = runner.task.outputs
            runner.score_key = scores.key if scores is not None else None
        return runner
    required = [s for s in sig.inputs if not s.optional]
    if kind == EXAMPLES and not (len(required) == 1 and required[0].dtype.name == "string"):
        runner.mismatches.append(f"v{version.version}: signature {sig.name!r} takes "
                                 f"{', '.join(_describe(s) for s in sig.inputs)}, not serialized tf.Examples")
    return runner


def check_instances(runner: Runner, columns: dict[str, list]) -> list[str]:
    """Every way the inputs do not fit the signature's: names, dtypes, shapes."""
    from registry.serving.tfs_json import to_array

    sig, where = runner.signature, runner.where()
    by_key = {s.key: s for s in sig.inputs}
    by_key.update({s.name.rsplit(":", 1)[0]: s for s in sig.inputs})
    problems = []
    if set(columns) == {""}:
        if len(sig.inputs) != 1:
            return [f"{where}: signature {sig.name!r} has {len(sig.inputs)} inputs "
                    f"({', '.join(_describe(s) for s in sig.inputs)}): name each input"]
        columns = {sig.inputs[0].key: columns[""]}
    unknown = sorted(set(columns) - set(by_key))
    if unknown:
        problems.append(f"{where}: signature {sig.name!r} has no input {', '.join(unknown)} (its inputs: "
                        f"{', '.join(_describe(s) for s in sig.inputs)})")
    given = {by_key[k].key for k in columns if k in by_key}
    missing = [_describe(s) for s in sig.inputs if not s.optional and s.key not in given]
    if missing:
        problems.append(f"{where}: the inputs lack {', '.join(missing)} of signature {sig.name!r}")
    for key, values in columns.items():
        spec = by_key.get(key)
        if spec is None:
            continue
        try:
            array = to_array(values, spec, key)
        except InvalidRequest as exc:
            problems.append(f"{where}: input {spec.key} ({_describe(spec)}): {exc.message}")
            continue
        if spec.shape is not None:
            got = [-1, *array.shape[1:]]
            fits = len(array.shape) == len(spec.shape) and all(
                d is None or d == g for d, g in zip(spec.shape[1:], array.shape[1:]))
            if not fits:
                problems.append(f"{where}: input {spec.key} is {_describe(spec)} in signature {sig.name!r}; the "
                                f"inputs have shape [{', '.join(map(str, got))}]")
    return problems


def _feeds(runner: Runner, batch: EvalBatch) -> dict[str, np.ndarray]:
    from registry.serving.tfs_json import to_array

    sig = runner.signature
    if batch.examples is not None:
        examples = np.empty(len(batch.examples), dtype=object)
        examples[:] = list(batch.examples)
        spec = runner.task.examples if runner.task is not None else next(s for s in sig.inputs if not s.optional)
        return {spec.name: examples}
    by_key = {s.key: s for s in sig.inputs}
    by_key.update({s.name.rsplit(":", 1)[0]: s for s in sig.inputs})
    columns = batch.instances or {}
    if set(columns) == {""}:
        columns = {sig.inputs[0].key: columns[""]}
    return {by_key[k].name: to_array(v, by_key[k], k) for k, v in columns.items()}


def run_batch(service, runner: Runner, batch: EvalBatch) -> dict[str, np.ndarray]:
    """One batch on one version: its outputs by signature key (``scores`` for images)."""
    if batch.images is not None:
        images = [_Image(k, d) for k, d in zip(batch.keys, batch.images)]
        prediction = service._prediction_output(runner.graph, runner.version)
        outputs = service._run_images(runner.graph, runner.version, images, service._sniff(images), prediction)
        return {"scores": service._scores(prediction, outputs, len(images))}
    specs = list(runner.task.outputs) if runner.task is not None else runner.signature.outputs
    specs = [s for s in specs if s is not None]
    outputs = runner.graph.run(_feeds(runner, batch), [s.name for s in specs])
    return {s.key: np.asarray(outputs[s.name]) for s in specs}


def run_all(service, runners: list[Runner], batch: EvalBatch) -> tuple[dict[int, dict[str, np.ndarray]],
                                                                        dict[int, float]]:
    """Every version's outputs on one batch, and the seconds each took.  Images go to the versions that
    share a preprocessing setting and a worker in one call that decodes each image once (the decoding's
    time shared among them); everything else runs version by version (:func:`run_batch`)."""
    outputs: dict[int, dict[str, np.ndarray]] = {}
    seconds: dict[int, float] = {}
    if batch.images is not None:
        for setting, group in _shared_groups(service, runners):
            _run_shared(service, setting, group, batch, outputs, seconds)  # if it cannot: one by one below
    for runner in runners:
        if runner.number not in outputs:
            began = time.perf_counter()
            outputs[runner.number] = run_batch(service, runner, batch)
            seconds[runner.number] = time.perf_counter() - began
    return outputs, seconds


def _shared_groups(service, runners: list[Runner]) -> list[tuple[tuple, list[Runner]]]:
    """The image versions whose images can be decoded once for all: same preprocessing, same worker."""
    groups: dict[tuple, list[Runner]] = {}
    for runner in runners:
        if runner.signature is not None or not runner.graph.usable:
            continue  # not :label's path
        feed = LabelFeed.parse(service._feed(runner.version))  # the feed :label would send the bytes to
        if feed is None:
            continue  # the graph decodes its own string input
        groups.setdefault((id(runner.graph.worker), feed.height, feed.width, feed.mean, feed.std), []).append(runner)
    return [(key[1:], group) for key, group in groups.items() if len(group) > 1]


def _run_shared(service, setting: tuple, group: list[Runner], batch: EvalBatch,
                outputs: dict[int, dict[str, np.ndarray]], seconds: dict[int, float]) -> None:
    from registry.serving.loader import run_shared

    service._sniff([_Image(k, d) for k, d in zip(batch.keys, batch.images)])  # not an image: the same 400
    images = np.empty(len(batch.images), dtype=object)
    images[:] = list(batch.images)
    fetches = [service._prediction_output(r.graph, r.version) for r in group]
    began = time.perf_counter()
    answer = run_shared([r.graph for r in group], setting, images,
                        [LabelFeed.parse(service._feed(r.version)).input for r in group], fetches)
    if answer is None:
        return
    wall = time.perf_counter() - began
    values, took = answer
    runs = [float(s) for s in took.get("runs") or []]
    runs = runs if len(runs) == len(group) else [0.0] * len(group)
    # each version: its own run, and an equal share of the decoding and of the call's other costs
    share = max(0.0, wall - sum(runs)) / len(group)
    for runner, value, fetch, run_s in zip(group, values, fetches, runs):
        outputs[runner.number] = {"scores": service._scores(fetch, {fetch: value}, len(images))}
        seconds[runner.number] = run_s + share


# -- deciding what kind of comparison it is -------------------------------------------------------

def score_key(runner: Runner, outputs: dict[str, np.ndarray]) -> str | None:
    """The output a classifier ranks: the classify signature's scores, :label's prediction output when
    the signature has it, else its only output of rows of scores."""
    if runner.task is not None or runner.signature is None:
        return runner.score_key if runner.signature is not None else "scores"
    node = runner.version.prediction_node
    for spec in runner.signature.outputs:
        if node and spec.name == f"{node}:0":
            return spec.key
    rows = [k for k, a in outputs.items() if a.ndim == 2 and a.shape[1] >= 2 and a.dtype.kind == "f"]
    return rows[0] if len(rows) == 1 else None


def _looks_like_probabilities(scores: np.ndarray) -> bool:
    """Rows of a softmax: none negative, each summing to 1."""
    return bool(scores.size and np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1, atol=1e-3))


def is_classifier(runner: Runner, outputs: dict[str, np.ndarray]) -> bool:
    if runner.signature is None or (runner.task is not None and runner.signature.method == sigs.CLASSIFY):
        return True
    if runner.task is not None:
        return False  # a regress signature
    key = score_key(runner, outputs)
    if key is None:
        return False
    scores = outputs[key]
    if scores.ndim != 2 or scores.shape[1] < 2 or scores.dtype.kind != "f":
        return False
    chosen = (runner.version.conversion or {}).get("prediction_output") or {}
    probability = any(op in (chosen.get("reason") or "") for op in ("Softmax", "Sigmoid"))
    return bool(runner.graph.labels) or probability or _looks_like_probabilities(scores)


def class_names(runner: Runner, outputs: dict[str, np.ndarray]) -> list[str] | None:
    """Class names: a classify signature's ``classes`` (its first row), else the labels file."""
    if runner.task is not None and runner.task.outputs[0] is not None:
        classes = outputs.get(runner.task.outputs[0].key)
        if classes is not None and classes.ndim == 2 and len(classes):
            return [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in classes[0]]
    return runner.graph.labels
