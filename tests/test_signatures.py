"""Every signature of a version: kept from a SavedModel, declared with a checkpoint push, verified one by
one, failing alone, exported for TF Serving, and given to versions that existed before signatures."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import tensorflow as tf
from alembic import command

from registry import catalog
from registry.converter.saved_model import write_archive
from registry.db import Database, alembic_config
from registry.jobs.worker import Worker
from tests import tfmodels
from tests.helpers import push
from tests.tfmodels import example

tf1 = tf.compat.v1
PREDICT, CLASSIFY, REGRESS = ("tensorflow/serving/predict", "tensorflow/serving/classify",
                              "tensorflow/serving/regress")


class Calculator(tf.Module):
    """A TF2 module with three @tf.function signatures sharing one variable."""

    def __init__(self) -> None:
        self.scale = tf.Variable([[1.5, -2.0, 0.25]])
        self.embedding = tf.Variable(tf.reshape(tf.range(12, dtype=tf.float32), [4, 3]))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="values")])
    def scaled(self, values):
        return {"scaled": values * self.scale}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="values")])
    def total(self, values):
        return {"total": tf.reduce_sum(values * self.scale, axis=1), "count": tf.shape(values)[0]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="ids")])
    def embed(self, ids):  # an embedding lookup: a gather from a variable inside the signature's function
        return {"vectors": tf.gather(self.embedding, ids) * self.scale}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="anything")])
    def constant(self, anything):
        return {"one": tf.constant(1.0)}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("signatures")
    export = tfmodels.build_half_plus_two(root / "half_plus_two")
    write_archive(export, root / "half_plus_two.tar.gz")
    calculator = Calculator()
    tf.saved_model.save(calculator, str(root / "calculator"), signatures={
        "serving_default": calculator.scaled, "total": calculator.total, "constant": calculator.constant,
        "embed": calculator.embed})
    write_archive(root / "calculator", root / "calculator.tar.gz")
    sparse = root / "sparse"
    with tf.Graph().as_default() as graph, tf1.Session(graph=graph) as session:
        x = tf1.placeholder(tf.float32, [None, 2], name="x")
        w = tf1.Variable([[2.0], [3.0]], name="w")
        y = tf.identity(tf.matmul(x, w), name="y")
        indices = tf.identity(tf.where(x > 0.5), name="indices")
        session.run(tf1.global_variables_initializer())
        info = tf1.saved_model.utils.build_tensor_info
        builder = tf1.saved_model.Builder(str(sparse))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": tf1.saved_model.signature_def_utils.predict_signature_def({"x": x}, {"y": y}),
            "positions": tf1.saved_model.signature_def_utils.build_signature_def(
                {"x": info(x)}, {"positions": info(tf.SparseTensor(indices, tf.ones_like(indices[:, 0]), [4, 2]))},
                PREDICT)})
        builder.save()
    write_archive(sparse, root / "sparse.tar.gz")
    return {"root": root, "half_plus_two": export, "calculator": calculator}


def convert(app) -> None:
    """Run the queued jobs: the conversion, then its SavedModel."""
    registry = app.extensions["registry"]
    worker = Worker(registry.settings, registry.db, registry.storage)
    while worker.run_once():
        pass


def pushed(app, name: str, archive: Path, **fields):
    client = app.test_client()
    answer = push(client, name, {"saved_model": (io.BytesIO(archive.read_bytes()), archive.name), **fields})
    assert answer.status_code == 202, answer.get_json()
    convert(app)
    registry = app.extensions["registry"]
    return catalog.get_version(registry.db, name, str(answer.get_json()["version"]))


def frozen_graph(app, version) -> tf.Graph:
    registry = app.extensions["registry"]
    with registry.storage.open(version.frozen_sha256) as stream:
        graph_def = tf1.GraphDef.FromString(stream.read())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


def test_a_five_signature_saved_model_keeps_every_signature_verified_on_its_own_inputs(app, saved_models):
    version = pushed(app, "half_plus_two", saved_models["root"] / "half_plus_two.tar.gz")
    assert version.status == "ready", version.status_message
    signatures = version.signatures
    assert sorted(signatures) == sorted(tfmodels.HALF_PLUS_TWO_SIGNATURES)
    expected = tfmodels.saved_model_signature_defs(saved_models["half_plus_two"])
    for name, signature in signatures.items():
        assert signature["method"] == expected[name]["method_name"]
        for side in ("inputs", "outputs"):
            assert {k: e["name"] for k, e in signature[side].items()} == \
                {k: e["name"] for k, e in expected[name][side].items()}, (name, side)
        assert signature["verification"]["status"] == "passed", (name, signature["verification"])
        assert signature["verification"]["max_abs_diff"] == 0.0
    assert signatures["classify_x_to_y"]["inputs"]["inputs"] == {"name": "tf_example:0", "dtype": "string",
                                                                  "shape": [None]}
    assert version.output_nodes == ["y"] and version.input_nodes[0]["name"] == "x"
    assert version.conversion["failed_signatures"] == {}
    assert "5 signatures" in version.status_message
    # One frozen graph answers every signature as the SavedModel's own session does
    graph = frozen_graph(app, version)
    examples = [example(x=2.0, x2=4.0), example(x=-1.0)]
    with tf1.Session(graph=graph) as session:
        got = session.run(["y:0", "y2:0", "y3:0"], {"tf_example:0": examples})
    np.testing.assert_allclose(np.concatenate(got, axis=1), [[3.0, 4.0, 5.0], [1.5, 2.5, 3.0]])
    assert not any(n.op in ("VarHandleOp", "VariableV2", "AssignVariableOp") for n in graph.as_graph_def().node)


def test_the_tf_serving_export_carries_every_signature_with_its_method(app, saved_models, tmp_path):
    version = pushed(app, "half_plus_two", saved_models["root"] / "half_plus_two.tar.gz")
    tarball = app.test_client().get(f"/api/v1/models/half_plus_two/versions/{version.version}/saved_model.tar.gz")
    assert tarball.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(tarball.get_data())) as tar:
        tar.extractall(tmp_path / "sm", filter="data")
    # The way TF Serving's SavedModelBundle runs it: tag "serve", a Session, tensors named by the signature.
    with tf1.Session(graph=tf.Graph()) as session:
        meta = tf1.saved_model.loader.load(session, ["serve"], str(tmp_path / "sm"))
        defs = meta.signature_def
        assert {n: d.method_name for n, d in defs.items()} == {
            "serving_default": PREDICT, "classify_x_to_y": CLASSIFY, "regress_x_to_y": REGRESS,
            "regress_x_to_y2": REGRESS, "regress_x2_to_y3": REGRESS}
        classify = defs["classify_x_to_y"]
        scores = session.run(classify.outputs["scores"].name, {classify.inputs["inputs"].name: [example(x=2.0)]})
        assert scores.tolist() == [[3.0]]
        regress = defs["regress_x2_to_y3"]
        assert session.run(regress.outputs["outputs"].name, {regress.inputs["inputs"].name: [[4.0]]}).tolist() == \
            [[5.0]]


def test_a_tf2_module_keeps_each_function_signature(app, saved_models):
    version = pushed(app, "calculator", saved_models["root"] / "calculator.tar.gz")
    assert version.status == "ready", version.status_message
    assert sorted(version.signatures) == ["constant", "embed", "serving_default", "total"]
    assert all(s["verification"]["status"] == "passed" for s in version.signatures.values()), version.signatures
    values = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 8.0]], np.float32)
    calculator = saved_models["calculator"]
    expected = {name: {k: v.numpy() for k, v in function(tf.constant(values)).items()}
                for name, function in (("serving_default", calculator.scaled), ("total", calculator.total))}
    expected_embed = calculator.embed(tf.constant([3, 0]))["vectors"].numpy()
    graph = frozen_graph(app, version)
    with tf1.Session(graph=graph) as session:
        for name, outputs in expected.items():
            signature = version.signatures[name]
            feed = {signature["inputs"]["values"]["name"]: values}
            for key, want in outputs.items():
                np.testing.assert_allclose(session.run(signature["outputs"][key]["name"], feed), want)
        embed = version.signatures["embed"]
        np.testing.assert_allclose(session.run(embed["outputs"]["vectors"]["name"], {embed["inputs"]["ids"]["name"]:
                                                                                    [3, 0]}), expected_embed)
        constant = version.signatures["constant"]
        # its output does not read its input; the input is kept all the same, as TF Serving feeds it
        assert session.run(constant["outputs"]["one"]["name"], {constant["inputs"]["anything"]["name"]: 7.0}) == 1.0
    assert constant["inputs"]["anything"]["shape"] is None  # unknown rank, as declared


def test_a_signature_that_cannot_be_frozen_fails_alone_and_the_others_serve(app, saved_models):
    version = pushed(app, "sparse", saved_models["root"] / "sparse.tar.gz")
    assert version.status == "ready", version.status_message
    assert list(version.signatures) == ["serving_default"]
    reason = version.conversion["failed_signatures"]["positions"]
    assert "sparse or composite" in reason
    assert "not served: signature 'positions'" in version.status_message


def test_signatures_declared_with_a_frozen_graph_push(app, tmp_path):
    with tf.Graph().as_default() as graph:
        serialized = tf1.placeholder(tf.string, [None], name="tf_example")
        x = tf.identity(tf1.io.parse_example(serialized, {"x": tf1.io.FixedLenFeature([1], tf.float32)})["x"],
                        name="x")
        tf.identity(x * 0.5 + 2.0, name="y")
    frozen = tmp_path / "frozen.pb"
    frozen.write_bytes(graph.as_graph_def().SerializeToString())
    declared = [{"name": "regress_x_to_y", "method": "regress", "inputs": ["tf_example"], "outputs": ["y"]},
                {"name": "predict_x", "inputs": {"x": "x"}, "outputs": {"y": "y:0"}}]
    client = app.test_client()
    answer = push(client, "declared", {"frozen": (io.BytesIO(frozen.read_bytes()), "frozen.pb"),
                                       "output_nodes": "y", "signatures": json.dumps(declared)})
    assert answer.status_code == 202, answer.get_json()
    convert(app)
    version = catalog.get_version(app.extensions["registry"].db, "declared", "1")
    assert version.status == "ready", version.status_message
    regress = version.signatures["regress_x_to_y"]
    assert regress["method"] == REGRESS
    assert regress["inputs"] == {"inputs": {"name": "tf_example:0", "dtype": "string", "shape": [None]}}
    assert regress["outputs"]["outputs"]["name"] == "y:0"
    assert version.signatures["predict_x"]["inputs"]["x"]["name"] == "x:0"
    assert version.signatures["serving_default"]["inputs"] == {
        "tf_example": {"name": "tf_example:0", "dtype": "string", "shape": [None]}}
    assert all(s["verification"]["status"] == "ran" for s in version.signatures.values())


@pytest.mark.parametrize("signatures, message", [
    ("[{", "signatures is not JSON"),
    ('[{"name": "r", "method": "regress", "inputs": ["a", "b"], "outputs": ["y"]}]', "takes exactly one input"),
    ('[{"name": "r", "method": "bogus", "outputs": ["y"]}]', "method must be predict, classify or regress"),
    ('[{"name": "r", "inputs": ["a"]}]', "declares no outputs"),
])
def test_a_malformed_declared_signature_is_refused_at_push_with_what_to_fix(app, tmp_path, signatures, message):
    frozen = tfmodels.build_frozen(tmp_path).frozen_graph
    answer = push(app.test_client(), "declared", {"frozen": (io.BytesIO(frozen.read_bytes()), "frozen.pb"),
                                                  "signatures": signatures})
    assert answer.status_code == 400
    assert message in answer.get_json()["error"]["message"]
    assert catalog.list_models(app.extensions["registry"].db).items == []


def test_a_declared_signature_naming_no_node_of_the_graph_fails_the_version_naming_the_closest(app, tmp_path):
    built = tfmodels.build_frozen(tmp_path)
    declared = [{"name": "extra", "inputs": ["input"], "outputs": [built.output + "x"]}]
    answer = push(app.test_client(), "declared", {
        "frozen": (io.BytesIO(built.frozen_graph.read_bytes()), "frozen.pb"), "signatures": json.dumps(declared)})
    assert answer.status_code == 202
    convert(app)
    version = catalog.get_version(app.extensions["registry"].db, "declared", "1")
    assert version.status == "failed"
    assert f"is not in the graph. Closest existing nodes: {built.output}" in version.status_message


def test_migration_gives_an_existing_version_its_one_signature(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config(db.engine)
    command.upgrade(config, "0009")
    with db.engine.begin() as connection:
        connection.execute(sa.text("insert into models (id, name, description, last_version, version_count, "
                                   "created_at, updated_at) values (1, 'cnn', '', 1, 1, '2026-01-01', '2026-01-01')"))
        connection.execute(sa.text(
            "insert into model_versions (id, model_id, version, status, status_message, source, description, "
            "output_nodes, input_nodes, created_at, updated_at) values (1, 1, 1, 'ready', '', 'frozen', '', "
            ":outputs, :inputs, '2026-01-01', '2026-01-01')"),
            {"outputs": json.dumps(["predictions/Softmax"]),
             "inputs": json.dumps([{"name": "input", "dtype": "float32", "shape": [None, 8, 8, 3],
                                    "optional": False}])})
    command.upgrade(config, "head")
    version = catalog.get_version(db, "cnn", "1")
    assert version.signatures == {"serving_default": {
        "method": PREDICT,
        "inputs": {"input": {"name": "input:0", "dtype": "float32", "shape": [None, 8, 8, 3]}},
        "outputs": {"predictions_Softmax": {"name": "predictions/Softmax:0"}}}}
    assert version.prediction_node == "predictions/Softmax"
    db.dispose()
