"""Which sink is the prediction (issue 13, item 7).

An Inception v3 inference graph ends in two sinks: the prediction and the auxiliary
classifier that only training reads.  Pushed without output names, the version must
record the prediction alone, freeze without the auxiliary branch and label by it;
models with several genuine outputs keep them all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from registry.converter.graphs import detect_outputs
from registry.jobs.worker import Worker
from tests import images as test_images
from tests import tfmodels
from tests.helpers import checkpoint_form, push

tf = pytest.importorskip("tensorflow")
OUTPUT, AUX = tfmodels.INCEPTION_OUTPUT, tfmodels.INCEPTION_AUX


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> tfmodels.BuiltModel:
    return tfmodels.build_inception(tmp_path_factory.mktemp("inception"))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    return test_images.write_images(tmp_path_factory.mktemp("pictures"))


def push_and_convert(client, registry, form: dict) -> dict:
    """Push ``form`` as version 1 of 'inception', convert it with a worker and return the record."""
    response = push(client, "inception", form)
    assert response.status_code == 202, response.get_json()
    assert Worker(registry.settings, registry.db, registry.storage).run_once() is True
    record = client.get("/api/v1/models/inception/versions/1").get_json()
    assert record["status"] == "ready", record["status_message"]
    return record


def frozen_graph(client) -> tf.compat.v1.GraphDef:
    response = client.get("/api/v1/models/inception/versions/1/frozen.pb")
    assert response.status_code == 200
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(response.data)
    return graph_def


@pytest.mark.slow
@pytest.mark.parametrize("graph", [True, False], ids=["inference_graph", "training_meta_only"])
def test_inception_pushed_without_output_names_records_and_freezes_only_the_prediction_head(
        client, registry, inception, tmp_path, graph):
    record = push_and_convert(client, registry, checkpoint_form(inception, graph=graph))
    assert record["output_nodes"] == [OUTPUT]
    assert record["output_nodes_detected"] is True
    assert record["verification"]["status"] == "passed"
    frozen = frozen_graph(client)
    assert [n.name for n in frozen.node if "AuxLogits" in n.name] == []
    path = tmp_path / "frozen.pb"
    path.write_bytes(frozen.SerializeToString())
    out = tfmodels.run_frozen(path, OUTPUT, inception.test_input)
    np.testing.assert_allclose(out, inception.expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_label_ranks_by_the_prediction_head_as_label_image_py_does(client, registry, inception, pictures,
                                                                   tmp_path):
    push_and_convert(client, registry, checkpoint_form(inception, graph=True))
    path = tmp_path / "frozen.pb"
    path.write_bytes(frozen_graph(client).SerializeToString())
    size = dict(height=tfmodels.INCEPTION_SIZE, width=tfmodels.INCEPTION_SIZE)
    for name in ("photo.jpg", "chart.png"):
        image = pictures[name]
        response = client.post("/v1/models/inception/versions/1:label", data=image.read_bytes(),
                               content_type="image/" + image.suffix.lstrip(".").replace("jpg", "jpeg"))
        assert response.status_code == 200, response.get_json()
        answer = response.get_json()["predictions"]
        expected = test_images.label_image_scores(path, image, "input", OUTPUT, **size)
        order = np.argsort(expected)[::-1][:5]
        assert [p["index"] for p in answer] == order.tolist()
        np.testing.assert_allclose([p["score"] for p in answer], expected[order], rtol=0, atol=1e-5)
        # The auxiliary head ranks otherwise: labelling by it would not pass the checks above.
        aux = test_images.label_image_scores(inception.frozen_graph, image, "input", AUX, **size)
        assert np.argsort(aux)[::-1][:5].tolist() != order.tolist()


def test_two_outputs_off_the_same_trunk_node_are_both_kept():
    """One head through slim.softmax's shape-restoring Reshape, the other through an
    l2-normalisation whose input feeds two ops: neither is the other's auxiliary."""
    assert detect_outputs(tfmodels.two_head_graph_def()) == ["first/probs", "second/scores"]


def test_heads_of_a_model_with_two_inputs_are_both_kept():
    assert detect_outputs(tfmodels.two_head_graph_def(two_inputs=True)) == ["first/probs", "second/scores"]


def test_heads_of_different_tasks_branching_off_at_different_depths_are_both_kept():
    graph_def = tfmodels.two_head_graph_def(branch="mid", second_classes=3)
    assert detect_outputs(graph_def) == ["first/probs", "second/scores"]


@pytest.mark.parametrize("graph_def, prediction", [
    pytest.param(lambda: tfmodels.inception_graph_def(aux_scope="SideHead"), OUTPUT, id="inception"),
    pytest.param(lambda: tfmodels.two_head_graph_def(branch="mid"), "first/probs", id="residual"),
])
def test_a_head_that_leaves_the_trunk_early_is_auxiliary_whatever_its_name(graph_def, prediction):
    assert detect_outputs(graph_def()) == [prediction]


@pytest.mark.parametrize("scope", ["AuxLogits", "aux_head", "losses", "metrics", "summaries"])
def test_heads_under_auxiliary_loss_metric_or_summary_scopes_are_left_out(scope):
    assert detect_outputs(tfmodels.two_head_graph_def(second_scope=scope)) == ["first/probs"]
