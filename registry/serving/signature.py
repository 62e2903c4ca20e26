"""A version's signatures as TF Serving reports and chooses them.

Each signature becomes a ``SignatureDef`` proto; ``GET .../metadata`` answers
them as JSON printed the way TF Serving prints them (dims' sizes as strings,
empty names and maps written out), and gRPC's ``GetModelMetadata`` packs the
same protos, so both APIs agree field for field.

A request names its signature (``signature_name``; empty: ``serving_default``,
or the version's own default signature when it has none by that name).  An
unknown name, or a signature of another method, is refused with TF Serving's
wording followed by what to send instead.
"""

from __future__ import annotations

from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from registry import metrics
from registry import signatures as sigs
from registry.errors import InvalidRequest
from registry.serving.loader import Signature, TensorSpec

SIGNATURE = sigs.DEFAULT
_METHOD_NAMES = {sigs.PREDICT: "prediction", sigs.CLASSIFY: "classification", sigs.REGRESS: "regression"}
_CALLS = {sigs.PREDICT: ":predict (gRPC Predict)", sigs.CLASSIFY: ":classify (gRPC Classify)",
          sigs.REGRESS: ":regress (gRPC Regress)"}


class FailedPrecondition(InvalidRequest):
    """TF Serving's FAILED_PRECONDITION: a 400 over REST (as TF Serving maps it), its own code over gRPC."""

    code = "failed_precondition"
    grpc_code = "FAILED_PRECONDITION"


def tensor_info(spec: TensorSpec) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=spec.name, dtype=spec.dtype.as_datatype_enum)
    if spec.shape is None:
        info.tensor_shape.unknown_rank = True
    else:
        for size in spec.shape:
            info.tensor_shape.dim.add(size=-1 if size is None else size)
    return info


def signature_def(signature: Signature) -> meta_graph_pb2.SignatureDef:
    proto = meta_graph_pb2.SignatureDef(method_name=signature.method)
    for spec in signature.inputs:
        proto.inputs[spec.key].CopyFrom(tensor_info(spec))
    for spec in signature.outputs:
        proto.outputs[spec.key].CopyFrom(tensor_info(spec))
    return proto


def signature_def_map(graph) -> get_model_metadata_pb2.SignatureDefMap:
    """Every signature of a loaded version, as GetModelMetadata's ``signature_def`` carries them."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in graph.signatures.items():
        signatures.signature_def[name].CopyFrom(signature_def(signature))
    return signatures


def _json(message) -> dict:
    """A proto as TF Serving's REST API prints it (field names kept, defaults written out)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def signature_def_json(signature: Signature) -> dict:
    return _json(signature_def(signature))


def metadata_json(name: str, version, graph) -> dict:
    """``GET /v1/models/NAME[/versions/N]/metadata``: every signature of the version."""
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version.version)},
        "metadata": {"signature_def": _json(signature_def_map(graph))},
    }


def dtype_name(enum: int) -> str:
    return types_pb2.DataType.Name(enum) if enum in types_pb2.DataType.values() else f"dtype {enum}"


def _listing(graph) -> str:
    version = graph.version
    described = ", ".join(f"{name} ({sigs.short_method(sig.method)})" for name, sig in sorted(graph.signatures.items()))
    return f"Version {version.version} of {version.model!r} has the signature(s) {described or 'none'}"


def default_name(graph) -> str:
    """What an empty ``signature_name`` means: serving_default, or the version's own default signature."""
    if SIGNATURE in graph.signatures:
        return SIGNATURE
    return graph.version.default_signature


def find(graph, name: str, *, api: str) -> Signature:
    """The signature ``name`` names (empty: the default), or TF Serving's refusal for ``api`` (predict,
    classify, regress, multi) followed by the signatures there are."""
    name = name or default_name(graph)
    signature = graph.signatures.get(name)
    if signature is not None:
        metrics.served_signature(name)
        return signature
    metrics.served_signature("")  # no such signature: not a label
    fix = f"{_listing(graph)}; send one of them as signature_name"
    if api == "predict":
        raise FailedPrecondition(f'Serving signature key "{name}" not found. {fix}', code="unknown_signature")
    if api == "multi":
        raise InvalidRequest(f"Requested signature not found in model graph: {name}. {fix}", code="unknown_signature")
    raise InvalidRequest(f"No signature was found with the name: {name}. {fix}", code="unknown_signature")


def require_method(graph, signature: Signature, method: str) -> None:
    """A classify (regress) request needs a classify (regress) signature: say which call fits this one,
    and which signatures fit the call."""
    if signature.method == method or shaped_for(signature, method):
        return
    fitting = sorted(name for name, sig in graph.signatures.items() if sig.method == method or shaped_for(sig, method))
    kind = sigs.short_method(method)
    instead = (f"name a {kind} signature ({', '.join(fitting)})" if fitting
               else f"this version has no {kind} signature")
    call = _CALLS.get(signature.method, "")
    raise InvalidRequest(
        f"Expected {_METHOD_NAMES[method]} signature method_name to be {method}. Was: {signature.method}. "
        f"Signature {signature.name!r} is a {sigs.short_method(signature.method)} signature"
        f"{': call ' + call + ' with it' if call else ''}, or {instead}", code="wrong_signature_method")


def shaped_for(signature: Signature, method: str) -> bool:
    """Whether a predict signature is shaped for a classify (regress) call: one string input keyed
    ``inputs`` (serialized tf.Examples) and the call's outputs (``classes``/``scores``; ``outputs``).
    TF Serving runs such a signature for the call (its method-name check is off by default), and
    TF2's ``tf.saved_model.save`` writes every signature as predict, so its classifiers look so."""
    if signature.method != sigs.PREDICT or len(signature.inputs) != 1:
        return False
    examples = signature.inputs[0]
    if examples.key != sigs.CLASSIFY_INPUTS or examples.dtype.name != "string":
        return False
    keys = {s.key for s in signature.outputs}
    if method == sigs.CLASSIFY:
        return bool(keys) and keys <= {sigs.CLASSIFY_CLASSES, sigs.CLASSIFY_SCORES}
    return method == sigs.REGRESS and keys == {sigs.REGRESS_OUTPUTS}


def classify_tensors(signature: Signature) -> tuple[TensorSpec, TensorSpec | None, TensorSpec | None]:
    """The input, classes and scores of a classify signature (TF Serving's PreProcessClassification)."""
    if len(signature.inputs) != 1:
        raise InvalidRequest(f"Expected one input Tensor. Signature {signature.name!r} has "
                             f"{len(signature.inputs)}: it cannot be used to classify", code="invalid_signature")
    if len(signature.outputs) not in (1, 2):
        raise InvalidRequest(f"Expected one or two output Tensors, found {len(signature.outputs)} in signature "
                             f"{signature.name!r}", code="invalid_signature")
    examples = signature.input(sigs.CLASSIFY_INPUTS)
    if examples is None:
        raise FailedPrecondition(f"No classification inputs found in SignatureDef {signature.name!r}: its input "
                                 f"must be keyed {sigs.CLASSIFY_INPUTS!r}", code="invalid_signature")
    classes, scores = signature.output(sigs.CLASSIFY_CLASSES), signature.output(sigs.CLASSIFY_SCORES)
    if classes is None and scores is None:
        raise FailedPrecondition(f'Expected classification signature outputs to contain at least one of '
                                 f'"{sigs.CLASSIFY_CLASSES}" or "{sigs.CLASSIFY_SCORES}". Signature '
                                 f"{signature.name!r} has {', '.join(s.key for s in signature.outputs)}",
                                 code="invalid_signature")
    return examples, classes, scores


def regress_tensors(signature: Signature) -> tuple[TensorSpec, TensorSpec]:
    """The input and output of a regress signature (TF Serving's PreProcessRegression)."""
    if len(signature.inputs) != 1:
        raise InvalidRequest(f"Expected one input Tensor. Signature {signature.name!r} has "
                             f"{len(signature.inputs)}: it cannot be used to regress", code="invalid_signature")
    if len(signature.outputs) != 1:
        raise InvalidRequest(f"Expected one output Tensor. Signature {signature.name!r} has "
                             f"{len(signature.outputs)}", code="invalid_signature")
    examples, output = signature.input(sigs.REGRESS_INPUTS), signature.output(sigs.REGRESS_OUTPUTS)
    if examples is None:
        raise FailedPrecondition(f"No regression inputs found in SignatureDef {signature.name!r}: its input "
                                 f"must be keyed {sigs.REGRESS_INPUTS!r}", code="invalid_signature")
    if output is None:
        raise FailedPrecondition(f"No regression outputs found in SignatureDef {signature.name!r}: its output "
                                 f"must be keyed {sigs.REGRESS_OUTPUTS!r}", code="invalid_signature")
    return examples, output
