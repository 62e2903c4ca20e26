"""tf.Example models, as Estimators and TF Serving's own test models export them: a string input of
serialized examples, parsed in the graph (ParseExample) and looked up in constant tables.  They are
frozen, verified on examples built from the parse op's own feature keys, and served: `:predict`
takes the examples base64-encoded, as TF Serving's clients send them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf

from registry.client import RegistryClient
from registry.converter.saved_model import write_archive
from tests.conftest import make_settings, start_live_server
from tests.tfmodels import example

pytestmark = pytest.mark.slow
tf1 = tf.compat.v1
COLORS = ["red", "green", "blue"]


def build_example_model(root: Path) -> Path:
    """A TF1 SavedModel like TF Serving's half_plus_two, with a categorical feature: serialized
    tf.Examples → ParseExample → x (required), x2 (default 0) and color (a constant vocabulary
    table, out-of-vocabulary → -1); y = 0.5 x + 2, y3 = 0.5 x2 + 3 + color id."""
    export = root / "half_plus_two"
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf1.placeholder(tf.string, [None], name="tf_example")
        features = tf1.io.parse_example(serialized, {
            "x": tf1.io.FixedLenFeature([1], tf.float32),
            "x2": tf1.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            "color": tf1.io.FixedLenFeature([1], tf.string, default_value=["none"]),
        })
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(COLORS), tf.constant([0, 1, 2], tf.int64)), -1)
        color_id = tf.cast(table.lookup(features["color"]), tf.float32)
        a = tf1.get_variable("a", initializer=tf.constant(0.5))
        b = tf1.get_variable("b", initializer=tf.constant(2.0))
        c = tf1.get_variable("c", initializer=tf.constant(3.0))
        y = tf.add(a * features["x"], b, name="y")
        y3 = tf.add(a * features["x2"] + c, color_id, name="y3")
        with tf1.Session(graph=graph) as session:
            session.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
            info = tf1.saved_model.utils.build_tensor_info
            predict = tf1.saved_model.signature_def_utils.build_signature_def(
                {"examples": info(serialized)}, {"y": info(y), "y3": info(y3)}, "tensorflow/serving/predict")
            builder = tf1.saved_model.Builder(str(export))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": predict},
                                                 main_op=tf1.tables_initializer())
            builder.save()
    write_archive(export, root / "half_plus_two.tar.gz")
    return root / "half_plus_two.tar.gz"


def run_saved_model(export: Path, examples: list[bytes]) -> dict[str, np.ndarray]:
    """What TensorFlow's own loader computes for these examples."""
    with tf1.Session(graph=tf.Graph()) as session:
        meta = tf1.saved_model.loader.load(session, ["serve"], str(export))
        signature = meta.signature_def["serving_default"]
        outputs = {k: v.name for k, v in signature.outputs.items()}
        return session.run(outputs, {signature.inputs["examples"].name: examples})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    archive = build_example_model(root)
    server, stop = start_live_server(make_settings(root / "home", embedded_workers=1), workers=True)
    client = RegistryClient(server.url)
    number = client.push("half_plus_two", [("saved_model", archive)], {})["version"]
    record = client.wait("half_plus_two", number, timeout=300)
    yield {"url": server.url, "record": record, "export": root / "half_plus_two"}  # more models pushed by tests
    stop()


def test_a_tf_example_model_is_frozen_verified_on_examples_and_not_flagged(served):
    record = served["record"]
    assert record["status"] == "ready", record["status_message"]
    assert record["input_nodes"] == [{"name": "examples", "dtype": "string", "shape": [None], "optional": False}]
    assert sorted(record["output_nodes"]) == ["y", "y3"]
    assert record["verification"]["status"] == "passed"  # examples made from the parse op's own keys
    assert record["verification"]["max_abs_diff"] == 0
    assert not record["safety"]["flagged"] and record["safety"]["flags"] == []
    histogram = record["safety"]["op_histogram"]
    assert "ParseExampleV2" in histogram
    # the color lookup became plain ops over the vocabulary: nothing needs initialising when served
    assert record["conversion"]["lookups_inlined"] == 1
    assert not any("Table" in op for op in histogram), histogram


def test_predict_takes_base64_examples_and_answers_what_the_saved_model_computes(served):
    examples = [example(x=1.0), example(x=4.0, x2=2.0, color="blue"), example(x=-2.0, color="purple")]
    answer = requests.post(f"{served['url']}/v1/models/half_plus_two:predict", timeout=60,
                           data=json.dumps({"instances": [{"b64": base64.b64encode(e).decode()} for e in examples]}))
    assert answer.status_code == 200, answer.text
    expected = run_saved_model(served["export"], examples)
    predictions = answer.json()["predictions"]
    assert [p["y"] for p in predictions] == expected["y"].tolist() == [[2.5], [4.0], [1.0]]
    assert [p["y3"] for p in predictions] == expected["y3"].tolist() == [[2.0], [6.0], [2.0]]  # OOV color: -1


def test_an_example_without_a_required_feature_is_a_400_naming_it(served):
    answer = requests.post(f"{served['url']}/v1/models/half_plus_two:predict", timeout=60,
                           json={"instances": [{"b64": base64.b64encode(example(x2=1.0)).decode()}]})
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) == {"error"}
    assert "x" in answer.json()["error"] and "required" in answer.json()["error"]


@pytest.mark.parametrize("keys, values, default, queries", [
    ([3, 5, 8], ["three", "five", "eight"], "unknown", [[5, 4], [8, 3]]),  # ids to names
    (["a", "b"], [1.5, -2.0], 0.25, [["b", "a", "z"]]),  # names to numbers
    ([10, 20], [1, 2], -1, [[20, 20, 30]]),  # ids to ids, a repeated key
])
def test_a_constant_table_inlined_answers_every_lookup_as_the_table_does(keys, values, default, queries):
    from registry.converter.tables import inline_tables

    key_dtype = tf.string if keys and isinstance(keys[0], str) else tf.int64
    value_dtype = tf.string if isinstance(default, str) else (tf.float32 if isinstance(default, float) else tf.int64)
    graph = tf.Graph()
    with graph.as_default():
        query = tf1.placeholder(key_dtype, [None, None], name="query")
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys, key_dtype), tf.constant(values, value_dtype)), tf.constant(default, value_dtype))
        tf.identity(table.lookup(query), name="found")
        tf.identity(table.size(), name="size")
        with tf1.Session() as session:
            session.run(tf1.tables_initializer())
            expected = session.run(["found:0", "size:0"], {query: queries})
    graph_def = graph.as_graph_def()
    assert inline_tables(graph_def) == 2
    inlined = tf.Graph()
    with inlined.as_default():
        tf.import_graph_def(graph_def, name="")
    assert not any(op.type.startswith(("HashTable", "LookupTable")) for op in inlined.get_operations()
                   if "found" in op.name or "size" in op.name)
    with tf1.Session(graph=inlined) as session:  # no table initialiser is run
        found, size = session.run(["found:0", "size:0"], {"query:0": queries})
    assert found.tolist() == expected[0].tolist() and size == expected[1]


def build_vocabulary_model(root: Path) -> Path:
    """An Estimator-style model: a categorical feature looked up in a vocabulary file (an asset of
    the SavedModel, as feature columns save it), one-hot, times weights: score = w[word id]."""
    vocabulary = root / "words.txt"
    vocabulary.write_text("\n".join(WORDS) + "\n")
    export = root / "vocabulary_model"
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf1.placeholder(tf.string, [None], name="input_example_tensor")
        column = tf1.feature_column.categorical_column_with_vocabulary_file(
            "word", str(vocabulary), num_oov_buckets=1)
        features = tf1.io.parse_example(serialized, tf1.feature_column.make_parse_example_spec([column]))
        one_hot = tf1.feature_column.input_layer(features, [tf1.feature_column.indicator_column(column)])
        weights = tf1.get_variable("weights", initializer=tf.constant([[1.0], [2.0], [3.0], [-1.0]]))
        score = tf.matmul(one_hot, weights, name="score")
        with tf1.Session(graph=graph) as session:
            session.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
            info = tf1.saved_model.utils.build_tensor_info
            predict = tf1.saved_model.signature_def_utils.build_signature_def(
                {"examples": info(serialized)}, {"score": info(score)}, "tensorflow/serving/predict")
            builder = tf1.saved_model.Builder(str(export))
            # the vocabulary's path tensor is the SavedModel's asset, as an Estimator export records it
            assets = [op.outputs[0] for op in graph.get_operations() if op.name.endswith("/asset_path")]
            builder.add_meta_graph_and_variables(
                session, ["serve"], signature_def_map={"serving_default": predict}, main_op=tf1.tables_initializer(),
                assets_collection=assets)
            builder.save()
    vocabulary.unlink()  # only the SavedModel's own copy remains
    write_archive(export, root / "vocabulary_model.tar.gz")
    return root / "vocabulary_model.tar.gz"


WORDS = ["apple", "banana", "cherry"]


def test_a_vocabulary_file_is_inlined_and_the_model_predicts_as_the_saved_model_does(served, tmp_path):
    client = RegistryClient(served["url"])
    archive = build_vocabulary_model(tmp_path)
    record = client.wait("words", client.push("words", [("saved_model", archive)], {})["version"], timeout=300)
    assert record["status"] == "ready", record["status_message"]
    assert record["verification"]["status"] == "passed", (record["verification"], record["safety"]["flags"])
    assert not record["safety"]["flagged"], record["safety"]["flags"]  # nothing reads the file any more
    assert record["conversion"]["lookups_inlined"] == 2  # the word's lookup, and the table's size
    assert not any("TextFile" in op or "Table" in op for op in record["safety"]["op_histogram"])
    examples = [example(word=w) for w in ("cherry", "apple", "durian", "banana")]
    answer = requests.post(f"{served['url']}/v1/models/words:predict", timeout=60,
                           json={"instances": [{"b64": base64.b64encode(e).decode()} for e in examples]})
    assert answer.status_code == 200, answer.text
    expected = run_saved_model(tmp_path / "vocabulary_model", examples)["score"]
    assert answer.json()["predictions"] == expected.tolist() == [[3.0], [1.0], [-1.0], [2.0]]  # durian: OOV


class JpegClassifier(tf.Module):
    """TF Serving's ResNet-tutorial pattern: JPEG bytes in, decoded in the graph inside a map_fn."""

    def __init__(self) -> None:
        self.w = tf.Variable(tf.random.stateless_normal([3, 4], seed=[1, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        def decode(encoded):
            image = tf.cast(tf.io.decode_jpeg(encoded, channels=3), tf.float32) / 255.0
            return tf.image.resize(image, [16, 16])

        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.float32)
        return {"probabilities": tf.nn.softmax(tf.reduce_mean(images, axis=[1, 2]) @ self.w)}


def test_a_model_decoding_jpeg_bytes_is_verified_on_jpegs_and_predicts_b64_instances_like_resnet_client(
        served, tmp_path):
    model = JpegClassifier()
    tf.saved_model.save(model, str(tmp_path / "jpeg_model"), signatures={"serving_default": model.serve})
    write_archive(tmp_path / "jpeg_model", tmp_path / "jpeg_model.tar.gz")
    client = RegistryClient(served["url"])
    record = client.wait("jpegs", client.push("jpegs", [("saved_model", tmp_path / "jpeg_model.tar.gz")], {})["version"],
                         timeout=300)
    assert record["status"] == "ready", record["status_message"]
    assert record["verification"]["status"] == "passed", record["verification"]  # fed JPEGs it could decode
    rng = np.random.default_rng(9)
    jpegs = [tf.io.encode_jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).numpy() for h, w in ((40, 30), (8, 8))]
    # as TF Serving's resnet_client.py sends it: {"instances": [{"b64": ...}]}
    answer = requests.post(f"{served['url']}/v1/models/jpegs:predict", timeout=60,
                           data=json.dumps({"instances": [{"b64": base64.b64encode(j).decode()} for j in jpegs]}))
    assert answer.status_code == 200, answer.text
    expected = tf.saved_model.load(str(tmp_path / "jpeg_model")).signatures["serving_default"](
        image_bytes=tf.constant(jpegs))["probabilities"].numpy()
    np.testing.assert_allclose(answer.json()["predictions"], expected, atol=1e-6)


@pytest.mark.parametrize("image_format, decode", [("jpeg", tf.io.decode_jpeg), ("png", tf.io.decode_png),
                                                  ("bmp", tf.io.decode_bmp)])
def test_verification_images_decode_with_the_op_the_graph_uses(image_format, decode):
    from registry.converter.sample_inputs import TEST_IMAGE_SIZE, encoded_image

    encoded = encoded_image(image_format, np.random.default_rng(1))
    decoded = decode(encoded).numpy()
    assert decoded.shape == (*TEST_IMAGE_SIZE, 3)
    if image_format != "jpeg":  # lossless: the very pixels
        again = encoded_image(image_format, np.random.default_rng(1))
        assert again == encoded
        expected = np.random.default_rng(1).integers(0, 256, size=(*TEST_IMAGE_SIZE, 3), dtype=np.uint8)
        assert (decoded == expected).all()


def test_label_passes_the_image_bytes_straight_to_a_graph_that_decodes_them(served, tmp_path):
    """:label on the JPEG-bytes model (pushed by the test above, or here) feeds the uploaded file as it is:
    its top-k are the SavedModel's own probabilities for those bytes, with no second preprocessing."""
    model = JpegClassifier()
    tf.saved_model.save(model, str(tmp_path / "jpeg_model"), signatures={"serving_default": model.serve})
    write_archive(tmp_path / "jpeg_model", tmp_path / "jpeg_model.tar.gz")
    client = RegistryClient(served["url"])
    number = client.push("jpeg-label", [("saved_model", tmp_path / "jpeg_model.tar.gz")], {})["version"]
    assert client.wait("jpeg-label", number, timeout=300)["status"] == "ready"
    jpeg = tf.io.encode_jpeg(np.random.default_rng(4).integers(0, 256, (30, 20, 3), dtype=np.uint8)).numpy()
    answer = requests.post(f"{served['url']}/v1/models/jpeg-label:label?top_k=4", timeout=60,
                           files={"image": ("photo.jpg", jpeg, "image/jpeg")})
    assert answer.status_code == 200, answer.text
    expected = tf.saved_model.load(str(tmp_path / "jpeg_model")).signatures["serving_default"](
        image_bytes=tf.constant([jpeg]))["probabilities"].numpy()[0]
    predictions = answer.json()["predictions"]
    assert [p["index"] for p in predictions] == np.argsort(expected)[::-1].tolist()
    np.testing.assert_allclose([p["score"] for p in predictions], np.sort(expected)[::-1], atol=1e-6)
    assert answer.json()["timing_ms"]["preprocess"] == 0  # nothing decoded or resized outside the graph


def test_label_on_a_tf_example_model_says_to_use_predict(served):
    jpeg = tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy()
    answer = requests.post(f"{served['url']}/v1/models/half_plus_two:label", timeout=60,
                           files={"image": ("photo.jpg", jpeg, "image/jpeg")})
    assert answer.status_code == 400, answer.text
    assert "does not take an image" in answer.json()["error"] and ":predict" in answer.json()["error"]
