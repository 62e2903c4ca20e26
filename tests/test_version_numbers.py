"""A push may choose its version number, as TF Serving numbers versions by folder name
(``/models/half_plus_two/00000123`` is version 123): imported exports keep their numbers.  A chosen
number must be above every number the model had (also after deletes), so numbers are never reused
nor go back, and a refused number leaves nothing behind.  Real HTTP through the app, on SQLite and
(with REGISTRY_TEST_DATABASE_URL) PostgreSQL; the CLI against a real server."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from registry.catalog.versions import MAX_VERSION_NUMBER
from registry.cli import main
from registry.client import RegistryClient
from registry.models import Job
from tests.conftest import BOTH_DATABASES
from tests.helpers import blob_files, checkpoint_form, frozen_form, push

pytestmark = BOTH_DATABASES


def error_of(response) -> dict:
    return response.get_json()["error"]


def numbers(client, name: str = "cnn") -> list[int]:
    return [v["version"] for v in client.get(f"/api/v1/models/{name}/versions").get_json()["versions"]]


def job_count(registry) -> int:
    with registry.db.transaction() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Job))


def test_a_push_may_choose_its_number_and_the_next_push_goes_on_from_it(client, models):
    answer = push(client, "cnn", frozen_form(models["frozen"].frozen_graph, version="123"))
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["version"] == 123
    assert answer.headers["Location"].endswith("/api/v1/models/cnn/versions/123")
    assert client.get("/api/v1/models/cnn/versions/123").get_json()["version"] == 123

    assert push(client, "cnn", frozen_form(models["frozen"].frozen_graph)).get_json()["version"] == 124
    assert client.get("/api/v1/models/cnn").get_json()["last_version"] == 124
    assert numbers(client) == [124, 123]


def test_a_tf_serving_folder_name_with_leading_zeros_is_its_number(client, models):
    answer = push(client, "cnn", frozen_form(models["frozen"].frozen_graph, version="00000123"))
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["version"] == 123


def test_a_number_not_above_the_highest_is_refused_and_leaves_nothing_behind(client, registry, settings, models):
    assert push(client, "cnn", checkpoint_form(models["resource_meta"], version="123")).status_code == 202
    blobs = blob_files(settings.home)
    for taken in ("5", "123"):
        answer = push(client, "cnn", frozen_form(models["frozen"].frozen_graph, version=taken))
        assert answer.status_code == 409, answer.get_json()
        error = error_of(answer)
        assert error["code"] == "version_number_taken"
        assert "already had version 123" in error["message"]
        assert "push without a version number to get 124, or choose a number above 123" in error["message"]
    assert numbers(client) == [123]
    assert job_count(registry) == 1  # version 123's conversion only
    assert blob_files(settings.home) == blobs  # the refused frozen graph was neither published nor left staged


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", str(MAX_VERSION_NUMBER + 1), "9" * 40])
def test_a_number_outside_1_to_2_31_minus_1_is_refused_with_the_range(client, registry, settings, models, value):
    answer = push(client, "cnn", frozen_form(models["frozen"].frozen_graph, version=value))
    assert answer.status_code == 400, answer.get_json()
    error = error_of(answer)
    assert error["code"] == "invalid_version_number"
    assert "a whole number from 1 to 2147483647" in error["message"]
    assert repr(value) in error["message"]
    assert client.get("/api/v1/models/cnn").status_code == 404
    assert job_count(registry) == 0
    assert blob_files(settings.home) == []


def test_the_largest_number_fits_and_then_no_next_number_is_left(client, models):
    frozen = models["frozen"].frozen_graph
    answer = push(client, "cnn", frozen_form(frozen, version=str(MAX_VERSION_NUMBER)))
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["version"] == MAX_VERSION_NUMBER  # a 32-bit column holds it on PostgreSQL

    answer = push(client, "cnn", frozen_form(frozen))
    assert answer.status_code == 409
    assert error_of(answer)["code"] == "version_numbers_exhausted"
    assert "another model name" in error_of(answer)["message"]
    answer = push(client, "cnn", frozen_form(frozen, version="7"))
    assert error_of(answer)["code"] == "version_number_taken"
    assert "push it under another model name" in error_of(answer)["message"]
    assert numbers(client) == [MAX_VERSION_NUMBER]


def test_a_deleted_model_keeps_its_numbers_from_pushes_that_choose_one(client, models):
    frozen = models["frozen"].frozen_graph
    assert push(client, "cnn", frozen_form(frozen, version="123")).status_code == 202
    assert client.delete("/api/v1/models/cnn").status_code == 200
    for taken in ("123", "100"):
        answer = push(client, "cnn", frozen_form(frozen, version=taken))
        assert answer.status_code == 409
        assert error_of(answer)["code"] == "version_number_taken"
        assert "already had version 123" in error_of(answer)["message"]
    assert client.get("/api/v1/models/cnn").status_code == 404  # the refused pushes did not bring it back
    assert push(client, "cnn", frozen_form(frozen, version="200")).get_json()["version"] == 200
    assert numbers(client) == [200]


def test_the_number_is_checked_again_under_the_model_lock(registry, client, models):
    """A push checks its number before publishing and again in the transaction that registers it
    (another push may have taken it in between): the second check refuses and registers nothing."""
    from registry import catalog
    from registry.errors import Conflict

    assert push(client, "cnn", frozen_form(models["frozen"].frozen_graph, version="123")).status_code == 202
    with pytest.raises(Conflict) as refused:
        catalog.create_version(registry.db, "cnn", source="frozen", files=[], version=50)
    assert refused.value.code == "version_number_taken"
    assert numbers(client) == [123]
    assert job_count(registry) == 1
    assert catalog.create_version(registry.db, "cnn", source="frozen", files=[], version=124).version == 124


def test_the_push_form_documents_the_version_field_with_its_range(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    push_op = doc["paths"]["/api/v1/models/{name}/versions"]["post"]
    field = push_op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["version"]
    assert (field["type"], field["minimum"], field["maximum"]) == ("integer", 1, MAX_VERSION_NUMBER)
    assert "TF Serving's folder number" in field["description"]
    assert "409" in push_op["responses"]


# --- the CLI -------------------------------------------------------------------------------------

def run_cli(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_cli_push_registers_the_version_number_given(live_server, models):
    prefix = str(models["resource_meta"].prefix)
    result = run_cli("push", "cnn", prefix, "--version-number", "7", "--url", live_server.url)
    assert result.exit_code == 0, result.output
    assert "cnn version 7: queued" in result.output
    assert RegistryClient(live_server.url).get_version("cnn", "7")["version"] == 7


def test_cli_push_of_a_taken_number_is_one_clear_line(live_server, models):
    prefix = str(models["resource_meta"].prefix)
    assert run_cli("push", "cnn", prefix, "--version-number", "7", "--url", live_server.url).exit_code == 0
    result = run_cli("push", "cnn", prefix, "--version-number", "7", "--url", live_server.url)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: model 'cnn' already had version 7 (numbers are never reused nor go back, also after "
                      "a delete), so it cannot get version 7: push without a version number to get 8, or choose "
                      "a number above 7"], result.output
    assert "409" not in result.output and "/api/v1/" not in result.output
    assert [v["version"] for v in RegistryClient(live_server.url).list_versions("cnn")] == [7]


@pytest.mark.parametrize("value", ["0", str(MAX_VERSION_NUMBER + 1), "abc"])
def test_cli_refuses_a_number_out_of_range_before_uploading(live_server, models, value):
    prefix = str(models["resource_meta"].prefix)
    result = run_cli("push", "cnn", prefix, "--version-number", value, "--url", live_server.url)
    assert result.exit_code == 2, result.output
    assert "--version-number" in result.output
    assert list(RegistryClient(live_server.url).list_models()) == []


def test_cli_notes_a_close_name_on_a_first_push_with_a_chosen_number(live_server, models):
    prefix = str(models["resource_meta"].prefix)
    assert run_cli("push", "inception", prefix, "--url", live_server.url).exit_code == 0
    result = run_cli("push", "inceptio", prefix, "--version-number", "1546532211", "--url", live_server.url)
    assert result.exit_code == 0, result.output
    assert "inceptio version 1546532211: queued" in result.output
    assert "note: this push created a new model 'inceptio'; did you mean 'inception'?" in result.output
    result = run_cli("push", "inceptio", prefix, "--version-number", "1546532300", "--url", live_server.url)
    assert "note:" not in result.output  # not a first push any more
