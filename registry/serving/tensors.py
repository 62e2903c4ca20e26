"""TensorProtos in and out of gRPC Predict, as TF Serving reads and writes them.

A request's tensor is checked against its input's dtype, not against the
signature's static shape (TF Serving's session does not either: the graph's
ops check what they read), but for the rank of an input of 3 or more
dimensions (``tfs_json.check_rank``: oneDNN's spatial kernels do not refuse a
wrong rank, they abort).  An answer's tensor carries its values in the typed
fields (``float_val``, ``int64_val``, ...), as TF Serving's ``AsProtoField``
writes them, so clients reading ``outputs['y'].float_val`` work unchanged.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from registry.errors import InvalidRequest
from registry.serving.signature import dtype_name
from registry.serving.tfs_json import check_rank

# dtype -> (TensorProto field, how the array's values go into it)
_FIELDS = {
    tf.float32: ("float_val", lambda a: a.tolist()),
    tf.float64: ("double_val", lambda a: a.tolist()),
    tf.int32: ("int_val", lambda a: a.tolist()),
    tf.int16: ("int_val", lambda a: a.tolist()),
    tf.int8: ("int_val", lambda a: a.tolist()),
    tf.uint8: ("int_val", lambda a: a.tolist()),
    tf.uint16: ("int_val", lambda a: a.tolist()),
    tf.int64: ("int64_val", lambda a: a.tolist()),
    tf.uint32: ("uint32_val", lambda a: a.tolist()),
    tf.uint64: ("uint64_val", lambda a: a.tolist()),
    tf.bool: ("bool_val", lambda a: a.tolist()),
    tf.float16: ("half_val", lambda a: a.view(np.uint16).tolist()),
    tf.string: ("string_val", lambda a: [v if isinstance(v, bytes) else str(v).encode() for v in a.tolist()]),
    tf.complex64: ("scomplex_val", lambda a: a.view(np.float32).tolist()),
    tf.complex128: ("dcomplex_val", lambda a: a.view(np.float64).tolist()),
}


def to_array(key: str, proto: tensor_pb2.TensorProto, spec) -> np.ndarray:
    """A request's tensor as an array, checked against the input's dtype (not its shape)."""
    want = spec.dtype.as_datatype_enum
    if proto.dtype != want:
        raise InvalidRequest(f"input {key} must be {dtype_name(want)}, got {dtype_name(proto.dtype)}: send it "
                             f"as {dtype_name(want)}", code="invalid_input")
    try:
        array = tf.make_ndarray(proto)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"tensor parsing error: {key} is not a valid TensorProto ({exc}): give its "
                             "tensor_shape and as many values as the shape holds", code="invalid_input") from exc
    check_rank(spec, array, "inputs")
    return array


def to_proto(array: np.ndarray, dtype: tf.DType) -> tensor_pb2.TensorProto:
    """An output in TF Serving's form: shape, dtype and the values in their typed field."""
    array = np.asarray(array)
    field = _FIELDS.get(dtype.base_dtype)
    if field is None:  # quantized and other rare dtypes: the packed form
        return tf.make_tensor_proto(array, dtype=dtype)
    name, values = field
    if dtype != tf.string:
        array = array.astype(dtype.as_numpy_dtype, copy=False)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    getattr(proto, name).extend(values(np.ascontiguousarray(array).ravel()))
    return proto
