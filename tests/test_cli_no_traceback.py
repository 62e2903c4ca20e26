"""No CLI path a user can reach ends in a Python traceback (issue 15): the usual mistakes with every
command — a registry that is not running, a model or version that does not exist, values of the
wrong kind, files that are missing or are folders — end in one ``Error: ...`` (exit 1) or a usage
error (exit 2).  The real ``registry`` command in process, against a real server over HTTP."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from registry.cli import main
from tests.conftest import make_settings, start_live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory, models):
    """A registry holding model 'm' (version 1, queued: no converter runs here)."""
    from registry.client import RegistryClient

    home = tmp_path_factory.mktemp("no-traceback")
    live, stop = start_live_server(make_settings(home / "registry"), workers=False)
    frozen = models["frozen"].frozen_graph
    RegistryClient(live.url).push("m", [("frozen", frozen)], {})
    yield live, home, frozen
    stop()


@pytest.fixture(scope="module")
def closed_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


HTTP_COMMANDS = [
    ["ls"], ["ls", "m"], ["ls", "--search", "x"], ["pull", "m:1"], ["show", "m"], ["show", "m:1"],
    ["version", "show", "m:1"], ["alias", "m", "a", "1"], ["alias", "m", "a", "--delete"], ["delete", "m:1"],
    ["predict", "m", "--json", '{"instances": [1]}'], ["edit", "m", "--description", "x"], ["audit"],
    ["serving-versions", "m"], ["allow-ops", "m"], ["push", "m", "--frozen", "FROZEN"],
    ["label", "m", "FROZEN"], ["compare", "m", "FROZEN"], ["token", "ls", "--token", "rgt_x"],
]

MISTAKES = [
    ["ls", "nosuchmodel"], ["pull", "nosuchmodel"], ["pull", "m:99"], ["pull", "m:nosuchalias"], ["pull", "m:1"],
    ["pull", "m:1", "-o", "HOME"], ["pull", "m:1", "--format", "saved_model"], ["pull", "m:1", "--labels"],
    ["show", "m:0"], ["show", ":"], ["show", "m:"], ["show", "bad name!"], ["version", "show", "m:latest"],
    ["alias", "m", "bad alias!", "1"], ["alias", "m", "prod", "99"], ["alias", "m", "latest", "1"],
    ["alias", "nosuchmodel", "prod", "1"], ["delete", "m:abc"], ["delete", "m:99"], ["delete", "m"],
    ["predict", "m", "--json", "not json"], ["predict", "m", "--json", "@/no/such/file.json"],
    ["predict", "m:1", "--json", '{"instances": [[1.0]]}'], ["predict", "m", "--json", "[]"],
    ["label", "m", "HOME"], ["label", "m:1", "FROZEN"], ["compare", "m", "FROZEN", "--versions", "1,,x"],
    ["compare", "m", "FROZEN", "--expected", "/no/such/file"], ["edit", "m:1"], ["edit", "m:1", "--input-std", "0"],
    ["edit", "m:99", "--description", "x"], ["edit", "nosuchmodel", "--description", "x"],
    ["ls", "m", "--limit", "-1"], ["ls", "m", "--limit", "0"], ["serving-versions", "m", "x,y"],
    ["serving-versions", "m", "99"], ["allow-ops", "m", "ReadFile"], ["audit", "--limit", "0"],
    ["push", "m"], ["push", "m", "HOME"], ["push", "m", "FROZEN"], ["push", "bad name!", "--frozen", "FROZEN"],
    ["push", "m", "--frozen", "FROZEN", "--input-std", "0"], ["push", "m", "--frozen", "FROZEN", "--output-nodes", ","],
    ["push", "m", "--frozen", "FROZEN", "--signature", "a:b:c"], ["push", "m", "--saved-model", "HOME"],
    ["push", "m", "--keras", "FROZEN"], ["version", "set", "m:1", "--prediction-output", "nope"],
    ["token", "create", "--name", "x", "--token", "rgt_notatoken"], ["show", ":"], ["pull", ":1"],
    ["ls", "m", "--limit", "0"],
]


def run(args: list[str], url: str, frozen, home) -> object:
    args = [str(frozen) if a == "FROZEN" else str(home) if a == "HOME" else a for a in args]
    result = CliRunner().invoke(main, [*args, "--url", url], env={"REGISTRY_HOME": str(home / "elsewhere")})
    return result


def assert_one_clean_error(result, args) -> None:
    assert "Traceback" not in result.output, (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    if result.exit_code == 1:  # a registry error: one line that says what is wrong
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, (args, result.output)
        for http in ("Authorization: Bearer", "/api/v1/", "multipart", "form field", "HTTP 4", "HTTP 5"):
            assert http not in errors[0], (args, errors[0])  # said the CLI's way, not the HTTP API's


@pytest.mark.parametrize("args", HTTP_COMMANDS, ids=" ".join)
def test_a_registry_that_is_not_running_is_one_line(server, closed_url, args):
    _, home, frozen = server
    result = run(args, closed_url, frozen, home)
    assert result.exit_code in (1, 2), (args, result.output)
    assert_one_clean_error(result, args)
    if result.exit_code == 1:
        assert "cannot reach" in result.output or "could not reach" in result.output or "not running" in \
            result.output or "refused" in result.output.lower(), (args, result.output)


@pytest.mark.parametrize("args", MISTAKES, ids=" ".join)
def test_the_usual_mistakes_are_one_line(server, args):
    live, home, frozen = server
    result = run(args, live.url, frozen, home)
    assert_one_clean_error(result, args)


SERVER_ROLES = [["registry", "serve", "--no-demo", "--port", "0"], ["registry", "worker", "--once"],
                ["tensorflow_model_server", "--port=0", "--model_base_path=/nonexistent"]]


@pytest.mark.parametrize("command", SERVER_ROLES, ids=lambda c: c[0] if c[0] != "registry" else c[1])
def test_a_server_whose_database_cannot_be_reached_says_so_in_one_line(command, closed_url):
    """A server role started against a database that is not running: one Error line naming the setting."""
    port = closed_url.rsplit(":", 1)[1]
    unreachable = f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
    errors, stderr = server_role_errors(command, REGISTRY_DATABASE_URL=unreachable)
    assert len(errors) == 1 and "the database cannot be reached" in errors[0], stderr[-2000:]
    assert "REGISTRY_DATABASE_URL" in errors[0] or f"127.0.0.1:{port}/test" in errors[0]  # where to look


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("REGISTRY_LABEL_WORKERS", "two", "REGISTRY_LABEL_WORKERS must be a whole number, not 'two'"),
    ("REGISTRY_LABEL_TIMEOUT_SECONDS", "30s", "REGISTRY_LABEL_TIMEOUT_SECONDS must be a number, not '30s'"),
    ("REGISTRY_AUTH", "maybe", "REGISTRY_AUTH must be one of auto, on, off, not 'maybe'"),
])
@pytest.mark.parametrize("command", SERVER_ROLES, ids=lambda c: c[0] if c[0] != "registry" else c[1])
def test_a_setting_of_the_wrong_kind_is_one_line_naming_it(command, setting, value, says, tmp_path):
    """A REGISTRY_* variable a server role cannot use: one Error line naming it and what it takes."""
    errors, stderr = server_role_errors(command, REGISTRY_HOME=str(tmp_path / "home"), **{setting: value})
    assert errors == [f"Error: {says}"], stderr[-2000:]


def server_role_errors(command: list[str], **settings: str) -> tuple[list[str], str]:
    """Run a server role (its installed script) with ``settings`` in its environment; it must exit 1
    without a traceback.  Its ``Error:`` lines, and all it printed on stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([str(Path(sys.executable).with_name(command[0])), *command[1:]], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **settings})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if line.startswith("Error: ")], done.stderr
