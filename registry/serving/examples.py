"""Classify, Regress and MultiInference: tf.Examples in, TF Serving's results out.

REST bodies (``{"signature_name", "context", "examples": [{feature: value}]}``)
become ``tensorflow.serving.Input`` protos by json_tensor.cc's rules: a whole
number is an int64 feature, a decimal a float feature, a string (or
``{"b64": ...}``) a bytes feature, true/false int64 1/0, a list several values
of one kind.  gRPC requests carry the same Input.  Either way the examples are
serialized (the context's bytes before each example's, so parsing merges them,
as TF Serving does) and fed to the signature's ``inputs`` tensor; a feature
both in the context and in an example is refused, as ``api_rest.md`` says it
must not be.

Results are shaped as TF Serving's classifier.cc and regressor.cc shape them:
per example a list of (label, score) (label "" when the signature has only
scores, score 0 when it has only classes), or one regression value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, inference_pb2, input_pb2, regression_pb2

from registry import signatures as sigs
from registry.errors import InvalidRequest
from registry.serving.loader import Signature, TensorSpec
from registry.serving.signature import classify_tensors, find, regress_tensors, require_method
from registry.serving.tfs_json import EXAMPLES_BODY, check_answer_size, decode_b64, signature_name

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
_KINDS = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}
_JSON_TYPES = ((type(None), "Null"), (bool, "Boolean"), (dict, "Object"), (list, "Array"), (str, "String"),
               (int, "Number"), (float, "Number"))


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_examples")


def _json_type(value: Any) -> str:
    return next(name for kind, name in _JSON_TYPES if isinstance(value, kind))


# -- JSON -> tf.Example ---------------------------------------------------------------------------

def _kind_error(name: str, feature: feature_pb2.Feature) -> InvalidRequest:
    kind = _KINDS[feature.WhichOneof("kind")]
    return _bad(f"Unexpected element type in feature: {name} expecting type: {kind}. The values of one feature "
                "are all of one kind: whole numbers (int64), decimals (float: write 2.0, not 2) or strings and "
                '{"b64": ...} (bytes)')


def _add(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """One JSON value into ``feature``, as json_tensor.cc's AddValueToFeature does."""
    kind = feature.WhichOneof("kind")
    if isinstance(value, bool):
        if kind not in (None, "int64_list"):
            raise _kind_error(name, feature)
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, float):
        if kind not in (None, "float_list"):
            raise _kind_error(name, feature)
        if math.isfinite(value) and abs(value) > FLOAT32_MAX:
            raise _bad(f"Cannot convert JSON value: {value!r} to float without loss of precision (feature "
                       f"{name}): float features hold 32-bit floats, within ±{FLOAT32_MAX:.6g}")
        feature.float_list.value.append(value)
    elif isinstance(value, int):
        if kind not in (None, "int64_list"):
            raise _kind_error(name, feature)
        if not INT64_MIN <= value <= INT64_MAX:
            what = "a uint64 element" if 0 < value <= UINT64_MAX else "an integer outside int64's range"
            raise _bad(f"Feature: {name} has {what}. Only int64 is supported: send a whole number from "
                       f"{INT64_MIN} to {INT64_MAX}, or a decimal for a float feature")
        feature.int64_list.value.append(value)
    elif isinstance(value, str) or (isinstance(value, dict) and set(value) == {"b64"}):
        if kind not in (None, "bytes_list"):
            raise _kind_error(name, feature)
        feature.bytes_list.value.append(value.encode("utf-8") if isinstance(value, str) else decode_b64(value))
    else:
        raise _bad(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}. A feature's "
                   'value is a number, a string, {"b64": ...}, true/false, or a flat list of those')


def _feature(content: Any, name: str) -> feature_pb2.Feature:
    feature = feature_pb2.Feature()
    values = content if isinstance(content, list) else [content]
    if values and all(type(v) is float for v in values):  # the common case, at array speed
        array = np.asarray(values, dtype=np.float64)
        if np.any(np.isfinite(array) & (np.abs(array) > FLOAT32_MAX)):
            raise _bad(f"Cannot convert a value of feature {name} to float without loss of precision: float "
                       f"features hold 32-bit floats, within ±{FLOAT32_MAX:.6g}")
        feature.float_list.value.extend(values)
        return feature
    for value in values:
        _add(value, name, feature)
    return feature


def example_from_json(value: Any, where: str) -> example_pb2.Example:
    """One example object (feature: value or list) as a tf.Example."""
    if not isinstance(value, dict):
        raise _bad(f"Example must be JSON object but got JSON {_json_type(value)} ({where}): send "
                   '{"feature": value, ...}')
    example = example_pb2.Example()
    for name, content in value.items():
        example.features.feature[name].CopyFrom(_feature(content, name))
    return example


def input_from_json(body: Any) -> tuple[str, input_pb2.Input]:
    """A :classify or :regress body as (signature_name, Input), as FillClassifyRegressRequestFromJson reads it."""
    name = signature_name(body)
    request = input_pb2.Input()
    context = body.get("context")
    if context is not None:
        request.example_list_with_context.context.CopyFrom(example_from_json(context, '"context"'))
    examples = body.get("examples")
    shape = EXAMPLES_BODY
    if examples is None:
        raise _bad(f"key 'examples' is expected and was not found: send {shape}")
    if not isinstance(examples, list):
        raise _bad(f"Expecting 'examples' value to be an list/array, got {_json_type(examples)}: send {shape}")
    if not examples:
        raise _bad(f"'examples' value is an empty array: send at least one example, {shape}")
    target = (request.example_list_with_context.examples if context is not None
              else request.example_list.examples)
    for i, example in enumerate(examples):
        target.add().CopyFrom(example_from_json(example, f"examples[{i}]"))
    return name, request


def serialized(request: input_pb2.Input) -> np.ndarray:
    """The Input's examples as the string vector a classify or regress signature takes (TF Serving's
    InputToSerializedExampleTensor: a context's bytes go before each example's)."""
    kind = request.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in request.example_list.examples]
    elif kind == "example_list_with_context":
        listed = request.example_list_with_context
        shared = set(listed.context.features.feature)
        for i, example in enumerate(listed.examples):
            both = sorted(shared & set(example.features.feature))
            if both:
                raise _bad(f"feature(s) {', '.join(both)} are in the context and in example {i}: a feature of "
                           "the context must not appear in the examples; send it in one place only")
        context = listed.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in listed.examples]
    else:
        examples = []
    if not examples:
        raise _bad('Input is empty: send at least one tf.Example (input.example_list.examples; over REST '
                   '{"examples": [{...}]})')
    return np.array(examples, dtype=object)


# -- running a signature on examples --------------------------------------------------------------

def _shape(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def _examples_input(signature: Signature, spec: TensorSpec) -> None:
    if spec.dtype.name != "string":
        raise _bad(f"signature {signature.name!r} takes {spec.name} ({spec.dtype.name}) as its input, not "
                   f"serialized tf.Examples: call :predict with signature_name {signature.name!r} and "
                   f'{{"inputs": {{"{spec.key}": ...}}}}')


@dataclass(frozen=True)
class Task:
    """One signature to run on the examples: what it feeds, what it fetches."""

    signature: Signature
    method: str
    examples: TensorSpec
    outputs: tuple[TensorSpec | None, ...]  # classify: (classes, scores); regress: (outputs,)

    @classmethod
    def of(cls, signature: Signature, method: str) -> Task:
        if method == sigs.CLASSIFY:
            examples, classes, scores = classify_tensors(signature)
            return cls(signature, method, examples, (classes, scores))
        examples, output = regress_tensors(signature)
        return cls(signature, method, examples, (output,))

    @property
    def fetch(self) -> list[str]:
        return [s.name for s in self.outputs if s is not None]

    def result(self, outputs: dict[str, np.ndarray], count: int) -> list:
        if self.method == sigs.CLASSIFY:
            return classifications(*self.outputs, outputs, count)
        return regressions(self.outputs[0], outputs, count)


def classifications(classes: TensorSpec | None, scores: TensorSpec | None, outputs: dict[str, np.ndarray],
                    count: int) -> list[list[tuple[str, float]]]:
    """Per example, (label, score) per class, checked as classifier.cc checks them."""
    labels = None if classes is None else np.asarray(outputs[classes.name])
    values = None if scores is None else np.asarray(outputs[scores.name])
    for array, what, dtype, proto_name in ((labels, "classes", np.dtype(object), "DT_STRING"),
                                           (values, "scores", np.dtype(np.float32), "DT_FLOAT")):
        if array is None:
            continue
        if array.ndim != 2:
            raise _bad(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(array)} for {what}: "
                       "this signature's outputs are not a classification; use :predict")
        if array.dtype != dtype:
            raise _bad(f"Expected {what} Tensor of {proto_name}. Got: {array.dtype}: this signature cannot be "
                       "used to classify; use :predict")
        if array.shape[0] != count:
            raise _bad(f"Expected {what} output batch size of {count}. Got: {array.shape[0]}")
    if labels is not None and values is not None and labels.shape[1] != values.shape[1]:
        raise _bad(f"Tensors class and score should match in dim_size(1). Got {labels.shape[1]} vs. "
                   f"{values.shape[1]}")
    width = (labels if labels is not None else values).shape[1]
    return [[(_label(labels[i, c]) if labels is not None else "",
              float(values[i, c]) if values is not None else 0.0) for c in range(width)] for i in range(count)]


def _label(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def regressions(output: TensorSpec, outputs: dict[str, np.ndarray], count: int) -> list[float]:
    """One value per example, checked as regressor.cc checks it."""
    array = np.asarray(outputs[output.name])
    if not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
        raise _bad(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                   f"{_shape(array)}: this signature cannot be used to regress; use :predict")
    if array.shape[0] != count:
        raise _bad(f"Input batch size did not match output batch size: {count} vs. {array.shape[0]}")
    if array.dtype != np.float32:
        raise _bad(f"Expected output Tensor of DT_FLOAT.  Got: {array.dtype}: this signature cannot be used to "
                   "regress; use :predict")
    return [float(v) for v in array.reshape(-1)]


def run(graph, tasks: list[Task], request: input_pb2.Input, max_elements: int | None = None,
        offer: Callable[[Signature, dict, dict], None] | None = None) -> list[list]:
    """Every task's result from one run of the graph on the request's examples (fed to every task's input);
    outputs of more than ``max_elements`` values are refused (a JSON answer's bound).  ``offer`` (an alias's
    shadow, ``ShadowTraffic.offer``) is given each task's signature, the feeds and the outputs once the
    results are made."""
    examples = serialized(request)
    fetch = list(dict.fromkeys(name for task in tasks for name in task.fetch))
    try:
        outputs = graph.run({task.examples.name: examples for task in tasks}, fetch)
    except InvalidRequest as exc:  # the parse op's reason: say what a fitting example holds
        if exc.code != "invalid_input":
            raise
        raise InvalidRequest(f"{exc.message.rstrip('.')}. Send every feature the signature requires, each as "
                             "the type it parses (a decimal such as 2.0 for a float feature, a whole number for "
                             'int64, a string or {"b64": ...} for bytes) with as many values as its shape holds',
                             code="invalid_input") from exc
    if max_elements is not None:
        check_answer_size(outputs, max_elements)
    results = [task.result(outputs, len(examples)) for task in tasks]
    if offer is not None:
        for found in tasks:
            offer(found.signature, {found.examples.name: examples}, outputs)
    return results


def task(graph, name: str, method: str) -> Task:
    """The signature a Classify (Regress) request names, checked to be one."""
    signature = find(graph, name, api=sigs.short_method(method))
    require_method(graph, signature, method)
    found = Task.of(signature, method)
    _examples_input(signature, found.examples)
    return found


def multi_tasks(graph, specs: list[tuple[str, str]]) -> list[Task]:
    """MultiInference's tasks, (signature name, method) each, checked as multi_inference.cc checks them."""
    tasks, seen = [], set()
    for name, method in specs:
        name = name or sigs.DEFAULT
        if name in seen:
            raise _bad(f"Duplicate evaluation of signature: {name}: name each signature once")
        seen.add(name)
        signature = find(graph, name, api="multi")
        if method not in (sigs.CLASSIFY, sigs.REGRESS):
            raise InvalidRequest(f"Unsupported signature method_name: {method!r}: MultiInference runs "
                                 f"{sigs.CLASSIFY} and {sigs.REGRESS} tasks", code="unsupported_method",
                                 status=501)
        require_method(graph, signature, method)
        tasks.append(Task.of(signature, method))
        first, this = tasks[0].examples, tasks[-1].examples
        if first.name != this.name and not (first.dtype.name == this.dtype.name == "string"):
            # inputs of their own are fed the same examples (a TF2 export gives each signature its own input)
            raise _bad(f"Input tensor must be the same for all Signatures: {tasks[0].signature.name!r} takes "
                       f"{tasks[0].examples.name}, {name!r} takes {tasks[-1].examples.name}")
        _examples_input(signature, tasks[-1].examples)
    if not tasks:
        raise _bad("MultiInference has no tasks: add one per signature to run, with its method_name")
    return tasks


# -- answers --------------------------------------------------------------------------------------

def _decimal(value: float) -> float:
    """A float32 as TF Serving writes it: the shortest decimal that reads back as the same float32."""
    return float(str(np.float32(value))) if math.isfinite(value) else value


def answer_json(graph, method: str, name: str, request: input_pb2.Input, max_elements: int,
                offer: Callable[[Signature, dict, dict], None] | None = None) -> dict:
    """:classify (``{"results": [[[label, score], ...] per example]}``) or :regress (``{"results":
    [value per example]}``) of the examples in ``request`` on signature ``name``."""
    (result,) = run(graph, [task(graph, name, method)], request, max_elements, offer)
    if method == sigs.CLASSIFY:
        return {"results": [[[label, _decimal(score)] for label, score in classes] for classes in result]}
    return {"results": [_decimal(value) for value in result]}


def classification_result(result: list[list[tuple[str, float]]]) -> classification_pb2.ClassificationResult:
    proto = classification_pb2.ClassificationResult()
    for classes in result:
        entry = proto.classifications.add()
        for label, score in classes:
            entry.classes.add(label=label, score=score)
    return proto


def regression_result(result: list[float]) -> regression_pb2.RegressionResult:
    proto = regression_pb2.RegressionResult()
    for value in result:
        proto.regressions.add(value=value)
    return proto


def inference_result(task: Task, result: list) -> inference_pb2.InferenceResult:
    proto = inference_pb2.InferenceResult()
    if task.method == sigs.CLASSIFY:
        proto.classification_result.CopyFrom(classification_result(result))
    else:
        proto.regression_result.CopyFrom(regression_result(result))
    return proto
