"""The container setup: docker/Dockerfile, docker/entrypoint.sh, docker/docker-compose.yml,
and `registry serve --gunicorn` (what the image runs by default)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import requests

from registry.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
COMPOSE = DOCKER / "docker-compose.yml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _compose_command() -> list[str] | None:
    """A compose implementation that can run `config` (no engine needed for that), or None."""
    for probe, command in ((["docker", "compose", "version"], ["docker", "compose"]),
                           (["docker-compose", "--version"], ["docker-compose"])):
        try:
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                return command
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def _check_args(argv: list[str]) -> None:
    """``registry ARGV`` names an existing subcommand with options it accepts (parsed, not run)."""
    name, *args = argv
    context = click.Context(main)
    command = main.get_command(context, name)  # the commands are loaded from their modules on first use
    assert command is not None, f"registry {name}: no such subcommand ({main.list_commands(context)})"
    command.make_context(name, list(args), resilient_parsing=False)


# -- compose -------------------------------------------------------------------


def test_compose_file_is_valid():
    compose = _compose_command()
    if compose is None:
        pytest.skip("no compose implementation: neither `docker compose` (plugin) nor `docker-compose`; "
                    "install one with `apt-get install -y --no-install-recommends docker-compose` "
                    "(`config` needs no Docker engine)")
    result = subprocess.run([*compose, "config", "--quiet"], cwd=DOCKER, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_commands_are_registry_subcommands():
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    env = services["registry"]["environment"]
    assert env["REGISTRY_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["REGISTRY_STORAGE"].startswith("s3://")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    roles = {}
    for name in ("registry", "worker", "label"):
        service = services[name]
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        _check_args(service["command"])
        roles[name] = service["command"][0]
    assert roles == {"registry": "serve", "worker": "worker", "label": "label-serve"}
    assert "--gunicorn" in services["registry"]["command"]
    assert services["registry"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_compose_runs_tensorflow_serving_on_the_export_root_and_its_config():
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    root = services["registry"]["environment"]["REGISTRY_SERVING_EXPORT_ROOT"]
    assert services["registry"]["environment"]["REGISTRY_SERVING_BASE_PATH"] == root  # same path in both
    tf_serving = services["tf-serving"]
    assert tf_serving["image"].startswith("tensorflow/serving")
    assert f"--model_config_file={root}/models.config" in tf_serving["command"]
    volume = f"serving-export:{root}"
    for name in ("registry", "worker", "serving-export"):  # everyone who writes the export root
        assert volume in services[name]["volumes"], name
    assert f"{volume}:ro" in tf_serving["volumes"]
    export = services["serving-export"]
    _check_args(export["command"])
    assert export["command"][0] == "export-serving"
    assert tf_serving["depends_on"]["serving-export"]["condition"] == "service_completed_successfully"


# -- Dockerfile and entrypoint ---------------------------------------------------


def test_dockerfile_installs_the_project_and_runs_existing_commands():
    steps = _instructions(DOCKERFILE)
    assert steps[0] == ("FROM", "python:3.11-slim")
    copies = " ".join(args for keyword, args in steps if keyword == "COPY")
    for path in ("pyproject.toml", "registry", "migrations"):
        assert path in copies, f"the image does not copy {path}"
        assert (ROOT / path).exists()
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert re.search(r"pip install (--no-deps )?-e '?\.\[postgres\]'?", runs), \
        "install the repo's pyproject.toml, with psycopg"
    # Dependencies come from pyproject.toml in a layer of their own, before the source is copied,
    # so that editing the code does not reinstall TensorFlow.
    order = [(keyword, args) for keyword, args in steps if keyword in ("COPY", "RUN")]
    deps = next(i for i, (k, a) in enumerate(order) if k == "RUN" and "pip install -r" in a)
    source = next(i for i, (k, a) in enumerate(order) if k == "COPY" and a.startswith("registry "))
    assert deps < source and "tomllib" in order[deps][1] and "pyproject.toml" in order[deps][1]
    assert order[deps - 1] == ("COPY", "pyproject.toml ./")
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    entrypoint = json.loads(dict(steps)["ENTRYPOINT"])
    assert entrypoint == ["registry-entrypoint"]
    assert "docker/entrypoint.sh /usr/local/bin/registry-entrypoint" in copies
    cmd = json.loads(dict(steps)["CMD"])
    assert cmd[0] == "serve" and "--gunicorn" in cmd
    _check_args(cmd)
    # the console script the entrypoint execs is the one pyproject.toml declares
    assert 'registry = "registry.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_entrypoint_uses_existing_subcommands():
    text = ENTRYPOINT.read_text()
    assert os.stat(ENTRYPOINT).st_mode & stat.S_IXUSR
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\bregistry ([a-z][a-z-]*)", code))
    case_line = re.search(r"^\s*([a-z|-]+)\)\s*needs_database=1", code, re.M)
    assert case_line, "the entrypoint lists the subcommands that need the database"
    used |= set(case_line.group(1).split("|"))
    assert "migrate" in used
    commands = set(main.list_commands(click.Context(main)))
    assert used <= commands, used - commands
    assert 'exec registry "$@"' in code


def _fake_registry(tmp_path: Path, failures: int) -> dict:
    """A `registry` on PATH whose `migrate` fails FAILURES times, then logs what it runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "registry"
    script.write_text(f"""#!/bin/sh
log={shlex.quote(str(tmp_path / 'log'))}
if [ "$1" = migrate ]; then
    n=$(cat {shlex.quote(str(tmp_path / 'count'))} 2>/dev/null || echo 0)
    echo $((n + 1)) > {shlex.quote(str(tmp_path / 'count'))}
    if [ "$n" -lt {failures} ]; then echo "migrate failed" >> "$log"; exit 1; fi
fi
echo "registry $*" >> "$log"
""")
    script.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_entrypoint_retries_migrate_then_execs(tmp_path):
    env = _fake_registry(tmp_path, failures=1)
    result = subprocess.run(["sh", str(ENTRYPOINT), "worker"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "log").read_text().splitlines() == ["migrate failed", "registry migrate", "registry worker"]
    assert "retrying" in result.stderr


def test_entrypoint_gives_up_after_timeout(tmp_path):
    env = dict(_fake_registry(tmp_path, failures=100), REGISTRY_MIGRATE_TIMEOUT="0")
    result = subprocess.run(["sh", str(ENTRYPOINT), "serve"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "giving up" in result.stderr
    assert "registry serve" not in (tmp_path / "log").read_text()


def test_entrypoint_skips_migrations_for_client_commands(tmp_path):
    env = _fake_registry(tmp_path, failures=100)
    result = subprocess.run(["sh", str(ENTRYPOINT), "ls"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "log").read_text().splitlines() == ["registry ls"]


def test_entrypoint_serves_model_name_as_tf_servings_image_does(tmp_path):
    env = dict(_fake_registry(tmp_path, failures=0), MODEL_NAME="half_plus_two")
    result = subprocess.run(["sh", str(ENTRYPOINT), "model-server", "--file_system_poll_wait_seconds=5"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "log").read_text().splitlines() == [
        "registry migrate", "registry model-server --port=8500 --rest_api_port=8501 --model_name=half_plus_two "
        "--model_base_path=/models/half_plus_two --file_system_poll_wait_seconds=5"]


def test_entrypoint_leaves_a_model_server_given_its_own_models_alone(tmp_path):
    env = dict(_fake_registry(tmp_path, failures=0), MODEL_NAME="ignored")
    flags = ["--port=9000", "--model_config_file=/models/models.config"]
    result = subprocess.run(["sh", str(ENTRYPOINT), "model-server", *flags], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "log").read_text().splitlines()[-1] == "registry model-server " + " ".join(flags)


# -- registry serve --gunicorn ---------------------------------------------------


@pytest.mark.slow
def test_serve_gunicorn_answers_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REGISTRY_", "AWS_"))}
    env["REGISTRY_HOME"] = str(tmp_path / "home")
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "serve", "--gunicorn", "--port", str(port),
                             "--processes", "2", "--no-demo"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if requests.get(f"{base}/healthz", timeout=2).json() == {"status": "ok"}:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer /healthz"
            time.sleep(0.3)
        answer = requests.get(f"{base}/api/v1/models", timeout=10)
        assert answer.status_code == 200
        assert answer.json()["models"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert "registry worker" in output  # tells where the converters went
    assert "gthread" in output


def test_serve_gunicorn_refuses_embedded_workers_and_grpc():
    from click.testing import CliRunner

    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--gunicorn", "--workers", "2"])
    assert result.exit_code == 2 and "registry worker" in result.output
    result = runner.invoke(main, ["serve", "--gunicorn", "--grpc-port", "8500"])
    assert result.exit_code == 2 and "label-serve" in result.output


def test_compose_health_checks_ask_for_readiness():
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, port in (("registry", 8080), ("label", 8501)):
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(services[name]["healthcheck"]["test"])
    test = services["worker"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "registry"]
    _check_args(test[2:])
