"""The deterministic inputs verification feeds a signature: what each input would take.

Numbers of the input's dtype and shape; for a string input, serialized ``tf.Example``s holding every
feature its parse op reads (found through identity ops and into the functions a TF2 signature calls),
or images encoded as the graph decodes them, else plain deterministic strings.  The same seed always
gives the same values, so the frozen graph and the original see the same input.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.python.framework.function_def_to_graph import function_def_to_graph

from registry.converter.checkpoint_keys import CALL_OPS

tf1 = tf.compat.v1
SEED = 20260101


class CannotVerify(Exception):
    """Verification is impossible for a reason that is not the upload's fault."""


def deterministic_feeds(inputs: list[dict], graph: tf.Graph, image_format: str | None = None) -> dict:
    """A fixed pseudo-random value for every required input (``name``: a node or tensor name);
    ``image_format`` is what the graph decodes a string input from, if it decodes images
    (:func:`decoded_image_format`)."""
    rng = np.random.default_rng(SEED)
    feeds = {}
    for spec in inputs:
        if spec.get("optional"):
            continue
        name = spec["name"] if ":" in spec["name"] else spec["name"] + ":0"
        tensor = graph.get_tensor_by_name(name)
        parse = _example_parser(tensor) if tensor.dtype.base_dtype == tf.string else None
        if parse is not None and parse.type == "ParseSingleExample":
            dims: list[int] = []
        elif tensor.shape.rank is None:  # any rank will do: a batch of two
            dims = [2]
        else:
            dims = [1 if d is None else d for d in tensor.shape.as_list()]
        dtype = tensor.dtype.base_dtype
        if dtype.is_floating:
            value = rng.random(dims).astype(dtype.as_numpy_dtype)
        elif dtype.is_integer:
            value = rng.integers(0, 2, size=dims).astype(dtype.as_numpy_dtype)
        elif dtype == tf.bool:
            value = np.zeros(dims, dtype=bool)
        elif parse is not None:
            value = np.array([_example(parse, rng) for _ in range(int(np.prod(dims)))], dtype=object).reshape(dims)
        elif dtype == tf.string and image_format is not None:
            value = np.array([encoded_image(image_format, rng) for _ in range(int(np.prod(dims)))],
                             dtype=object).reshape(dims)
        elif dtype == tf.string:  # words, ids, categories: any deterministic strings compare the two graphs
            value = np.array([f"value-{i}".encode() for i in rng.integers(0, 3, size=int(np.prod(dims)))],
                             dtype=object).reshape(dims)
        else:
            raise CannotVerify(f"input {spec['name']!r} is {dtype.name}; no deterministic value to feed it")
        feeds[tensor] = value
    return feeds


PARSE_EXAMPLE_OPS = ("ParseExample", "ParseExampleV2", "ParseSingleExample")
# The format an image-decoding op expects (TF Serving's ResNet export takes JPEG bytes, often in a map_fn).
DECODE_FORMATS = {"DecodeJpeg": "jpeg", "DecodeAndCropJpeg": "jpeg", "DecodePng": "png", "DecodeBmp": "bmp",
                  "DecodeImage": "png"}
TEST_IMAGE_SIZE = (24, 32)


def decoded_image_format(graph_def: graph_pb2.GraphDef) -> str | None:
    """The image format the graph decodes its string input from, if it decodes one (in its nodes or in a
    function such as a map_fn's body)."""
    op_types = {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}
    found = [DECODE_FORMATS[op] for op in DECODE_FORMATS if op in op_types]
    return found[0] if found else None


def encoded_image(image_format: str, rng: np.random.Generator) -> bytes:
    """A deterministic RGB image, encoded as ``image_format``."""
    height, width = TEST_IMAGE_SIZE
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if image_format == "bmp":  # TensorFlow has no BMP encoder: a 24-bit BMP, bottom-up BGR rows padded to 4 bytes
        row = width * 3 + (-width * 3) % 4
        body = b"".join(np.pad(pixels[y, :, ::-1].reshape(-1), (0, row - width * 3)).tobytes()
                        for y in range(height - 1, -1, -1))
        header = (b"BM" + (54 + len(body)).to_bytes(4, "little") + b"\0\0\0\0" + (54).to_bytes(4, "little")
                  + (40).to_bytes(4, "little") + width.to_bytes(4, "little") + height.to_bytes(4, "little")
                  + (1).to_bytes(2, "little") + (24).to_bytes(2, "little") + b"\0" * 24)
        return header + body
    with tf1.Session(graph=tf.Graph()) as session:
        encode = tf.io.encode_jpeg if image_format == "jpeg" else tf.io.encode_png
        return session.run(encode(tf.constant(pixels)))


def _example_parser(tensor: tf.Tensor, depth: int = 0) -> tf.Operation | None:
    """The tf.Example parse op that reads ``tensor`` (through Identity ops, and into the body of a
    function call: a TF2 SavedModel parses inside its signature's function), if one does."""
    pending, seen = [tensor], set()
    while pending:
        current = pending.pop()
        for consumer in current.consumers():
            if consumer.name in seen:
                continue
            seen.add(consumer.name)
            if consumer.type in PARSE_EXAMPLE_OPS and consumer.inputs[0] is current:
                return consumer
            if consumer.type in ("Identity", "IdentityN", "Reshape", "ExpandDims", "Squeeze"):
                pending.extend(consumer.outputs)
            if consumer.type in CALL_OPS and depth < MAX_CALL_DEPTH:
                for index in (i for i, t in enumerate(consumer.inputs) if t is current):
                    body = _function_body(consumer)
                    found = body is not None and _example_parser(body.inputs[index], depth + 1)
                    if found:
                        return found
    return None


MAX_CALL_DEPTH = 8


def _function_body(call: tf.Operation):
    """The graph of the function ``call`` runs (its inputs are the call's), or None if it cannot be built."""
    name = call.get_attr("f").name
    library = {f.signature.name: f for f in call.graph.as_graph_def().library.function}
    if name not in library:
        return None
    try:
        with call.graph.as_default():  # where the functions it calls in turn are found
            return function_def_to_graph(library[name], include_library_functions=True)
    except (ValueError, KeyError, TypeError, tf.errors.OpError):  # a body TensorFlow cannot rebuild: no example
        return None


def _example_features(parse: tf.Operation) -> list[tuple[str, tf.DType, list[int]]]:
    """(key, dtype, shape) of every feature the parse op reads, from its own keys, types and shapes."""
    def constants(tensors) -> list[str]:
        keys: list[str] = []
        for t in tensors:
            value = tf.get_static_value(t)
            if value is None:
                raise CannotVerify(f"{parse.name} takes its feature keys from a tensor that is not a constant")
            keys += [k.decode() if isinstance(k, bytes) else str(k) for k in np.atleast_1d(value).tolist()]
        return keys

    dense_types = [tf.as_dtype(t) for t in parse.get_attr("Tdense")]
    dense_shapes = [tf.TensorShape(s).as_list() if tf.TensorShape(s).rank is not None else [1]
                    for s in parse.get_attr("dense_shapes")]
    sparse_types = [tf.as_dtype(t) for t in parse.get_attr("sparse_types")]
    if parse.type == "ParseExampleV2":
        sparse_keys, dense_keys = constants([parse.inputs[2]]), constants([parse.inputs[3]])
        ragged_keys = constants([parse.inputs[4]])
        ragged_types = [tf.as_dtype(t) for t in parse.get_attr("ragged_value_types")]
    elif parse.type == "ParseExample":
        n_sparse, n_dense = parse.get_attr("Nsparse"), parse.get_attr("Ndense")
        sparse_keys = constants(parse.inputs[2:2 + n_sparse])
        dense_keys = constants(parse.inputs[2 + n_sparse:2 + n_sparse + n_dense])
        ragged_keys, ragged_types = [], []
    else:  # ParseSingleExample names its keys in attributes
        sparse_keys = [k.decode() for k in parse.get_attr("sparse_keys")]
        dense_keys = [k.decode() for k in parse.get_attr("dense_keys")]
        ragged_keys, ragged_types = [], []
    features = [(k, t, [d if d is not None and d >= 0 else 1 for d in shape])
                for k, t, shape in zip(dense_keys, dense_types, dense_shapes)]
    features += [(k, t, [1]) for k, t in zip(sparse_keys + ragged_keys, sparse_types + ragged_types)]
    return features


def _example(parse: tf.Operation, rng: np.random.Generator) -> bytes:
    """A serialized tf.Example holding every feature ``parse`` reads, with deterministic values."""
    example = tf.train.Example()
    for key, dtype, shape in _example_features(parse):
        count = int(np.prod(shape)) if shape else 1
        feature = example.features.feature[key]
        if dtype.is_floating:
            feature.float_list.value.extend(rng.random(count).astype(np.float32).tolist())
        elif dtype.is_integer:
            feature.int64_list.value.extend(rng.integers(0, 2, size=count).tolist())
        else:
            feature.bytes_list.value.extend([f"value-{i}".encode() for i in rng.integers(0, 3, size=count)])
    return example.SerializeToString()
