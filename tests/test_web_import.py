"""The web app, the worker's parent process and the CLI never load TensorFlow."""

from __future__ import annotations

import subprocess
import sys


def test_serving_the_api_does_not_import_tensorflow(tmp_path):
    code = f"""
import sys
from pathlib import Path
from registry.app import create_app
from registry.config import Settings
import registry.cli.server, registry.cli.admin, registry.cli.remote, registry.cli.labels
import registry.jobs.worker, registry.converter.runner
home = Path({str(tmp_path)!r})
app = create_app(Settings.from_env(home=home, database_url=f"sqlite:///{{home}}/r.db",
                                   storage_url=(home / "blobs").as_uri()))
client = app.test_client()
assert client.get("/api/v1/models").status_code == 200
assert client.get("/api/v1/openapi.json").status_code == 200
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "numpy"))
print(loaded)
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
