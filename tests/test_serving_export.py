"""TensorFlow Serving export: SavedModels built from frozen graphs, the export
root in TF Serving's layout kept in sync with the catalog, models.config checked
with TF Serving's own proto, and config reloads over gRPC."""

from __future__ import annotations

import dataclasses
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import tensorflow as tf
from click.testing import CliRunner
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from registry import catalog, tfserving
from registry.cli import main as cli
from registry.client import RegistryClient
from registry.models import ModelVersion, VersionFile
from registry.serving.grpc_server import start_grpc_server
from registry.jobs.worker import Worker
from tests import tfmodels
from tests.conftest import make_settings, start_live_server
from tests.test_openapi import _validator as openapi_schema

pytestmark = pytest.mark.slow


def checkpoint_files(model, graph: bool = True) -> list[tuple[str, Path]]:
    files = [("meta", model.meta), ("index", model.index)] + [("data", p) for p in model.data]
    return files + ([("graph", model.inference_graph)] if graph else [])


def convert_all(server) -> None:
    registry = server.registry
    worker = Worker(registry.settings, registry.db, registry.storage, on_ready=registry.serving_changed)
    while worker.run_once():
        pass


@pytest.fixture(scope="module")
def exporting(tmp_path_factory, models):
    """A live registry: cnn v1 (frozen upload), v2 and v3 (checkpoints), emb v1 (embedding lookup)."""
    server, stop = start_live_server(make_settings(tmp_path_factory.mktemp("export")), workers=False)
    client = RegistryClient(server.url)
    client.push("cnn", [("frozen", models["frozen"].frozen_graph)], {})
    client.push("cnn", checkpoint_files(models["resource_graph"]), {"output_nodes": tfmodels.OUTPUT})
    client.push("cnn", checkpoint_files(models["wide"]), {"output_nodes": tfmodels.OUTPUT})
    client.push("emb", checkpoint_files(models["embedding"], graph=False), {"output_nodes": "probs"})
    convert_all(server)
    for name, number in (("cnn", 1), ("cnn", 2), ("cnn", 3), ("emb", 1)):
        record = client.get_version(name, number)
        assert record["status"] == "ready", record["status_message"]
    server.client = client
    yield server
    stop()


def tree(root: Path) -> set[str]:
    """Every file and folder under an export root, as TF Serving would walk it (staging excluded)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if not p.relative_to(root).as_posix().startswith(".")}


def version_tree(model: str, *numbers: int) -> set[str]:
    out = {model} if numbers else set()
    for n in numbers:
        out |= {f"{model}/{n}", f"{model}/{n}/saved_model.pb", f"{model}/{n}/variables"}
    return out


def parse_config(text: str) -> dict:
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return {m.name: (m.base_path, m.model_platform, list(m.model_version_policy.specific.versions),
                     dict(m.version_labels)) for m in config.model_config_list.config}


def test_exported_version_computes_what_the_frozen_graph_computes(exporting, models, tmp_path):
    root = tmp_path / "serving"
    report = tfserving.sync(exporting.settings, exporting.registry.db, exporting.registry.storage, str(root))
    assert sorted(report.published) == ["cnn/3", "emb/1"] and not report.failed
    for name, number, model in (("cnn", 3, models["wide"]), ("emb", 1, models["embedding"])):
        frozen = tmp_path / f"{name}.pb"
        exporting.client.pull(name, str(number), frozen)
        expected = tfmodels.run_frozen(frozen, model.output, model.test_input)
        loaded = tf.saved_model.load(str(root / name / str(number)))
        serving_default = loaded.signatures["serving_default"]
        outputs = serving_default(input=tf.constant(model.test_input))
        key = model.output.replace("/", "_")
        assert list(outputs) == [key]
        np.testing.assert_allclose(outputs[key].numpy(), expected, atol=1e-6, rtol=0)
        np.testing.assert_allclose(expected, model.expected, atol=1e-5)  # and that is the checkpoint's answer
        # The way TF Serving's SavedModelBundle runs it: tag "serve", a Session, tensors named by the signature.
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(root / name / str(number)))
            signature = meta.signature_def["serving_default"]
            assert signature.method_name == "tensorflow/serving/predict"
            served = session.run(signature.outputs[key].name,
                                 {signature.inputs["input"].name: model.test_input})
        np.testing.assert_allclose(served, expected, atol=1e-6, rtol=0)


def test_saved_model_download_is_the_recorded_artifact_and_pull_verifies_it(exporting, tmp_path):
    record = exporting.client.get_version("cnn", 2)
    saved = next(f for f in record["files"] if f["role"] == "saved_model")
    result = CliRunner().invoke(cli, ["pull", "cnn:2", "--format", "saved_model", "-o", str(tmp_path / "sm.tar.gz"),
                                      "--url", exporting.url])
    assert result.exit_code == 0, result.output
    assert saved["sha256"] in result.output
    with tarfile.open(tmp_path / "sm.tar.gz") as tar:
        names = sorted(tar.getnames())
    assert names == ["saved_model.pb", "variables"]
    extracted = tmp_path / "sm"
    with tarfile.open(tmp_path / "sm.tar.gz") as tar:
        tar.extractall(extracted, filter="data")
    loaded = tf.saved_model.load(str(extracted))
    spec = loaded.signatures["serving_default"].structured_input_signature[1]
    assert list(spec) == ["input"] and spec["input"].shape.as_list() == [None, 8, 8, 3]
    assert spec["input"].dtype == tf.float32


def test_export_root_follows_aliases_and_the_served_versions_setting(exporting, tmp_path):
    root = tmp_path / "serving"
    db, client = exporting.registry.db, exporting.client

    def sync():
        return tfserving.sync(exporting.settings, db, exporting.registry.storage, str(root), "/models")

    try:
        sync()  # default: the newest ready version of each model
        assert tree(root) == version_tree("cnn", 3) | version_tree("emb", 1) | {"models.config"}

        client.set_alias("cnn", "production", 1)
        client.set_alias("cnn", "canary-2", 2)  # a fine alias, but no TF Serving label
        report = sync()
        assert sorted(report.published) == ["cnn/1", "cnn/2"] and report.removed == []
        assert tree(root) == version_tree("cnn", 1, 2, 3) | version_tree("emb", 1) | {"models.config"}
        assert (root / "models.config").read_text().endswith("}\n")  # a text file: ends with a newline
        config = parse_config((root / "models.config").read_text())
        assert config["cnn"] == ("/models/cnn", "tensorflow", [1, 2, 3], {"production": 1})
        assert config["emb"] == ("/models/emb", "tensorflow", [1], {})
        cnn = next(m for m in report.models if m.name == "cnn")
        assert cnn.skipped_aliases == [{"alias": "canary-2", "version": 2,
                                        "reason": "TensorFlow Serving labels may only use letters, digits and '_'"}]

        client.set_alias("cnn", "production", 3)  # the alias moves on: version 1 is served no more
        report = sync()
        assert report.removed == ["cnn/1"] and report.published == []
        assert tree(root) == version_tree("cnn", 2, 3) | version_tree("emb", 1) | {"models.config"}
        assert parse_config((root / "models.config").read_text())["cnn"][2:] == ([2, 3], {"production": 3})

        client.set_served_versions("cnn", [1])  # the per-model setting overrides the default
        client.set_served_versions("emb", [1])
        report = sync()
        assert sorted(report.removed) == ["cnn/2", "cnn/3"] and report.published == ["cnn/1"]
        assert tree(root) == version_tree("cnn", 1) | version_tree("emb", 1) | {"models.config"}
        config = parse_config((root / "models.config").read_text())
        assert config["cnn"][2:] == ([1], {})  # production points at 3, which is not served
        cnn = next(m for m in report.models if m.name == "cnn")
        assert {a["alias"]: a["reason"] for a in cnn.skipped_aliases}["production"] == "version 3 is not served"

        again = sync()  # idempotent
        assert again.published == [] and again.removed == []

        result = CliRunner().invoke(cli, ["serving-versions", "cnn", "all", "--url", exporting.url])
        assert result.exit_code == 0 and "cnn: serving every ready version" in result.output, result.output
        report = sync()
        assert sorted(report.published) == ["cnn/2", "cnn/3"]
        assert parse_config((root / "models.config").read_text())["cnn"][2:] == ([1, 2, 3], {"production": 3})
    finally:
        client.set_served_versions("cnn", None)
        client.set_served_versions("emb", None)
        client.delete_alias("cnn", "production")
        client.delete_alias("cnn", "canary-2")


def test_a_model_missing_from_the_catalog_disappears_from_the_export_root(exporting, tmp_path):
    root = tmp_path / "serving"
    tfserving.sync(exporting.settings, exporting.registry.db, exporting.registry.storage, str(root))
    (root / "gone" / "4" / "variables").mkdir(parents=True)  # a model exported once, deleted since
    (root / "gone" / "4" / "saved_model.pb").write_bytes(b"old")
    report = tfserving.sync(exporting.settings, exporting.registry.db, exporting.registry.storage, str(root))
    assert report.removed == ["gone/4"]
    assert tree(root) == version_tree("cnn", 3) | version_tree("emb", 1) | {"models.config"}


def test_half_written_version_folder_is_not_exported_and_gets_replaced(exporting, tmp_path):
    root = tmp_path / "serving"
    (root / "cnn" / "3" / "variables").mkdir(parents=True)  # a copy interrupted before saved_model.pb
    assert tfserving.open_target(str(root)).exported() == {"cnn": {}}
    report = tfserving.sync(exporting.settings, exporting.registry.db, exporting.registry.storage, str(root))
    assert "cnn/3" in report.published and (root / "cnn" / "3" / "saved_model.pb").is_file()
    assert not any((root / ".staging").iterdir())  # nothing left in the staging area


def forget_saved_model(db, name: str, ref: str) -> None:
    """Drop a version's SavedModel record, as for a version converted before SavedModels existed."""
    with db.transaction() as session:
        version_id = catalog.get_version(db, name, ref).id
        session.execute(sa.delete(VersionFile).where(VersionFile.version_id == version_id,
                                                     VersionFile.role == "saved_model"))
        session.execute(sa.update(ModelVersion).where(ModelVersion.id == version_id).values(saved_model_state=None))


def test_version_frozen_before_saved_models_gets_one_on_export(exporting, tmp_path):
    db = exporting.registry.db
    forget_saved_model(db, "emb", "1")  # as if converted before this feature existed
    answer = exporting.app.test_client().get("/api/v1/models/emb/versions/1/saved_model.tar.gz")
    assert answer.status_code == 409
    assert "registry export-serving" in answer.get_json()["error"]["message"]
    report = tfserving.sync(exporting.settings, db, exporting.registry.storage, str(tmp_path / "serving"))
    assert "emb/1" in report.published
    assert catalog.get_version(db, "emb", "1").file("saved_model") is not None
    assert exporting.app.test_client().get("/api/v1/models/emb/versions/1/saved_model.tar.gz").status_code == 200


def test_config_endpoint_needs_an_export_root(exporting):
    answer = exporting.app.test_client().get("/api/v1/serving/models.config")
    assert answer.status_code == 409
    assert "REGISTRY_SERVING_EXPORT_ROOT" in answer.get_json()["error"]["message"]


def test_export_to_s3_writes_the_layout_and_removes_what_is_not_served(exporting, s3_server, tmp_path):
    from tests.conftest import S3_BUCKET

    root = f"s3://{S3_BUCKET}/serving"

    def keys() -> set[str]:
        pages = s3_server.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix="serving/")
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    sync = lambda: tfserving.sync(exporting.settings, exporting.registry.db,  # noqa: E731
                                  exporting.registry.storage, root)
    sync()
    assert keys() == {"serving/cnn/3/saved_model.pb", "serving/emb/1/saved_model.pb", "serving/models.config"}
    config = parse_config(s3_server.get_object(Bucket=S3_BUCKET, Key="serving/models.config")["Body"].read().decode())
    assert config["cnn"][:3] == (f"{root}/cnn", "tensorflow", [3])
    try:
        exporting.client.set_served_versions("cnn", [2])
        report = sync()
        assert report.removed == ["cnn/3"] and report.published == ["cnn/2"]
        assert keys() == {"serving/cnn/2/saved_model.pb", "serving/emb/1/saved_model.pb", "serving/models.config"}
    finally:
        exporting.client.set_served_versions("cnn", None)


def test_serving_reload_sends_the_config_and_the_server_reports_the_new_model_list(exporting, tmp_path):
    root = tmp_path / "serving"
    exporting.client.set_alias("cnn", "stable", 2)
    # The label service takes configs for its own export root only.
    registry = dataclasses.replace(exporting.registry,
                                   settings=dataclasses.replace(exporting.settings, serving_export_root=str(root)))
    grpc_server, port = start_grpc_server(registry, port=0)
    try:
        tfserving.sync(exporting.settings, exporting.registry.db, exporting.registry.storage, str(root))
        result = CliRunner().invoke(cli, ["serving-reload", "--target", f"127.0.0.1:{port}", "--root", str(root)])
        assert result.exit_code == 0, result.output
        assert "reloaded its config: 2 model(s)" in result.output
        assert "cnn: versions 2, 3; labels stable=2" in result.output
        accepted = registry.serving_config
        assert [(m.name, list(m.model_version_policy.specific.versions), dict(m.version_labels))
                for m in accepted.model_config_list.config] == [("cnn", [2, 3], {"stable": 2}), ("emb", [1], {})]

        # TF Serving refuses a label for a version it has not loaded; so does the label service's ModelService.
        bad = tmp_path / "bad.config"
        bad.write_text((root / "models.config").read_text().replace("value: 2", "value: 1"))
        result = CliRunner().invoke(cli, ["serving-reload", "--target", f"127.0.0.1:{port}", "--config", str(bad)])
        assert result.exit_code == 1
        assert "FAILED_PRECONDITION" in result.output and "label 'stable' points at version 1" in result.output
    finally:
        grpc_server.stop(0)
        exporting.client.delete_alias("cnn", "stable")


def test_serving_reload_to_nobody_says_so(tmp_path):
    config = tmp_path / "models.config"
    config.write_text("model_config_list {}\n")
    result = CliRunner().invoke(cli, ["serving-reload", "--target", "127.0.0.1:1", "--config", str(config),
                                      "--timeout", "2"])
    assert result.exit_code == 1
    assert "could not reach TF Serving at 127.0.0.1:1" in result.output or "did not answer within 2 s" in \
        result.output, result.output
    assert "refused the config" not in result.output


def test_export_root_setting_keeps_the_root_in_sync_by_itself(models, tmp_path):
    root = tmp_path / "serving"
    settings = make_settings(tmp_path / "home", serving_export_root=str(root), serving_base_path="/models")
    server, stop = start_live_server(settings, workers=False)
    try:
        client = RegistryClient(server.url)
        exporter = server.registry.exporter
        client.push("auto", [("frozen", models["frozen"].frozen_graph)], {})
        client.push("auto", [("frozen", models["frozen"].frozen_graph)], {})
        convert_all(server)  # each version that becomes ready asks for a sync
        assert exporter.wait_idle(120) and exporter.last_error is None
        assert tree(root) == version_tree("auto", 2) | {"models.config"}

        client.set_alias("auto", "production", 1)
        assert exporter.wait_idle(120) and exporter.last_error is None
        assert tree(root) == version_tree("auto", 1, 2) | {"models.config"}
        served = server.app.test_client().get("/api/v1/serving/models.config")
        assert served.status_code == 200 and served.get_data(as_text=True) == (root / "models.config").read_text()
        assert parse_config(served.get_data(as_text=True))["auto"] == (
            "/models/auto", "tensorflow", [1, 2], {"production": 1})
        web = server.app.test_client()
        plan = web.get("/api/v1/serving").get_json()
        assert plan["models"][0]["labels"] == {"production": 1}
        doc = web.get("/api/v1/openapi.json").get_json()
        openapi_schema(doc, "ServingPlan").validate(plan)
        openapi_schema(doc, "ServedVersionsAnswer").validate(
            web.put("/api/v1/models/auto/serving", json={"versions": "all"}).get_json())
        assert exporter.wait_idle(120)
        assert tree(root) == version_tree("auto", 1, 2) | {"models.config"}

        client.delete_alias("auto", "production")
        client.set_served_versions("auto", None)
        assert exporter.wait_idle(120)
        assert tree(root) == version_tree("auto", 2) | {"models.config"}
    finally:
        stop()


def test_served_versions_setting_refuses_unknown_versions(exporting):
    web = exporting.app.test_client()
    answer = web.put("/api/v1/models/cnn/serving", json={"versions": [2, 99]})
    assert answer.status_code == 404 and "99" in answer.get_json()["error"]["message"]
    answer = web.put("/api/v1/models/cnn/serving", json={"versions": "some"})
    assert answer.status_code == 400 and "non-empty list" in answer.get_json()["error"]["message"]


def test_cli_backfills_saved_models_and_exports_with_the_reasons_for_what_is_left_out(exporting, tmp_path):
    db = exporting.registry.db
    forget_saved_model(db, "cnn", "2")  # as if converted before SavedModels existed
    env = {"REGISTRY_HOME": str(exporting.settings.home), "REGISTRY_DATABASE_URL": exporting.settings.database_url,
           "REGISTRY_STORAGE": exporting.settings.storage_url, "REGISTRY_SERVING_EXPORT_ROOT": "",
           "REGISTRY_SERVING_BASE_PATH": ""}
    result = CliRunner(env=env).invoke(cli, ["saved-models", "cnn"])
    assert result.exit_code == 0, result.output
    assert "cnn v2: SavedModel built" in result.output and "1 SavedModel(s) built, 0 failed" in result.output
    assert catalog.get_version(db, "cnn", "2").file("saved_model") is not None

    exporting.client.set_alias("cnn", "blue-green", 2)
    try:
        root = tmp_path / "serving"
        result = CliRunner(env=env).invoke(cli, ["export-serving", "--root", str(root), "--base-path", "/models"])
        assert result.exit_code == 0, result.output
        assert "3 version(s) published, 0 removed" in result.output
        assert "cnn: versions 2, 3; labels none" in result.output
        assert ("alias blue-green (version 2) is no label: TensorFlow Serving labels may only use letters, "
                "digits and '_'") in result.output
        assert tree(root) == version_tree("cnn", 2, 3) | version_tree("emb", 1) | {"models.config"}
        missing_root = CliRunner(env=env).invoke(cli, ["export-serving"])
        assert missing_root.exit_code == 2 and "REGISTRY_SERVING_EXPORT_ROOT" in missing_root.output
    finally:
        exporting.client.delete_alias("cnn", "blue-green")


def test_with_a_label_delay_a_moved_label_stays_on_the_loaded_version_until_the_new_one_had_time(exporting,
                                                                                                tmp_path):
    from dataclasses import replace

    root = tmp_path / "serving"
    settings = replace(exporting.settings, serving_label_delay=1.5)
    client = exporting.client

    def sync():
        return tfserving.sync(settings, exporting.registry.db, exporting.registry.storage, str(root))

    def cnn_config():
        return parse_config((root / "models.config").read_text())["cnn"][2:]

    client.set_alias("cnn", "production", 1)
    try:
        report = sync()  # version 1 is brand new: TF Serving has not loaded it, so no label yet
        assert cnn_config() == ([1, 3], {})
        assert report.retry_after is not None and report.retry_after <= 1.5
        time.sleep(1.6)
        assert sync().retry_after is None
        assert cnn_config() == ([1, 3], {"production": 1})

        client.set_alias("cnn", "production", 2)
        report = sync()  # 2 is published; the label stays on 1, which is kept while it does
        assert report.published == ["cnn/2"] and report.removed == []
        assert cnn_config() == ([1, 2, 3], {"production": 1})
        cnn = next(m for m in report.models if m.name == "cnn")
        assert cnn.held == [{"alias": "production", "version": 1, "moving_to": 2}]
        time.sleep(1.6)
        report = sync()  # now the label moves, and version 1 goes
        assert cnn_config() == ([2, 3], {"production": 2}) and report.removed == ["cnn/1"]
        assert tree(root) == version_tree("cnn", 2, 3) | version_tree("emb", 1) | {"models.config"}
    finally:
        client.delete_alias("cnn", "production")


def test_on_s3_saved_model_pb_is_written_last_and_deleted_first(s3_server, tmp_path):
    from tests.conftest import S3_BUCKET

    folder = tmp_path / "sm"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    (folder / "assets").mkdir()
    (folder / "assets" / "vocab.txt").write_bytes(b"a\nb\n")
    target = tfserving.open_target(f"s3://{S3_BUCKET}/order")
    calls: list[tuple[str, str]] = []

    def record(params, model, **_):
        if model.name in ("PutObject", "DeleteObject"):
            calls.append((model.name, params["Key"]))
        elif model.name == "DeleteObjects":
            calls.extend((model.name, o["Key"]) for o in params["Delete"]["Objects"])

    target.client.meta.events.register("before-parameter-build.s3", record)
    target.publish("m", 7, folder)
    written = [key for op, key in calls if op == "PutObject"]
    assert len(written) == 4 and written[-1] == "order/m/7/saved_model.pb"
    assert list(target.exported()) == ["m"] and list(target.exported()["m"]) == [7]

    calls.clear()
    target.remove("m", 7)
    deleted = [key for op, key in calls if op in ("DeleteObject", "DeleteObjects")]
    assert deleted[0] == "order/m/7/saved_model.pb" and len(deleted) == 4
    assert target.exported() == {}
