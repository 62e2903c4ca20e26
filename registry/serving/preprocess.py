"""label_image.py's preprocessing, step for step, as a TensorFlow graph.

decode (3 channels) → cast to float32 → add a batch dimension →
``tf.compat.v1.image.resize_bilinear`` to height × width → subtract the mean →
divide by the std.  One small graph per distinct setting, built once.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import tensorflow as tf

from registry.errors import InvalidRequest

tf1 = tf.compat.v1


class Preprocessor:
    def __init__(self, height: int, width: int, mean: float, std: float) -> None:
        self.settings = (height, width, mean, std)
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.data = tf1.placeholder(tf.string, [], name="image_bytes")
            decoded = {
                "jpeg": tf.io.decode_jpeg(self.data, channels=3),
                "png": tf.io.decode_png(self.data, channels=3),
                # label_image squeezes decode_gif's frame axis; the first frame is the same for one frame.
                "gif": tf.io.decode_gif(self.data)[0],
                "bmp": tf.io.decode_bmp(self.data, channels=3),
            }
            self.outputs = {}
            for fmt, image in decoded.items():
                expanded = tf.expand_dims(tf.cast(image, tf.float32), 0)
                resized = tf1.image.resize_bilinear(expanded, [height, width])
                self.outputs[fmt] = tf.divide(tf.subtract(resized, [mean]), [std])
        # Default config on purpose: the first Session in a process fixes TensorFlow's
        # thread pools for every later one, the models' included.
        self.session = tf1.Session(graph=self.graph)

    def __call__(self, data: bytes, fmt: str) -> np.ndarray:
        """A [1, height, width, 3] float32 batch from encoded image bytes."""
        try:
            return self.session.run(self.outputs[fmt], {self.data: data})
        except tf.errors.InvalidArgumentError as exc:
            detail = (exc.message or "").strip().splitlines()[0] if exc.message else ""
            raise InvalidRequest(f"the {fmt.upper()} image cannot be decoded ({detail}): send an intact image",
                                 code="invalid_image") from exc


@lru_cache(maxsize=16)
def preprocessor(height: int, width: int, mean: float, std: float) -> Preprocessor:
    return Preprocessor(height, width, mean, std)
