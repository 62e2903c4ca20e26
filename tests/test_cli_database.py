"""The commands that open the registry's database directly never create one by accident: run from a
folder with no registry they refuse in one line, naming where they looked, and write nothing; only
``init``, ``migrate`` and the server roles create one.  ``export-serving`` never empties a models.config
that lists models unless told to (``--allow-empty``)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from registry.cli import main as cli
from tests.conftest import fresh_postgres_database

DATABASE_COMMANDS = [
    ["token", "create", "--name", "ci", "--scope", "admin"],
    ["token", "ls"],
    ["token", "revoke", "ci"],
    ["gc"],
    ["saved-models"],
    ["check"],
    ["worker", "--once"],
    ["export-serving", "--root", "SERVING"],
]

SERVED = """model_config_list {
  config {
    name: "cnn"
    base_path: "/models/cnn"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 } }
  }
}
"""


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty folder to run commands from, with no REGISTRY_* setting pointing elsewhere."""
    folder = tmp_path / "here"
    folder.mkdir()
    for name in ("REGISTRY_HOME", "REGISTRY_DATABASE_URL", "REGISTRY_STORAGE", "REGISTRY_SERVING_EXPORT_ROOT",
                 "REGISTRY_SERVING_BASE_PATH", "REGISTRY_TOKEN", "REGISTRY_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(folder)
    return folder


def run(*args: str, env: dict | None = None):
    return CliRunner(env=env).invoke(cli, list(args))


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_database_command_in_a_folder_without_a_registry_refuses_and_creates_nothing(here, tmp_path, command):
    serving = tmp_path / "serving"
    result = run(*[str(serving) if arg == "SERVING" else arg for arg in command])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: no registry at ") and result.output.count("\n") == 1, result.output
    assert str(here / "registry-data" / "registry.db") in result.output
    assert "REGISTRY_HOME=" in result.output and "REGISTRY_DATABASE_URL=" in result.output
    assert "registry init" in result.output and "Traceback" not in result.output
    assert files(here) == [] and not serving.exists()


def test_token_create_refuses_a_home_that_holds_no_registry(here, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    result = run("token", "create", "--name", "ci", env={"REGISTRY_HOME": str(elsewhere)})
    assert result.exit_code == 1 and f"no registry at {elsewhere / 'registry.db'}" in result.output
    assert "rgt_" not in result.output and not elsewhere.exists()


def test_an_empty_sqlite_file_is_no_registry(here):
    (here / "registry-data").mkdir()
    (here / "registry-data" / "registry.db").touch()  # as an older version left it
    result = run("token", "ls")
    assert result.exit_code == 1 and "no registry at" in result.output
    assert (here / "registry-data" / "registry.db").stat().st_size == 0


def test_init_creates_a_registry_once_and_the_commands_then_work(here):
    created = run("init")
    assert created.exit_code == 0, created.output
    assert f"created a registry: database {here / 'registry-data' / 'registry.db'}" in created.output
    assert {"registry-data", "registry-data/registry.db", "registry-data/blobs"} <= set(files(here))
    before = (here / "registry-data" / "registry.db").stat().st_mtime_ns

    again = run("init")
    assert again.exit_code == 0 and "a registry already exists at" in again.output and "nothing changed" in again.output
    assert (here / "registry-data" / "registry.db").stat().st_mtime_ns == before

    token = run("token", "create", "--name", "ci", "--scope", "admin")
    assert token.exit_code == 0, token.output
    assert token.output.strip().splitlines()[-1].startswith("rgt_")
    assert "ci" in run("token", "ls").output
    assert run("gc").exit_code == 0
    check = run("check")
    assert check.exit_code == 0 and "database: ok" in check.output, check.output
    assert run("saved-models").exit_code == 0
    assert run("worker", "--once").exit_code == 0


def test_migrate_still_creates_a_registry(here):
    result = run("migrate")
    assert result.exit_code == 0, result.output
    assert run("token", "ls").exit_code == 0


def test_export_serving_does_not_empty_a_models_config_unless_allowed(here, tmp_path):
    assert run("init").exit_code == 0
    serving = tmp_path / "serving"
    serving.mkdir()
    (serving / "models.config").write_text(SERVED)

    refused = run("export-serving", "--root", str(serving))
    assert refused.exit_code == 1, refused.output
    assert "lists 1 model(s)" in refused.output and "registry export-serving --allow-empty" in refused.output
    assert str(here / "registry-data" / "registry.db") in refused.output
    assert (serving / "models.config").read_text() == SERVED

    allowed = run("export-serving", "--root", str(serving), "--allow-empty")
    assert allowed.exit_code == 0, allowed.output
    assert "cnn" not in (serving / "models.config").read_text()
    assert "model_config_list" in (serving / "models.config").read_text()

    empty_again = run("export-serving", "--root", str(serving))  # an empty config stays empty: no refusal
    assert empty_again.exit_code == 0, empty_again.output


def test_export_serving_writes_a_first_empty_config(here, tmp_path):
    assert run("init").exit_code == 0
    result = run("export-serving", "--root", str(tmp_path / "serving"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "serving" / "models.config").exists()


def test_a_postgresql_database_without_the_registry_schema_is_no_registry(here):
    with fresh_postgres_database() as url:  # skips without REGISTRY_TEST_DATABASE_URL
        env = {"REGISTRY_DATABASE_URL": url}
        refused = run("token", "create", "--name", "ci", env=env)
        assert refused.exit_code == 1, refused.output
        assert "no registry in the database postgresql+psycopg://" in refused.output
        assert "REGISTRY_DATABASE_URL=" in refused.output and "registry init" in refused.output
        assert files(here) == []
        created = run("init", env=env)
        assert created.exit_code == 0, created.output
        assert run("init", env=env).output.startswith("a registry already exists at postgresql+psycopg://")
        assert run("token", "create", "--name", "ci", env=env).exit_code == 0


def test_the_postgresql_url_is_named_without_its_password(here):
    from dataclasses import replace

    from registry.cli import local
    from registry.config import Settings

    settings = replace(Settings.from_env(), database_url="postgresql+psycopg://u:s3cret@db:5432/reg")
    assert local.where(settings) == "postgresql+psycopg://u@db:5432/reg"



def test_tokens_are_managed_over_http_with_url_and_an_admin_token(here, live_server):
    """From a folder with no registry, --url and an admin token manage the server's tokens; nothing is
    created here, and without a token an explicit --url is refused saying what to add."""
    from registry import auth
    from registry.auth.audit import SYSTEM

    db = live_server.app.extensions["registry"].db
    _, admin = auth.create_token(db, "root", "admin", SYSTEM)
    url = ["--url", live_server.url]
    made = run("token", "create", "--name", "ci", "--scope", "write", *url, "--token", admin)
    assert made.exit_code == 0, made.output
    secret = made.output.strip().splitlines()[-1]
    assert auth.verify(db, secret).name == "ci"  # made in the server's database
    listed = run("token", "ls", *url, env={"REGISTRY_TOKEN": admin})
    assert listed.exit_code == 0 and "ci" in listed.output and "write" in listed.output
    revoked = run("token", "revoke", "ci", *url, "--token", admin)
    assert revoked.exit_code == 0 and "token 'ci'" in revoked.output and "revoked" in revoked.output
    assert {t.name: t.active for t in auth.list_tokens(db)}["ci"] is False
    refused = run("token", "create", "--name", "x", "--token", secret, *url)  # a revoked token
    assert refused.exit_code == 1 and "Traceback" not in refused.output

    bare = run("token", "ls", *url)
    assert bare.exit_code == 2 and "needs an admin token: add --token" in bare.output
    # REGISTRY_URL alone (set for push and pull) still means this folder's database: refused, nothing made
    env_only = run("token", "ls", env={"REGISTRY_URL": live_server.url})
    assert env_only.exit_code == 1 and "no registry at" in env_only.output
    assert files(here) == []
