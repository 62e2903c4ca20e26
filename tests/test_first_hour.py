"""The first hour of a newcomer (issue 15): unknown paths answered in their API's own error shape,
uploads that cannot be GraphDefs refused at push, and CLI errors that speak CLI (one line, what to
type instead, no traceback)."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner

from registry.cli import main
from tests.helpers import blob_files, checkpoint_form, frozen_form, push

WERKZEUG = "If you entered the URL manually"


# -- item 13: 404 and 405 in the right shape ------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/v1/foo", "/api/nothing", "/api/v1/models/m/versions/1/nope"])
def test_unknown_api_path_gets_the_api_error_shape(client, path):
    answer = client.get(path)
    assert answer.status_code == 404
    assert answer.is_json, answer.get_data(as_text=True)[:200]
    error = answer.get_json()["error"]
    assert error["code"] == "not_found"
    assert path in error["message"] and "/api/v1/openapi.json" in error["message"]
    assert WERKZEUG not in answer.get_data(as_text=True)
    assert client.get("/api/v1/openapi.json").status_code == 200  # the document it points at exists


def test_wrong_method_on_the_api_is_405_saying_what_is_allowed(client):
    answer = client.delete("/api/v1/models")
    assert answer.status_code == 405
    error = answer.get_json()["error"]
    assert error["code"] == "method_not_allowed"
    assert "DELETE is not allowed on /api/v1/models: use GET" in error["message"]
    assert "GET" in answer.headers["Allow"]


@pytest.mark.parametrize("path", ["/v1/foo", "/v1/models/m/versions/1/labels/x/extra", "/v1/"])
def test_unknown_serving_path_gets_tf_servings_error_shape(client, path):
    answer = client.get(path)
    assert answer.status_code == 404
    body = answer.get_json()
    assert isinstance(body["error"], str), body  # TF Serving's {"error": "..."}
    assert "/v1/models/NAME" in body["error"] and ":predict" in body["error"]
    assert WERKZEUG not in body["error"]


def test_wrong_method_on_serving_is_405_in_tf_servings_shape(client):
    answer = client.put("/v1/models/m:predict")
    assert answer.status_code == 405
    assert answer.get_json() == {"error": "PUT is not allowed on /v1/models/m:predict: use GET or POST"}
    assert set(answer.headers["Allow"].split(", ")) >= {"GET", "POST"}


def test_pages_keep_their_html_404(client):
    answer = client.get("/no-such-page", headers={"Accept": "text/html"})
    assert answer.status_code == 404
    assert answer.mimetype == "text/html"
    assert WERKZEUG not in answer.get_data(as_text=True)


def test_a_label_service_alone_says_it_has_no_api(settings):
    from registry.app import create_app
    from tests.conftest import seed_database

    app = create_app(seed_database(settings), serving_only=True)
    try:
        answer = app.test_client().get("/api/v1/models")
        assert answer.status_code == 404
        assert "label service alone" in answer.get_json()["error"]["message"]
    finally:
        app.extensions["registry"].db.dispose()


# -- item 6: a file that cannot be a GraphDef is refused at push ------------------------------------

NOTES = b"These are my notes about the model.\nTrain longer next time.\n"


def _assert_nothing_stored(client, settings, name: str) -> None:
    assert client.get(f"/api/v1/models/{name}").status_code == 404  # no version number was taken
    assert blob_files(settings.home) == []


def test_text_file_as_graph_is_refused_at_push(client, settings, models):
    form = checkpoint_form(models["resource_meta"])
    form["graph"] = (io.BytesIO(NOTES), "notes.txt")
    answer = push(client, "notes", form)
    assert answer.status_code == 400, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_graph"
    assert "'graph'" in error["message"] and "notes.txt" in error["message"]
    assert "binary .pb or a text .pbtxt" in error["message"]
    _assert_nothing_stored(client, settings, "notes")


def test_text_file_as_frozen_is_refused_at_push(client, settings):
    answer = push(client, "notes", {"frozen": (io.BytesIO(NOTES), "notes.pb")})
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_graph" and "'frozen'" in error["message"] and "notes.pb" in error["message"]
    assert "it is a text file" in error["message"]
    _assert_nothing_stored(client, settings, "notes")


def test_text_metagraphdef_as_graph_is_refused_saying_so(client, settings, models):
    form = checkpoint_form(models["resource_meta"])
    form["graph"] = (io.BytesIO(b"# exported\nmeta_info_def {\n  stripped_op_list {\n  }\n}\n"), "model.pbtxt")
    answer = push(client, "meta-text", form)
    assert answer.status_code == 400
    assert "MetaGraphDef in text format" in answer.get_json()["error"]["message"]
    _assert_nothing_stored(client, settings, "meta-text")


def test_text_graphdef_is_still_accepted(client, models):
    model = models["legacy_text"]
    assert model.inference_graph.suffix == ".pbtxt"
    answer = push(client, "text-graph", checkpoint_form(model, graph=True))
    assert answer.status_code == 202, answer.get_json()


def test_binary_graphdef_is_still_accepted(client, models):
    assert push(client, "frozen", frozen_form(models["frozen"].frozen_graph)).status_code == 202


# -- item 4: CLI errors speak CLI ------------------------------------------------------------------

def run_cli(*args: str, env: dict | None = None):
    """The real `registry` command in process; a Python exception escaping it fails the test."""
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def labelled(converting_server, models, tmp_path_factory):
    """Model 'cnn' v1 (ready, an image input), and images: good, truncated, and a text file."""
    from registry.client import RegistryClient
    from tests import images as test_images
    from tests.test_serving import checkpoint_files

    client = RegistryClient(converting_server.url)
    model = models["resource_graph"]
    client.push("cnn", checkpoint_files(model), {"output_nodes": model.output})
    assert client.wait("cnn", 1, timeout=120)["status"] == "ready"
    folder = tmp_path_factory.mktemp("first-hour-images")
    pictures = test_images.write_images(folder)
    truncated = folder / "cut.jpg"
    data = pictures["photo.jpg"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    notes = folder / "notes.txt"
    notes.write_bytes(NOTES)
    return {"url": converting_server.url, "model": model, "good": pictures["photo.jpg"], "truncated": truncated,
            "notes": notes}


@pytest.mark.parametrize("url", ["127.0.0.1:8090", "localhost:8090"])
def test_url_without_scheme_is_one_line_saying_what_to_type(url):
    result = run_cli("ls", "--url", url)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: --url needs a scheme: http://{url}"


def test_registry_url_without_scheme_names_the_variable():
    result = run_cli("ls", env={"REGISTRY_URL": "127.0.0.1:8090"})
    assert result.exit_code == 1
    assert result.output.strip() == "Error: REGISTRY_URL needs a scheme: http://127.0.0.1:8090"


def test_pull_into_a_missing_folder_is_one_line(tmp_path):
    target = tmp_path / "nonexistent" / "dir" / "x.pb"
    result = run_cli("pull", "cnn:1", "-o", str(target), "--url", "http://127.0.0.1:9")
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: the folder {target.parent} does not exist: create it "
                                     f"(mkdir -p {target.parent}) or pick another -o")


def test_label_names_the_file_that_is_no_image_and_goes_on(labelled):
    result = run_cli("label", "cnn:1", str(labelled["notes"]), str(labelled["good"]), str(labelled["truncated"]),
                     "--url", labelled["url"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(line.startswith(f"Error: {labelled['notes']}: not an image") for line in lines), result.output
    assert f"{labelled['good']}: cnn version 1" in result.output  # the good image after the bad one was labelled
    cut = next(line for line in lines if line.startswith(f"Error: {labelled['truncated']}:"))
    assert "truncated or corrupt" in cut and "Graph execution error" not in cut
    assert lines[-1] == (f"Error: 2 of 3 images could not be labelled: {labelled['notes']}, "
                         f"{labelled['truncated']}")


def test_label_of_one_bad_file_is_one_line(labelled):
    result = run_cli("label", "cnn:1", str(labelled["notes"]), "--url", labelled["url"])
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"Error: {labelled['notes']}: not an image")
    assert len(result.output.strip().splitlines()) == 1


def test_meta_pushed_as_graph_is_told_in_cli_words(labelled):
    model = labelled["model"]
    result = run_cli("push", "wrong-graph", str(model.prefix), "--graph", str(model.meta), "--url", labelled["url"])
    assert result.exit_code == 1
    assert "'meta'" not in result.output and "--graph file" in result.output, result.output
    assert "push its checkpoint" in result.output


def test_text_pushed_as_graph_is_told_in_cli_words(labelled):
    model = labelled["model"]
    result = run_cli("push", "wrong-graph", str(model.prefix), "--graph", str(labelled["notes"]),
                     "--url", labelled["url"])
    assert result.exit_code == 1
    assert "--graph takes an inference graph as a binary .pb or a text .pbtxt" in result.output, result.output
    assert "'graph'" not in result.output


def test_delete_by_alias_names_the_command_not_the_http_request(labelled):
    assert run_cli("alias", "cnn", "stable", "1", "--url", labelled["url"]).exit_code == 0
    result = run_cli("delete", "cnn:stable", "--url", labelled["url"])
    assert result.exit_code == 1
    assert "registry delete cnn:1" in result.output and "DELETE /api" not in result.output, result.output


def test_converter_wording_is_translated():
    from registry.cli.wording import for_cli

    said = for_cli("the SavedModel has no signature 'x' (it has: a): pass signature=NAME with the push, or save it")
    assert "push again with --signature NAME" in said and "signature=NAME" not in said
    assert for_cli("no output: Pass output_nodes (comma-separated node names) with the push.") == (
        "no output: Push again with --output-nodes NAME[,NAME...].")


@pytest.mark.parametrize("url, said", [
    ("http://", "--url 'http://' names no host: e.g. http://127.0.0.1:"),
    ("ftp://host", "--url must start with http:// or https://, not 'ftp://host'"),
])
def test_unusable_url_is_one_line(url, said):
    result = run_cli("ls", "--url", url)
    assert result.exit_code == 1 and result.output.startswith(f"Error: {said}")
    assert len(result.output.strip().splitlines()) == 1


def test_the_installed_command_ends_in_one_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    for args in (["ls", "--url", "127.0.0.1:8090"], ["pull", "cnn:1", "-o", str(tmp_path / "no" / "x.pb")]):
        done = subprocess.run([sys.executable, "-m", "registry.cli", *args], capture_output=True, text=True,
                              timeout=60, env={"PATH": "/usr/bin:/bin", "REGISTRY_HOME": str(tmp_path)})
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("Error: "), done.stderr
