"""Preprocessing and descriptions from the CLI (issue 15, item 3): ``registry push --input-*``,
``registry edit NAME[:REF]`` (a version's preprocessing and description, a model's description),
the flat and the nested form of ``PATCH .../versions/N``, ``PATCH /api/v1/models/NAME``, and who
may do it.  Each drives the real ``registry`` command as a subprocess against a real HTTP server."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import nullcontext

import numpy as np
import pytest
import requests

from registry.client import RegistryClient
from tests import images as test_images
from tests import tfmodels
from tests.conftest import BOTH_DATABASES_PER_MODULE, fresh_postgres_database, make_settings, start_live_server
from tests.helpers import bearer, issue_tokens

pytestmark = [pytest.mark.slow, BOTH_DATABASES_PER_MODULE]


def cli(url: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REGISTRY_TOKEN"}
    env["REGISTRY_URL"] = url
    if token:
        env["REGISTRY_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "registry.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess, status: int = 1) -> str:
    """The one-line error of a refused command."""
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: "), result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    """An 8x8x3-image classifier's frozen graph (input 'input', output predictions/Softmax)."""
    return tfmodels.build_frozen(tmp_path_factory.mktemp("frozen")).frozen_graph


@pytest.fixture(scope="module")
def tuned(converting_server, frozen):
    """`registry push tuned --frozen ... --input-*` waited on until ready: its record."""
    ok(cli(converting_server.url, "push", "tuned", "--frozen", str(frozen), "--input-height", "8",
           "--input-width", "8", "--input-mean", "127.5", "--input-std", "127.5", "--wait"))
    return requests.get(f"{converting_server.url}/api/v1/models/tuned/versions/1").json()


@pytest.fixture
def guarded_server(tmp_path, module_database, request):
    """A registry of its own (its first token closes anonymous writes), on the module's kind of database."""
    fresh = fresh_postgres_database(template=request.getfixturevalue("postgres_template")) if module_database \
        else nullcontext(None)
    with fresh as url:
        server, stop = start_live_server(make_settings(tmp_path / "guarded", **({"database_url": url} if url else {})),
                                         workers=False)
        yield server
        stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return test_images.write_images(tmp_path_factory.mktemp("images"))["chart.png"]


def preprocessing(url: str, name: str, ref: str = "latest") -> dict:
    return requests.get(f"{url}/api/v1/models/{name}/versions/{ref}").json()["preprocessing"]


def label(url: str, name: str, image) -> dict:
    answer = requests.post(f"{url}/v1/models/{name}:label", params={"top_k": 5}, data=image.read_bytes(),
                           headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    return {p["index"]: p["score"] for p in answer.json()["predictions"]}


# -- push --------------------------------------------------------------------------------------------

def test_push_records_the_preprocessing_options_on_the_version(tuned):
    assert tuned["status"] == "ready", tuned["status_message"]
    assert tuned["preprocessing"] == {"input_height": 8, "input_width": 8, "input_mean": 127.5, "input_std": 127.5}


def test_push_refuses_a_zero_std_and_a_size_out_of_range_before_uploading(converting_server, frozen):
    zero = refused(cli(converting_server.url, "push", "zero", "--frozen", str(frozen), "--input-std", "0"), 2)
    assert "--input-std" in zero and "must not be 0" in zero
    huge = refused(cli(converting_server.url, "push", "huge", "--frozen", str(frozen), "--input-height", "9000"), 2)
    assert "--input-height" in huge and "8192" in huge
    assert requests.get(f"{converting_server.url}/api/v1/models/zero").status_code == 404
    assert requests.get(f"{converting_server.url}/api/v1/models/huge").status_code == 404


# -- registry edit -----------------------------------------------------------------------------------

def test_edit_changes_preprocessing_prints_old_and_new_and_label_follows(converting_server, tuned, image,
                                                                         tmp_path):
    url = converting_server.url
    RegistryClient(url).pull("tuned", "1", tmp_path / "v1.pb")
    before = label(url, "tuned", image)
    expected = test_images.label_image_scores(tmp_path / "v1.pb", image, "input", tfmodels.OUTPUT, height=8,
                                              width=8, mean=127.5, std=127.5)
    np.testing.assert_allclose([before[i] for i in range(len(expected))], expected, atol=1e-5)

    out = ok(cli(url, "edit", "tuned:latest", "--input-mean", "0", "--input-std", "255"))
    assert "tuned version 1:" in out
    assert "input_mean: 127.5 -> 0" in out and "input_std: 127.5 -> 255" in out
    assert preprocessing(url, "tuned") == {"input_height": 8, "input_width": 8, "input_mean": 0.0,
                                           "input_std": 255.0}
    after = label(url, "tuned", image)
    expected = test_images.label_image_scores(tmp_path / "v1.pb", image, "input", tfmodels.OUTPUT, height=8,
                                              width=8, mean=0, std=255)
    np.testing.assert_allclose([after[i] for i in range(len(expected))], expected, atol=1e-5)
    assert max(abs(after[i] - before[i]) for i in before) > 1e-4  # the edit really changed :label's input

    again = ok(cli(url, "edit", "tuned:1", "--input-mean", "0"))
    assert "nothing changed" in again and "input_mean is already 0" in again


def test_edit_by_alias_changes_the_version_it_points_at(converting_server, tuned):
    url = converting_server.url
    ok(cli(url, "alias", "tuned", "production", "1"))
    out = ok(cli(url, "edit", "tuned:production", "--input-height", "16", "--input-width", "12"))
    assert "tuned version 1:" in out and "input_height: 8 -> 16" in out and "input_width: 8 -> 12" in out
    assert preprocessing(url, "tuned", "1")["input_height"] == 16
    assert preprocessing(url, "tuned", "1")["input_width"] == 12


def test_edit_changes_a_version_description_and_the_models(converting_server, tuned):
    url = converting_server.url
    out = ok(cli(url, "edit", "tuned:1", "--description", "mean 0, std 255"))
    assert 'description: "" -> "mean 0, std 255"' in out
    assert requests.get(f"{url}/api/v1/models/tuned/versions/1").json()["description"] == "mean 0, std 255"

    out = ok(cli(url, "edit", "tuned", "--description", "Chart classifier, retrained weekly"))
    assert out.startswith("model tuned:") and '-> "Chart classifier, retrained weekly"' in out
    model = requests.get(f"{url}/api/v1/models/tuned").json()
    assert model["description"] == "Chart classifier, retrained weekly"
    assert requests.get(f"{url}/api/v1/models/tuned/versions/1").json()["description"] == "mean 0, std 255"
    listed = ok(cli(url, "ls"))
    assert "DESCRIPTION" in listed.splitlines()[0]
    assert "Chart classifier, retrained weekly" in next(line for line in listed.splitlines()
                                                        if line.startswith("tuned "))
    page = requests.get(f"{url}/models/tuned").text
    assert "Chart classifier, retrained weekly" in page


def test_edit_without_an_option_is_a_usage_error_naming_the_options(converting_server, tuned):
    message = refused(cli(converting_server.url, "edit", "tuned:1"), 2)
    for option in ("--input-height", "--input-width", "--input-mean", "--input-std", "--description"):
        assert option in message


def test_edit_of_preprocessing_without_a_version_asks_for_one(converting_server, tuned):
    before = preprocessing(converting_server.url, "tuned", "1")
    message = refused(cli(converting_server.url, "edit", "tuned", "--input-mean", "1234"), 2)
    assert "tuned:latest" in message and "--input-mean" in message
    assert preprocessing(converting_server.url, "tuned", "1") == before


@pytest.mark.parametrize(("args", "status", "says"), [
    (["tuned:42", "--input-mean", "1"], 1, "has no version 42"),
    (["tuned:nightly", "--input-mean", "1"], 1, "nightly"),
    (["nosuchmodel", "--description", "x"], 1, "'nosuchmodel' does not exist"),
    (["tuned:1", "--input-std", "0"], 2, "must not be 0"),
    (["tuned:1", "--input-width", "0"], 2, "--input-width"),
])
def test_edit_refusals_are_one_line(converting_server, tuned, args, status, says):
    assert says in refused(cli(converting_server.url, "edit", *args), status)


# -- the HTTP API ------------------------------------------------------------------------------------

def test_patch_takes_the_settings_flat_or_nested(converting_server, tuned):
    url = f"{converting_server.url}/api/v1/models/tuned/versions/1"
    flat = requests.patch(url, json={"input_mean": 127.5})
    assert flat.status_code == 200, flat.text
    assert flat.json()["preprocessing"]["input_mean"] == 127.5
    nested = requests.patch(url, json={"preprocessing": {"input_std": 127.5}, "description": "nested"})
    assert nested.status_code == 200, nested.text
    assert nested.json()["preprocessing"]["input_mean"] == 127.5  # left out: kept
    assert (nested.json()["preprocessing"]["input_std"], nested.json()["description"]) == (127.5, "nested")
    both = requests.patch(url, json={"input_height": 8, "preprocessing": {"input_height": 8, "input_width": 8}})
    assert both.status_code == 200, both.text
    assert (both.json()["preprocessing"]["input_height"], both.json()["preprocessing"]["input_width"]) == (8, 8)
    assert preprocessing(converting_server.url, "tuned") == {"input_height": 8, "input_width": 8,
                                                             "input_mean": 127.5, "input_std": 127.5}


@pytest.mark.parametrize(("body", "code", "says"), [
    ({"input_mean": 1, "preprocessing": {"input_mean": 2}}, "conflicting_preprocessing",
     "input_mean is sent twice with different values: 1 at the top level and 2 under \"preprocessing\""),
    ({"input_mean": 1, "mean": 2}, "invalid_version_update", "unknown field(s) 'mean'"),
    ({"preprocessing": {"mean": 2}}, "invalid_preprocessing", "unknown preprocessing setting(s) mean"),
    ({"input_std": 0}, "invalid_preprocessing", "input_std must not be 0"),
    ({"input_height": 0}, "invalid_preprocessing", "from 1 to 8192"),
    ({}, "invalid_version_update", '{"preprocessing": {"input_mean": 127.5}}'),
])
def test_patch_refusals_say_what_to_send_and_change_nothing(converting_server, tuned, body, code, says):
    before = requests.get(f"{converting_server.url}/api/v1/models/tuned/versions/1").json()
    answer = requests.patch(f"{converting_server.url}/api/v1/models/tuned/versions/1", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == code
    assert says in answer.json()["error"]["message"]
    after = requests.get(f"{converting_server.url}/api/v1/models/tuned/versions/1").json()
    assert (after["preprocessing"], after["updated_at"]) == (before["preprocessing"], before["updated_at"])


def test_patch_model_sets_its_description(converting_server, tuned):
    url = f"{converting_server.url}/api/v1/models/tuned"
    answer = requests.patch(url, json={"description": "by the API"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["description"] == "by the API"
    assert requests.get(url).json()["description"] == "by the API"
    for body in ({"description": 3}, {"name": "x"}, {"description": "x" * 10_001}, {}):
        refused_answer = requests.patch(url, json=body)
        assert refused_answer.status_code == 400, body
        assert refused_answer.json()["error"]["code"] == "invalid_model_update"
    assert requests.get(url).json()["description"] == "by the API"
    assert requests.patch(f"{converting_server.url}/api/v1/models/nope", json={"description": "x"}).status_code == 404


# -- who may edit, and the audit log -----------------------------------------------------------------

def test_a_read_token_is_refused_and_a_write_tokens_edits_are_audited(guarded_server, frozen):
    url = guarded_server.url
    tokens = issue_tokens(guarded_server.registry.db)  # the first tokens: anonymous writes close
    ok(cli(url, "push", "guarded", "--frozen", str(frozen), "--input-mean", "1", token=tokens["write"]))

    for args in (["guarded:1", "--input-mean", "2"], ["guarded", "--description", "x"]):
        message = refused(cli(url, "edit", *args, token=tokens["read"]))
        assert "has read scope; this needs write" in message
        assert "needs a token with write scope" in refused(cli(url, "edit", *args))
    assert requests.patch(f"{url}/api/v1/models/guarded", json={"description": "x"},
                          headers=bearer(tokens["read"])).status_code == 403
    assert requests.patch(f"{url}/api/v1/models/guarded/versions/1", json={"input_mean": 2},
                          headers=bearer(tokens["read"])).status_code == 403
    unchanged = requests.get(f"{url}/api/v1/models/guarded", headers=bearer(tokens["read"])).json()
    assert unchanged["description"] == ""

    ok(cli(url, "edit", "guarded:1", "--input-mean", "2", "--description", "v1", token=tokens["write"]))
    ok(cli(url, "edit", "guarded", "--description", "guarded model", token=tokens["write"]))
    version = requests.get(f"{url}/api/v1/models/guarded/versions/1", headers=bearer(tokens["read"])).json()
    assert (version["preprocessing"]["input_mean"], version["description"]) == (2.0, "v1")
    events = requests.get(f"{url}/api/v1/audit", headers=bearer(tokens["admin"])).json()["events"]
    edits = [(e["action"], e["actor"], e["target"], e["details"]) for e in events
             if e["action"] in ("version.update", "model.update")]
    assert edits == [
        ("model.update", "write-token", "guarded", {"description": {"old": "", "new": "guarded model"}}),
        ("version.update", "write-token", "guarded/1", {"preprocessing": {"input_mean": 2.0}, "description": "v1"}),
    ]
