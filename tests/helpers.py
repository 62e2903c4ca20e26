"""Small helpers shared by the tests."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def checkpoint_form(model, *, graph: bool = False, labels: bytes | None = None, **fields) -> dict:
    """A multipart form for the test client: a checkpoint push of a tfmodels.BuiltModel."""
    form = {
        "meta": (io.BytesIO(model.meta.read_bytes()), model.meta.name),
        "index": (io.BytesIO(model.index.read_bytes()), model.index.name),
        "data": [(io.BytesIO(p.read_bytes()), p.name) for p in model.data],
    }
    if graph:
        form["graph"] = (io.BytesIO(model.inference_graph.read_bytes()), model.inference_graph.name)
    if labels is not None:
        form["labels"] = (io.BytesIO(labels), "labels.txt")
    form.update(fields)
    return form


def frozen_form(path: Path, **fields) -> dict:
    return {"frozen": (io.BytesIO(path.read_bytes()), path.name), **fields}


def push(client, name: str, form: dict, headers: dict | None = None):
    return client.post(f"/api/v1/models/{name}/versions", data=form, content_type="multipart/form-data",
                       headers=headers)


def blob_files(home: Path) -> list[Path]:
    """Every stored blob and every leftover temporary upload under a registry home."""
    root = home / "blobs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def csrf_token(client) -> str:
    """The CSRF token of the test client's session, as a page hands it to forms and scripts."""
    import re

    body = client.get("/sign-in").get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', body).group(1)


def issue_tokens(db) -> dict[str, str]:
    """A token of each scope, plus one that was revoked, created through the service."""
    from registry import auth
    from registry.auth.audit import Actor

    actor = Actor("tests")
    tokens = {scope: auth.create_token(db, f"{scope}-token", scope, actor)[1] for scope in auth.SCOPES}
    tokens["revoked"] = auth.create_token(db, "revoked-token", "admin", actor)[1]
    auth.revoke_token(db, "revoked-token", actor)
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(home: Path, **settings: str) -> dict[str, str]:
    """This environment without the registry's, cloud or metrics settings, on ``home``, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_", "PROMETHEUS_"))}
    return {**env, "REGISTRY_HOME": str(home), **settings}


def start_gunicorn(env: dict[str, str], processes: int, *options: str) -> tuple[subprocess.Popen, str]:
    """`registry serve --gunicorn` with ``processes`` worker processes, once it answers /readyz."""
    return start_registry(["serve", "--gunicorn", "--processes", str(processes), *options, "--no-demo"], env)


def start_registry(command: list[str], env: dict[str, str], ready: str = "/readyz") -> tuple[subprocess.Popen, str]:
    """`registry COMMAND --port P` (a serving command), once it answers ``ready`` with 200; its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", *command, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if requests.get(f"{base}{ready}", timeout=2).status_code == 200:
                return proc, base
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"registry {command[0]} did not become ready"
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, as an orchestrator stops it; SIGKILL if it has not exited within 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
