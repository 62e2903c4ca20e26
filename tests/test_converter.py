"""The converter on real checkpoints: freezing, output detection, verification, safety."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from registry.errors import ConversionError
from tests import tfmodels

tf = pytest.importorskip("tensorflow")


def convert(tmp_path: Path, source: str, *, output_nodes=(), tolerance=1e-5, **files) -> dict:
    from registry.converter.child import convert as run

    request = {
        "source": source,
        "files": {k: str(v) for k, v in files.items()},
        "output_nodes": list(output_nodes),
        "input_nodes": [],
        "output_path": str(tmp_path / "frozen.pb"),
        "verify_tolerance": tolerance,
    }
    return run(request)


def frozen_ops(path: Path) -> dict[str, str]:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return {n.name: n for n in graph_def.node}


@pytest.mark.parametrize("kind", ["resource_meta", "legacy_meta"])
def test_meta_checkpoint_freezes_to_what_the_checkpoint_computes(tmp_path, models, kind):
    model = models[kind]
    result = convert(tmp_path, "checkpoint+meta", meta=model.meta, checkpoint_prefix=model.prefix)
    out = tfmodels.run_frozen(tmp_path / "frozen.pb", model.output, model.test_input)
    np.testing.assert_allclose(out, model.expected, rtol=0, atol=1e-6)
    assert result["conversion"]["verification"]["status"] == "passed"
    assert result["conversion"]["verification"]["max_abs_diff"] <= 1e-6


@pytest.mark.parametrize("kind", ["resource_graph", "legacy_text", "sharded"])
def test_inference_graph_plus_checkpoint_freezes_to_what_the_checkpoint_computes(tmp_path, models, kind):
    """Binary and text GraphDefs, both variable kinds, one and two checkpoint shards."""
    model = models[kind]
    convert(tmp_path, "checkpoint+graph", graph=model.inference_graph, meta=model.meta,
            checkpoint_prefix=model.prefix, output_nodes=[model.output])
    out = tfmodels.run_frozen(tmp_path / "frozen.pb", model.output, model.test_input)
    np.testing.assert_allclose(out, model.expected, rtol=0, atol=1e-6)


def test_embedding_lookup_on_a_resource_variable_freezes(tmp_path, models):
    model = models["embedding"]
    convert(tmp_path, "checkpoint+meta", meta=model.meta, checkpoint_prefix=model.prefix)
    nodes = frozen_ops(tmp_path / "frozen.pb")
    assert "ResourceGather" not in {n.op for n in nodes.values()}
    out = tfmodels.run_frozen(tmp_path / "frozen.pb", model.output, model.test_input)
    np.testing.assert_allclose(out, model.expected, rtol=0, atol=1e-6)


def test_sharded_fixture_really_has_two_shards(models):
    assert [p.name for p in models["sharded"].data] == [
        "model.ckpt.data-00000-of-00002", "model.ckpt.data-00001-of-00002"]


def test_inference_graph_without_meta_freezes(tmp_path, models):
    model = models["resource_graph"]
    result = convert(tmp_path, "checkpoint+graph", graph=model.inference_graph, checkpoint_prefix=model.prefix)
    assert result["output_nodes"] == [model.output]
    out = tfmodels.run_frozen(tmp_path / "frozen.pb", model.output, model.test_input)
    np.testing.assert_allclose(out, model.expected, rtol=0, atol=1e-6)


def test_checkpoint_keys_that_differ_from_node_names_are_found_through_the_restore_ops(tmp_path, models):
    model = models["renamed_keys"]
    convert(tmp_path, "checkpoint+meta", meta=model.meta, checkpoint_prefix=model.prefix)
    out = tfmodels.run_frozen(tmp_path / "frozen.pb", model.output, model.test_input)
    np.testing.assert_allclose(out, model.expected, rtol=0, atol=1e-6)


def test_outputs_are_detected_leaving_out_training_and_checkpoint_machinery(tmp_path, models):
    model = models["resource_meta"]
    result = convert(tmp_path, "checkpoint+meta", meta=model.meta, checkpoint_prefix=model.prefix)
    assert result["output_nodes"] == ["predictions/Softmax"]
    assert result["output_nodes_detected"] is True
    assert result["input_nodes"] == [{"name": "input", "dtype": "float32", "shape": [None, 8, 8, 3],
                                      "optional": False}]


def test_frozen_graph_keeps_only_inference_nodes_without_devices_or_variables(tmp_path, models):
    model = models["sharded"]  # placed on two devices, trained with an optimizer
    convert(tmp_path, "checkpoint+meta", meta=model.meta, checkpoint_prefix=model.prefix)
    nodes = frozen_ops(tmp_path / "frozen.pb")
    ops = {n.op for n in nodes.values()}
    assert not ops & {"VarHandleOp", "VariableV2", "ReadVariableOp", "SaveV2", "RestoreV2",
                      "AssignVariableOp", "ResourceApplyGradientDescent", "NoOp"}
    assert not any(name.startswith(("save/", "gradients/", "train")) for name in nodes)
    assert all(n.device == "" for n in nodes.values())
    assert nodes["conv1/weights"].op == "Const"


def test_already_frozen_graph_is_registered_as_is_and_run_once(tmp_path, models):
    model = models["frozen"]
    result = convert(tmp_path, "frozen", frozen=model.frozen_graph)
    assert result["output_nodes"] == [model.output]
    assert result["conversion"]["verification"]["status"] == "ran"
    out = tfmodels.run_frozen(tmp_path / "frozen.pb", model.output, model.test_input)
    np.testing.assert_allclose(out, model.expected, rtol=0, atol=1e-6)


def test_unknown_output_node_fails_with_the_closest_existing_names(tmp_path, models):
    model = models["resource_meta"]
    with pytest.raises(ConversionError) as failure:
        convert(tmp_path, "checkpoint+meta", meta=model.meta, checkpoint_prefix=model.prefix,
                output_nodes=["predictions/Softmx"])
    assert failure.value.code == "unknown_output_node"
    assert "'predictions/Softmx' is not in the graph" in failure.value.message
    assert "predictions/Softmax" in failure.value.message


def test_checkpoint_of_another_shape_fails_naming_the_variable_and_both_shapes(tmp_path, models):
    graph, other = models["resource_graph"], models["wide"]
    with pytest.raises(ConversionError) as failure:
        convert(tmp_path, "checkpoint+graph", graph=graph.inference_graph, checkpoint_prefix=other.prefix)
    assert failure.value.code == "checkpoint_mismatch"
    assert "conv1/weights" in failure.value.message
    assert "[3, 3, 3, 4]" in failure.value.message and "[3, 3, 3, 6]" in failure.value.message


def test_checkpoint_missing_a_variable_fails_with_the_closest_keys(tmp_path, models):
    graph, other = models["resource_graph"], models["renamed_keys"]
    with pytest.raises(ConversionError) as failure:
        convert(tmp_path, "checkpoint+graph", graph=graph.inference_graph, checkpoint_prefix=other.prefix)
    assert failure.value.code == "checkpoint_mismatch"
    assert "is not in the checkpoint" in failure.value.message
    assert "renamed/" in failure.value.message


def test_truncated_data_shard_fails_saying_the_checkpoint_is_damaged(tmp_path, models):
    model = models["resource_meta"]
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for path in [model.meta, model.index, *model.data]:
        shutil.copy(path, copy / path.name)
    data = copy / model.data[0].name
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ConversionError) as failure:
        convert(tmp_path, "checkpoint+meta", meta=copy / model.meta.name, checkpoint_prefix=copy / "model.ckpt")
    assert failure.value.code == "invalid_checkpoint"
    assert "truncated" in failure.value.message


def test_meta_file_that_is_not_a_meta_graph_fails(tmp_path, models):
    bogus = tmp_path / "model.ckpt.meta"
    bogus.write_bytes(b"\xff\xd8\xff\xe0 not a protobuf at all" * 10)
    with pytest.raises(ConversionError) as failure:
        convert(tmp_path, "checkpoint+meta", meta=bogus, checkpoint_prefix=models["resource_meta"].prefix)
    assert failure.value.code == "invalid_meta_graph"


def test_graph_whose_outputs_differ_run_to_run_fails_verification_naming_the_random_ops(tmp_path, models):
    model = models["dropout_meta"]  # a training graph with unseeded dropout
    with pytest.raises(ConversionError) as failure:
        convert(tmp_path, "checkpoint+meta", meta=model.meta, checkpoint_prefix=model.prefix)
    assert failure.value.code == "verification_failed"
    assert "does not reproduce the checkpoint" in failure.value.message
    assert "RandomUniform" in failure.value.message


@pytest.mark.parametrize("in_function", [False, True], ids=["top_level", "function_body"])
def test_graph_that_writes_a_file_is_flagged_and_never_run(tmp_path, in_function):
    target = tmp_path / "written-by-graph.txt"
    hostile = tfmodels.build_hostile_frozen(tmp_path / "g", target, in_function=in_function)
    result = convert(tmp_path, "frozen", frozen=hostile, output_nodes=["output"])
    safety = result["conversion"]["safety"]
    assert safety["flagged"] is True
    assert {"op": "WriteFile", "category": "writes_files"}.items() <= next(
        f for f in safety["flags"] if f["op"] == "WriteFile").items()
    assert result["conversion"]["verification"]["status"] == "skipped"
    assert not target.exists()
