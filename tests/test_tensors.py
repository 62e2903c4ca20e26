"""gRPC tensors in and out: a request's TensorProto read as TF Serving reads it (typed fields,
tensor_content, strings), a bad one refused with INVALID_ARGUMENT's 400 and what to send, and an
answer written into the typed field clients read."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from registry.errors import InvalidRequest
from registry.serving import tensors
from registry.serving.loader import TensorSpec


def typed(dtype: tf.DType, field: str, values: list, shape: list[int]) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    getattr(proto, field).extend(values)
    return proto


@pytest.mark.parametrize("array", [
    np.array([[2.0], [0.1]], np.float32), np.arange(6, dtype=np.int64).reshape(2, 3),
    np.array([[True, False]]), np.array([7, 255], np.uint8), np.arange(2000, dtype=np.float32).reshape(40, 50),
    np.array([b"a", b"\xff"], dtype=object),
])
def test_a_request_tensor_reads_as_tf_make_ndarray_reads_it(array):
    proto = tf.make_tensor_proto(array)  # typed fields for small tensors, tensor_content for large ones
    spec = TensorSpec("x", "x:0", proto.dtype, [None] * array.ndim)
    got = tensors.to_array("x", proto, spec)
    expected = tf.make_ndarray(proto)
    assert got.dtype == expected.dtype and got.shape == expected.shape and got.tolist() == expected.tolist()


def test_a_tensor_filled_from_one_value_reads_as_tensorflow_fills_it():
    proto = typed(tf.float32, "float_val", [1.5], [2, 2])  # TF Serving clients may send one value for a fill
    got = tensors.to_array("x", proto, TensorSpec("x", "x:0", tf.float32, [None, 2]))
    assert got.tolist() == [[1.5, 1.5], [1.5, 1.5]]


@pytest.mark.parametrize("proto, words", [
    (typed(tf.uint8, "int_val", [7, 300], [2]), "out of range for DT_UINT8"),
    (typed(tf.int32, "int_val", [1, 2, 3], [2]), "as many values as the shape holds"),
    (typed(tf.int64, "int64_val", [1], [1]), "must be DT_FLOAT, got DT_INT64"),
])
def test_a_bad_request_tensor_is_a_400_saying_what_to_send(proto, words):
    dtype = tf.float32 if proto.dtype == tf.int64.as_datatype_enum else tf.as_dtype(proto.dtype)
    with pytest.raises(InvalidRequest) as caught:
        tensors.to_array("x", proto, TensorSpec("x", "x:0", dtype, [None]))
    assert caught.value.status == 400 and words in caught.value.message


@pytest.mark.parametrize("array, field", [
    (np.array([[3.0]], np.float32), "float_val"), (np.array([1, 2], np.int64), "int64_val"),
    (np.array([True]), "bool_val"), (np.array([b"x"], dtype=object), "string_val"),
    (np.array([1.5], np.float16), "half_val"),
])
def test_an_answer_carries_its_values_in_the_typed_field_clients_read(array, field):
    proto = tensors.to_proto(array, tf.as_dtype(array.dtype if array.dtype != object else tf.string))
    assert len(getattr(proto, field)) == array.size
    assert tf.make_ndarray(proto).tolist() == array.tolist()
