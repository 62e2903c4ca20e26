"""label_image.py's preprocessing, built into a loaded version's own graph.

label_image.py decodes an image (3 channels), casts it to float32, adds a batch
dimension, resizes it with ``tf.compat.v1.image.resize_bilinear`` to height x
width, subtracts the mean and divides by the std, in one ``Session.run``, then
feeds the result to the model in a second one.  Here those steps are ops added
to the version's ``tf.Graph`` in the inference worker (no second copy of the
weights), and a Session callable connects their output to the model's image
input (``CallableOptions.tensor_connection``): a ``:label`` is one
``Session.run`` from the encoded bytes to the scores.

The steps run per image, in a ``tf.map_fn`` over a string vector [batch]: images
of any size come out height x width, so the images of one request, and of
concurrent requests, go through the model as one batch.  ``tf.io.decode_image``
(``expand_animations=False``, channels=3) is the same kernel as the per-format
decoders label_image.py uses (``decode_jpeg``, ``decode_png``, ``decode_bmp``,
``decode_gif`` squeezed to its frame), with the same defaults, and gives the
same pixels (``tests/test_label_fused.py`` checks all four formats).

Decoding untrusted bytes therefore happens in the sandboxed inference worker
(no credentials, an address-space limit), never in the label service; the
service only sniffs the header first (:mod:`registry.serving.images`), so a
non-image or a decompression bomb is refused before any decoding.  A decoder's
failure is recognised by its node's name (:func:`failed_to_decode`) and answered
as the same 400 ``invalid_image`` as before.
"""

from __future__ import annotations

import tensorflow as tf

from registry.serving.images import LabelFeed

tf1 = tf.compat.v1
DECODE_NODE = "registry_decode_image"  # the decoder's name: an error there is the image's fault
PARALLEL_DECODES = 4  # images of one batch decoded at once


def build(graph: tf.Graph, feed: LabelFeed) -> tuple[str, str]:
    """Add label_image.py's preprocessing for ``feed`` to ``graph``: the names of its string input
    (``feed.name``) and of its [batch, height, width, 3] output, cast to the image input's dtype."""
    target = graph.get_tensor_by_name(feed.input)
    height, width, mean, std = feed.height, feed.width, feed.mean, feed.std

    def one(data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, expand_animations=False, name=DECODE_NODE)
        expanded = tf.expand_dims(tf.cast(image, tf.float32), 0)
        return tf1.image.resize_bilinear(expanded, [height, width])[0]

    with graph.as_default(), tf.name_scope(feed.scope + "/"):
        images = tf1.placeholder(tf.string, [None], name="images")
        resized = tf.map_fn(one, images, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
                            parallel_iterations=PARALLEL_DECODES)
        normalized = tf.divide(tf.subtract(resized, [mean]), [std])
        if target.dtype.base_dtype != tf.float32:
            normalized = tf.cast(normalized, target.dtype.base_dtype)
        output = tf.identity(normalized, name="preprocessed")
    if images.name != feed.name:
        raise ValueError(f"the preprocessing input came out as {images.name}, not {feed.name}")
    return images.name, output.name


def failed_to_decode(exc: Exception) -> bool:
    """Whether a run failed in the image decoder (a damaged or unsupported image)."""
    message = getattr(exc, "message", None) or str(exc)
    return f"{{{{node {DECODE_NODE}" in message or f"/{DECODE_NODE}}}}}" in message
