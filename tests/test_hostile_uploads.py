"""Untrusted SavedModels and Keras files: scanned whole before anything of them runs.

Each hostile model below would run its own code if TensorFlow's or Keras's
loader opened it (a TF1 ``main_op`` or legacy init op, a restore op reading a
path of its own, a TF2 resource's ``_initialize``, a ``tf.function`` reading a
file, a Keras ``Lambda`` layer); ``tests/hostile_models.py`` builds them.  They
are pushed over REST, the CLI and the web form to a registry with a real
converter: each is flagged naming the op and where it sits, and the secret FIFO
is never opened and the canary file never written.  SavedModels are still
frozen (statically, like a checkpoint) so the version records what it holds,
and the label service refuses them.  Clean SavedModels, TF1 and TF2, are frozen
the same static way and verified.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf
from click.testing import CliRunner

from registry.cli import main as cli
from registry.client import RegistryClient
from registry.converter import upload_scan
from registry.converter.saved_model import write_archive
from tests import hostile_models
from tests.test_hostile_graphs import reader_is_waiting

pytestmark = pytest.mark.slow
X = [[1.0, 2.0, 3.0, 4.0]]

# name → (builder, an op that must be flagged)
SAVED_MODEL_CASES = {
    "tf1-main-op": (lambda d, s, c: hostile_models.tf1_main_op(d, s, c), "WriteFile"),
    "tf1-legacy-init-op": (lambda d, s, c: hostile_models.tf1_legacy_init_op(d, s, c), "WriteFile"),
    "tf1-restore-reads-path": (lambda d, s, c: hostile_models.tf1_restore_reads_path(d, s), "RestoreV2"),
    "tf2-initialize": (lambda d, s, c: hostile_models.tf2_initialize(d, s, c), "ReadFile"),
    "tf2-function-reads-file": (lambda d, s, c: hostile_models.tf2_function_reads_file(d, s), "ReadFile"),
}


@pytest.fixture(scope="module")
def hostile(converting_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-uploads")
    secret = root / "secret.fifo"
    os.mkfifo(secret)
    canary = root / "canary.txt"
    built = {}
    for name, (build, _) in SAVED_MODEL_CASES.items():
        folder = build(root / name, secret, canary)
        write_archive(folder, root / f"{name}.tar.gz")
        built[name] = {"folder": folder, "archive": root / f"{name}.tar.gz"}
    keras_file = hostile_models.keras_lambda_reads_file(root / "lambda.keras", secret)
    client = RegistryClient(converting_server.url)
    for name, paths in built.items():
        client.push(name, [("saved_model", paths["archive"])], {})
    client.push("keras-lambda", [("keras", keras_file)], {})
    records = {name: client.wait(name, 1, timeout=180) for name in [*built, "keras-lambda"]}
    return {"url": converting_server.url, "root": root, "secret": secret, "canary": canary, "built": built,
            "keras": keras_file, "records": records, "client": client}


def nothing_ran(hostile) -> None:
    assert not reader_is_waiting(hostile["secret"]), "something opened the secret for reading"
    assert not hostile["canary"].exists(), "something wrote the canary file"


@pytest.mark.parametrize("name", list(SAVED_MODEL_CASES))
def test_hostile_saved_model_is_flagged_frozen_statically_and_never_run(hostile, name):
    op = SAVED_MODEL_CASES[name][1]
    record = hostile["records"][name]
    assert record["status"] == "ready", record["status_message"]
    assert record["safety"]["flagged"] is True
    flags = {f["op"]: f for f in record["safety"]["flags"]}
    assert op in flags and flags[op]["allowed"] is False and flags[op]["nodes"]
    assert record["verification"]["status"] == "skipped" and op in record["verification"]["reason"]
    assert op in record["refusal"] and op in record["status_message"]
    assert record["output_nodes"] == ["y"] and [i["name"] for i in record["input_nodes"]] == ["x"]
    nothing_ran(hostile)


@pytest.mark.parametrize("name", list(SAVED_MODEL_CASES))
def test_hostile_saved_model_is_refused_by_the_label_service(hostile, name):
    op = SAVED_MODEL_CASES[name][1]
    answer = requests.post(f"{hostile['url']}/v1/models/{name}:predict", json={"instances": X}, timeout=60)
    assert answer.status_code == 409 and op in answer.json()["error"], answer.text
    nothing_ran(hostile)


def test_flag_names_where_the_op_sits(hostile):
    initialize = {f["op"]: f for f in hostile["records"]["tf2-initialize"]["safety"]["flags"]}
    assert any("_initializer" in node for node in initialize["ReadFile"]["nodes"]), initialize
    restore = {f["op"]: f for f in hostile["records"]["tf1-restore-reads-path"]["safety"]["flags"]}
    assert "stolen" in restore["RestoreV2"]["nodes"]


def test_keras_lambda_layer_fails_flagged_without_being_loaded(hostile):
    record = hostile["records"]["keras-lambda"]
    assert record["status"] == "failed"
    message = record["status_message"]
    assert "flagged" in message and "Lambda" in message and "leak" in message and "not loaded" in message
    nothing_ran(hostile)


def test_cli_push_of_hostile_saved_model_and_keras_file_reports_the_flag(hostile, converting_server):
    folder = hostile["built"]["tf2-initialize"]["folder"]
    pushed = CliRunner().invoke(cli, ["push", "cli-initialize", "--saved-model", str(folder), "--wait",
                                      "--url", converting_server.url])
    assert pushed.exit_code == 0, pushed.output
    assert "flagged" in pushed.output and "ReadFile" in pushed.output and "Traceback" not in pushed.output
    keras = CliRunner().invoke(cli, ["push", "cli-lambda", "--keras", str(hostile["keras"]), "--wait",
                                     "--url", converting_server.url])
    assert keras.exit_code != 0 and "Lambda" in keras.output and "Traceback" not in keras.output, keras.output
    nothing_ran(hostile)


def test_web_form_push_of_hostile_saved_model_is_flagged(hostile, converting_server, tmp_path):
    from tests.test_web_browser import CHROMIUM, CHROMIUM_FLAGS, playwright_api

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{converting_server.url}/push")
            page.fill("#name", "form-main-op")
            page.check('input[name="kind"][value="saved_model"]')
            page.set_input_files("#saved_model", str(hostile["built"]["tf1-main-op"]["archive"]))
            with page.expect_navigation(url="**/models/form-main-op/versions/1"):
                page.click("#push-button")
        finally:
            browser.close()
    record = hostile["client"].wait("form-main-op", 1, timeout=180)
    assert record["status"] == "ready" and record["safety"]["flagged"] is True
    assert {"ReadFile", "WriteFile"} <= {f["op"] for f in record["safety"]["flags"]}
    nothing_ran(hostile)


# -- clean SavedModels are frozen the same static way and verified -----------------------------

def test_clean_tf1_and_tf2_saved_models_are_frozen_statically_and_verified(converting_server, tmp_path):
    tf1_folder = hostile_models._tf1_saved_model(tmp_path / "tf1", lambda: None)  # noqa: SLF001
    tf2_folder = tmp_path / "tf2"
    module = hostile_models._Scorer()  # noqa: SLF001
    tf.saved_model.save(module, str(tf2_folder), signatures={"serving_default": module.serve})
    client = RegistryClient(converting_server.url)
    expected = np.array(X, np.float32) @ hostile_models.WEIGHTS
    for name, folder in (("clean-tf1", tf1_folder), ("clean-tf2", tf2_folder)):
        archive = tmp_path / f"{name}.tar.gz"
        write_archive(folder, archive)
        client.push(name, [("saved_model", archive)], {})
        record = client.wait(name, 1, timeout=180)
        assert record["status"] == "ready", record["status_message"]
        assert record["safety"]["flagged"] is False and record["safety"]["flags"] == []
        assert record["verification"]["status"] == "passed" and record["verification"]["max_abs_diff"] == 0.0
        answer = requests.post(f"{converting_server.url}/v1/models/{name}:predict", json={"instances": X},
                               timeout=60)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["predictions"], expected, rtol=1e-6)


def test_standard_savers_are_not_flagged_but_a_restore_reading_its_own_path_is(tmp_path):
    secret = tmp_path / "not-read.txt"
    secret.write_text("x")
    tf1_clean = hostile_models._tf1_saved_model(tmp_path / "tf1", lambda: None)  # noqa: SLF001
    module = hostile_models._Scorer()  # noqa: SLF001
    tf.saved_model.save(module, str(tmp_path / "tf2"), signatures={"serving_default": module.serve})
    for folder in (tf1_clean, tmp_path / "tf2"):
        proto = upload_scan.read_saved_model(Path(folder))
        assert upload_scan.standard_saver(proto.meta_graphs[0])[0], "the standard saver was not recognised"
        assert upload_scan.scan_saved_model(proto).flags == []
    hostile = upload_scan.read_saved_model(hostile_models.tf1_restore_reads_path(tmp_path / "restore", secret))
    assert upload_scan.standard_saver(hostile.meta_graphs[0]) == (set(), set())
    flags = {f["op"]: f for f in upload_scan.scan_saved_model(hostile).flags}
    assert flags["RestoreV2"]["category"] == "reads_files" and "stolen" in flags["RestoreV2"]["nodes"]


def test_keras_scan_passes_built_in_layers_and_flags_lambda_and_foreign_functions(tmp_path):
    import keras

    inputs = keras.Input((3,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="probs")(inputs))
    model.save(tmp_path / "clean.keras")
    model.save(tmp_path / "clean.h5")
    for path in (tmp_path / "clean.keras", tmp_path / "clean.h5"):
        scan = upload_scan.scan_keras(upload_scan.keras_config(path))
        assert scan.flags == [] and scan.custom_objects == [], (path, scan.flags)
    config = upload_scan.keras_config(tmp_path / "clean.keras")
    config["config"]["layers"][1]["config"]["activation"] = {
        "module": "os", "class_name": "function", "config": "system", "registered_name": "function"}
    flags = upload_scan.scan_keras(config).flags
    assert flags and flags[0]["category"] == "calls_python" and "os.system" in flags[0]["op"]


def test_worker_adds_flags_a_forged_converter_report_left_out(tmp_path):
    """The child reports its own scan; the worker re-reads the frozen graph's ops (wire level, no
    TensorFlow) before storing it, so a report claiming a ReadFile graph is clean is corrected."""
    from registry.jobs.worker import confirm_report
    from tests import tfmodels

    frozen = tfmodels.build_reading_frozen(tmp_path, tmp_path / "anything.txt", in_function=True)
    forged = {"op_histogram": {}, "flags": [], "flagged": False, "upload_flags": []}
    corrected = confirm_report(Path(frozen), forged)
    assert corrected["flagged"] is True and corrected["report_incomplete"] is True
    flag = {f["op"]: f for f in corrected["flags"]}["ReadFile"]
    assert flag["category"] == "reads_files" and any("/" in node for node in flag["nodes"])  # in a function body
    honest = {"op_histogram": {}, "flags": corrected["flags"], "flagged": True, "upload_flags": []}
    assert confirm_report(Path(frozen), honest) is honest
    (tmp_path / "junk.pb").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ValueError):
        confirm_report(tmp_path / "junk.pb", forged)
    (tmp_path / "link.pb").symlink_to(frozen)
    with pytest.raises(OSError):
        confirm_report(tmp_path / "link.pb", forged)
