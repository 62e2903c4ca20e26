"""The ``serving_default`` signature of a frozen graph, as TF Serving reports it.

Built once as JSON (the form ``GET .../metadata`` answers in); the gRPC server
parses the same JSON into ``SignatureDef`` protos, so both APIs agree.
"""

from __future__ import annotations

from tensorflow.core.framework import types_pb2

PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE = "serving_default"


def tensor_info(spec) -> dict:
    if spec.shape is None:
        shape = {"dim": [], "unknown_rank": True}
    else:
        shape = {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape],
                 "unknown_rank": False}
    return {"dtype": types_pb2.DataType.Name(spec.dtype.as_datatype_enum), "tensor_shape": shape,
            "name": spec.name}


def signature_def_json(graph) -> dict:
    return {
        "inputs": {s.key: tensor_info(s) for s in graph.inputs},
        "outputs": {s.key: tensor_info(s) for s in graph.outputs},
        "method_name": PREDICT_METHOD,
    }


def metadata_json(name: str, version, graph) -> dict:
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version.version)},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature_def_json(graph)}}},
    }
