"""label_image.py's preprocessing built into a loaded graph (registry.serving.preprocess): the
encoded bytes go in, the model's input comes out of the same Session.run, equal to label_image.py's
per-format decoders and steps, for each image alone and for images of different sizes in one batch.
Over HTTP, tests/test_serving.py checks the scores against label_image.py itself."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from registry.serving.images import LabelFeed
from registry.serving.session import FrozenSession
from tests import images as test_images

tf1 = tf.compat.v1
HEIGHT, WIDTH, MEAN, STD = 11, 7, 100.0, 50.0
FORMATS = ["photo.jpg", "chart.png", "scan.bmp", "palette.gif"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    return test_images.write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def passthrough():
    """A loaded 'model' whose output is its image input, as the worker loads a frozen graph."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, None, None, 3], name="input")
        tf.identity(images, name="output")
    return FrozenSession(graph.as_graph_def().SerializeToString(), ["input:0", "output:0"], 0)


def label_image_tensor(path, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """label_image.py's read_tensor_from_image_file at this module's setting."""
    return test_images.label_image_tensor(path, height=height, width=width, mean=MEAN, std=STD)


def feed(height: int = HEIGHT, width: int = WIDTH) -> str:
    return LabelFeed("input:0", height, width, MEAN, STD).name


def strings(*paths) -> np.ndarray:
    batch = np.empty(len(paths), dtype=object)
    batch[:] = [p.read_bytes() for p in paths]
    return batch


@pytest.mark.parametrize("name", FORMATS)
def test_one_run_from_bytes_equals_label_image_exactly(passthrough, pictures, name):
    out = passthrough.run({feed(): strings(pictures[name])}, ["output:0"])["output:0"]
    np.testing.assert_array_equal(out, label_image_tensor(pictures[name]))


@pytest.mark.parametrize("name", FORMATS)
def test_decoded_pixels_are_the_per_format_decoders(passthrough, pictures, name):
    """At the image's own size, resize_bilinear keeps the pixels: decode_image's are label_image's."""
    out = passthrough.run({feed(20, 30): strings(pictures[name])}, ["output:0"])["output:0"]
    np.testing.assert_array_equal(out, label_image_tensor(pictures[name], 20, 30))


def test_images_of_different_sizes_and_formats_batch_in_one_run(passthrough, pictures):
    names = FORMATS + ["other.png"]  # other.png is 9x13, the rest 20x30
    out = passthrough.run({feed(): strings(*(pictures[n] for n in names))}, ["output:0"])["output:0"]
    assert out.shape == (len(names), HEIGHT, WIDTH, 3)
    for row, name in zip(out, names):
        np.testing.assert_array_equal(row, label_image_tensor(pictures[name])[0])


def test_each_setting_is_built_once_and_the_image_input_still_takes_tensors(passthrough, pictures):
    image = strings(pictures["chart.png"])
    passthrough.run({feed(): image}, ["output:0"])
    before = len(passthrough.graph.get_operations())
    passthrough.run({feed(): image}, ["output:0"])
    assert len(passthrough.graph.get_operations()) == before
    tensor = np.ones((2, HEIGHT, WIDTH, 3), np.float32)  # :predict feeds the input as before
    np.testing.assert_array_equal(passthrough.run({"input:0": tensor}, ["output:0"])["output:0"], tensor)


def test_a_damaged_image_fails_in_the_decoder(passthrough, pictures):
    from registry.serving.preprocess import failed_to_decode

    data = pictures["chart.png"].read_bytes()
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        passthrough.run({feed(): np.array([data[: len(data) // 2]], dtype=object)}, ["output:0"])
    assert failed_to_decode(caught.value)


def test_label_feed_names_round_trip_and_refuse_nonsense():
    made = LabelFeed("scope/input:1", 299, 224, -0.5, 1e30)
    assert LabelFeed.parse(made.name) == made
    assert LabelFeed.parse("input:0") is None
    for bad in ("label_image/0x8/0.0/1.0/0/input/images:0", "label_image/8x8/zero/1.0/0/input/images:0",
                "label_image/99999x8/0.0/1.0/0/input/images:0"):
        with pytest.raises(ValueError):
            LabelFeed.parse(bad)
