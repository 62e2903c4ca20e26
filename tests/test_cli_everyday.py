"""Everyday commands (issue 15, item 10), driven through the real ``registry`` command against a real
server over HTTP: ``show`` a model or a version, ``predict`` through TF Serving's REST ``:predict``,
``pull --labels``, ``audit`` and ``ls --search``.  Every answer is checked against what TensorFlow or
the files themselves say, and no path prints a traceback."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from registry.cli import main
from tests import tfmodels
from tests.conftest import BOTH_DATABASES_PER_MODULE
from tests.helpers import issue_tokens

pytestmark = [pytest.mark.slow, BOTH_DATABASES_PER_MODULE]  # ls --search's escaping differs by engine

LABELS = b"background\ncat\ndog\nfish\nbird\n"  # one per class of tfmodels' CNN


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def world(converting_server, tmp_path_factory):
    """cnn v1 (frozen, labels, description), cnn v2 (frozen, no labels), with production moved 1 -> 2
    by the write token; hp v1 (TF Serving's half_plus_two SavedModel); a token of each scope."""
    root = tmp_path_factory.mktemp("everyday")
    frozen = tfmodels.build_frozen(root / "cnn")
    export = tfmodels.build_half_plus_two(root / "half_plus_two")
    labels = root / "labels.txt"
    labels.write_bytes(LABELS)
    tokens = issue_tokens(converting_server.registry.db)
    world = {"url": converting_server.url, "tokens": tokens, "frozen": frozen, "export": export,
             "labels": labels, "root": root}
    for args in (["push", "cnn", "--frozen", str(frozen.frozen_graph), "--labels", str(labels),
                  "--description", "a small CNN", "--wait"],
                 ["push", "cnn", "--frozen", str(frozen.frozen_graph), "--wait"],
                 ["push", "hp", "--saved-model", str(export), "--wait", "--timeout", "300"],
                 ["alias", "cnn", "production", "1"],
                 ["alias", "cnn", "production", "2"]):
        result = cli(world, *args)
        assert result.exit_code == 0, result.output
    return world


def cli(world: dict, *args: str, token: str = "write", stdin: str | None = None):
    """The real `registry` command in process, with REGISTRY_URL and a token of scope ``token``."""
    env = {"REGISTRY_URL": world["url"], "REGISTRY_TOKEN": world["tokens"][token] if token else ""}
    result = CliRunner().invoke(main, list(args), env=env, input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def one_line_error(result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# -- show ------------------------------------------------------------------------------------------

def test_show_version_tells_outputs_files_labels_aliases_safety_and_matches_the_pulled_file(world, tmp_path):
    shown = cli(world, "show", "cnn:1")
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert out.startswith("cnn version 1: ready")
    assert f"  outputs (detected): {tfmodels.OUTPUT}" in out
    assert "input: input float32 [None, 8, 8, 3]" in out
    assert "  source: frozen" in out and "  description: a small CNN" in out
    assert "  aliases: none" in out  # production moved on to version 2
    assert "  labels: 5 (labels.txt)" in out
    assert "  safety: " in out and "nothing flagged" in out
    assert "  preprocessing: resize to 8 x 8, mean 0, std 255" in out
    assert "  verification: ran: uploaded already frozen" in out and "  signatures:" in out

    pulled = tmp_path / "cnn.pb"
    assert cli(world, "pull", "cnn:1", "-o", str(pulled)).exit_code == 0
    frozen_line = next(line for line in out.splitlines() if line.strip().startswith("frozen.pb:"))
    assert frozen_line.endswith(f"sha256 {sha256(pulled.read_bytes())}")
    files = {line.split()[0]: line.split() for line in out.splitlines()[out.splitlines().index("  files:") + 2:]}
    assert files["labels"][-1] == sha256(LABELS) and files["labels"][-2] == str(len(LABELS))
    assert files["frozen"][-1] == sha256(world["frozen"].frozen_graph.read_bytes())


def test_show_version_by_alias_names_its_aliases(world):
    out = cli(world, "show", "cnn:production").output
    assert out.startswith("cnn version 2: ready")
    assert "  aliases: production" in out
    assert "  labels: none" in out


def test_show_model_tells_versions_latest_aliases_and_the_newest_versions(world):
    result = cli(world, "show", "cnn")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "cnn"
    assert "  versions: 2; latest (newest ready): 2" in lines
    assert "  aliases: production=2" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["VERSION", "STATUS"])
    rows = [line.split() for line in lines[header + 1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("2", "ready", "frozen"), ("1", "ready", "frozen")]
    assert "production" in rows[0]

    limited = cli(world, "show", "cnn", "--limit", "1").output
    assert "  newest 1 version(s):" in limited and "\n    1 " not in limited


def test_version_show_is_the_same_as_show_of_a_version(world):
    assert cli(world, "version", "show", "cnn:1").output == cli(world, "show", "cnn:1").output


@pytest.mark.parametrize("spec", ["nope", "nope:1", "cnn:9"])
def test_show_of_something_missing_is_one_line(world, spec):
    line = one_line_error(cli(world, "show", spec))
    assert ("nope" if spec.startswith("nope") else "9") in line


# -- predict ---------------------------------------------------------------------------------------

def test_predict_answers_what_tensorflow_computes(world):
    x = [[1.0], [2.0], [5.0]]
    result = cli(world, "predict", "hp:1", "--json", json.dumps({"instances": x}))
    assert result.exit_code == 0, result.output
    expected = tfmodels.run_signature(world["export"], "serving_default", {"x": np.array(x, np.float32)})["y"]
    assert json.loads(result.stdout) == {"predictions": expected.tolist()} == {"predictions": [[2.5], [3.0], [4.5]]}


def test_predict_by_alias_on_a_frozen_cnn_matches_tensorflow(world):
    model = world["frozen"]
    body = json.dumps({"instances": model.test_input.tolist()})
    result = cli(world, "predict", "cnn:production", "--json", body)
    assert result.exit_code == 0, result.output
    expected = tfmodels.run_frozen(model.frozen_graph, model.output, model.test_input)
    np.testing.assert_allclose(np.array(json.loads(result.stdout)["predictions"]), expected, atol=1e-5)


def test_predict_reads_a_file_or_stdin_and_runs_the_signature_named(world, tmp_path):
    examples = [{"b64": base64.b64encode(tfmodels.example(x=x)).decode()} for x in (2.0, 6.0)]
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"instances": examples}))
    from_file = cli(world, "predict", "hp", "--json", f"@{body}", "--signature", "regress_x_to_y2")
    assert from_file.exit_code == 0, from_file.output
    assert json.loads(from_file.stdout) == {"predictions": [[4.0], [6.0]]}  # 0.5 x + 3
    from_stdin = cli(world, "predict", "hp:v1", "--json", "-", stdin=json.dumps({"inputs": [4.0]}))
    assert from_stdin.exit_code == 0, from_stdin.output
    assert json.loads(from_stdin.stdout) == {"outputs": [4.0]}


def test_a_tf_serving_error_is_one_line(world):
    line = one_line_error(cli(world, "predict", "hp:1", "--json", '{"instances": [[1.0]]}', "--signature", "nope"))
    assert 'signature key "nope" not found' in line and "serving_default" in line  # the signatures there are
    assert line.endswith("pass one of them with --signature") and "signature_name" not in line
    missing = one_line_error(cli(world, "predict", "nope:1", "--json", '{"instances": [[1.0]]}'))
    assert "nope" in missing


@pytest.mark.parametrize("body, said", [
    ('{"instances": [1.0', "the body is not valid JSON (Expecting ',' delimiter: line 1 column 19 (char 18))"),
    ("[1, 2]", 'the body must be a JSON object such as {"instances": [...]}, not a list'),
    ('{"x": 1}', 'the body has neither "instances" (rows) nor "inputs" (columns)'),
    ("@/nonexistent/body.json", "cannot read /nonexistent/body.json: No such file or directory"),
])
def test_bad_json_is_a_usage_error_naming_the_problem(world, body, said):
    result = cli(world, "predict", "hp:1", "--json", body)
    assert result.exit_code == 2, result.output
    assert f"Error: Invalid value for --json: {said}" in result.output


def test_json_from_stdin_that_is_not_json_says_so(world):
    result = cli(world, "predict", "hp:1", "--json", "-", stdin="instances: 1\n")
    assert result.exit_code == 2
    assert "Error: Invalid value for --json: standard input is not valid JSON" in result.output


def test_signature_given_twice_differently_is_a_usage_error(world):
    body = json.dumps({"instances": [[1.0]], "signature_name": "serving_default"})
    result = cli(world, "predict", "hp:1", "--json", body, "--signature", "regress_x_to_y")
    assert result.exit_code == 2
    assert ('the body names signature_name "serving_default" and --signature regress_x_to_y: give one of them'
            in result.output)


def test_the_installed_command_prints_a_predict_error_as_one_line(world):
    done = subprocess.run([sys.executable, "-m", "registry.cli", "predict", "hp:1", "--json", '{"instances": [[1]]}',
                           "--signature", "nope", "--url", world["url"], "--token", world["tokens"]["read"]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("Error: "), done.stderr


# -- pull --labels ---------------------------------------------------------------------------------

def test_pull_labels_writes_the_pushed_labels_beside_the_graph(world, tmp_path):
    result = cli(world, "pull", "cnn:1", "--labels", "-o", str(tmp_path / "model.pb"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.labels.txt").read_bytes() == LABELS
    assert f"model.pb: cnn version 1, sha256 {sha256((tmp_path / 'model.pb').read_bytes())} (verified)" in result.output
    assert f"model.labels.txt: cnn version 1 labels, sha256 {sha256(LABELS)} (verified)" in result.output


def test_pull_labels_by_default_names_them_after_the_version(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(world, "pull", "cnn:1", "--labels", token="read")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cnn-v1.labels.txt").read_bytes() == LABELS and (tmp_path / "cnn-v1.pb").is_file()


def test_pull_labels_of_a_version_without_labels_is_one_line_and_writes_nothing(world, tmp_path):
    line = one_line_error(cli(world, "pull", "cnn:production", "--labels", "-o", str(tmp_path / "x.pb")))
    assert line == "Error: cnn version 2 has no labels file (it labels with class indexes): pull without --labels"
    assert list(tmp_path.iterdir()) == []


# -- audit -----------------------------------------------------------------------------------------

def test_audit_lists_the_alias_move_with_its_actor(world):
    result = cli(world, "audit", token="admin")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["WHEN", "(UTC)", "ACTOR", "ACTION", "TARGET"]
    moves = [line for line in lines if " alias.set " in line]
    assert len(moves) == 2, result.output
    assert moves[0].split()[2:5] == ["write-token", "alias.set", "cnn:production"]  # newest first
    assert "version=2, previous=1" in moves[0]


def test_audit_filters_by_action_limits_and_shows_the_reason(world):
    node = tfmodels.OUTPUT
    assert cli(world, "version", "set", "cnn:2", "--prediction-output", node, "--reason", "the only head").exit_code == 0
    result = cli(world, "audit", "--action", "version.update", "--limit", "1", token="admin")
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()[1:]
    assert len(rows) == 1 and "version.update" in rows[0] and "cnn/2" in rows[0]
    assert "the only head" in rows[0] and f"prediction_output={node}" in rows[0]
    assert cli(world, "audit", "--action", "no.such", token="admin").output.strip() == "no no.such events"


@pytest.mark.parametrize("scope", ["read", "write"])
def test_audit_with_a_token_below_admin_says_an_admin_token_is_needed(world, scope):
    line = one_line_error(cli(world, "audit", token=scope))
    assert line.startswith("Error: the audit log needs an admin token")
    assert f"has {scope} scope" in line and "registry token create --name NAME --scope admin" in line


# -- ls --search -----------------------------------------------------------------------------------

def _models(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [line.split()[0] for line in result.output.splitlines()[1:]]


def test_ls_search_lists_the_models_whose_name_contains_the_text(world):
    for name in ("image_net", "imagexnet"):
        assert cli(world, "push", name, "--frozen", str(world["frozen"].frozen_graph)).exit_code == 0
    assert _models(cli(world, "ls", "--search", "CN")) == ["cnn"]
    assert _models(cli(world, "ls", "--search", "image")) == ["image_net", "imagexnet"]
    assert _models(cli(world, "ls", "--search", "e_n")) == ["image_net"]  # _ is no wildcard
    assert sorted(_models(cli(world, "ls"))) == ["cnn", "hp", "image_net", "imagexnet"]


def test_ls_search_takes_percent_literally(world):
    result = cli(world, "ls", "--search", "%")
    assert result.exit_code == 0 and result.output.strip() == "no model name contains '%'"


def test_ls_search_with_a_model_name_is_a_usage_error(world):
    result = cli(world, "ls", "cnn", "--search", "x")
    assert result.exit_code == 2 and "--search filters the list of models" in result.output
