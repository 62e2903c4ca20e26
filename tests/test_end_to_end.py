"""The whole path through a real HTTP server, its embedded converter and the CLI:
push a checkpoint, wait, pull the frozen graph and run it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from registry.client import RegistryClient
from tests import tfmodels
from tests.conftest import BOTH_DATABASES_PER_MODULE

pytestmark = [pytest.mark.slow, BOTH_DATABASES_PER_MODULE]


def cli(server, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, REGISTRY_URL=server.url)
    return subprocess.run([sys.executable, "-m", "registry.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def pushed_graph(converting_server, models):
    """`registry push` of a checkpoint + inference graph, waited on until ready."""
    model = models["resource_graph"]
    result = cli(converting_server, "push", "inception", str(model.prefix), "--graph", str(model.inference_graph),
                 "--output-nodes", model.output, "--wait")
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_cli_push_of_checkpoint_and_inference_graph_ends_ready_with_the_right_outputs(pushed_graph, converting_server):
    assert "inception version 1: ready" in pushed_graph.stdout
    record = requests.get(f"{converting_server.url}/api/v1/models/inception/versions/1").json()
    assert record["status"] == "ready"
    assert record["output_nodes"] == ["predictions/Softmax"]
    assert record["output_nodes_detected"] is False
    assert record["input_nodes"] == [{"name": "input", "dtype": "float32", "shape": [None, 8, 8, 3], "optional": False}]
    assert record["verification"]["status"] == "passed"
    assert record["tensorflow_version"].startswith("2.")
    assert record["safety"]["flagged"] is False


def test_cli_pull_returns_a_graph_that_computes_the_checkpoints_outputs(pushed_graph, converting_server, models,
                                                                       tmp_path):
    model = models["resource_graph"]
    result = cli(converting_server, "pull", "inception:1", "-o", str(tmp_path / "frozen.pb"))
    assert result.returncode == 0, result.stderr
    out = tfmodels.run_frozen(tmp_path / "frozen.pb", model.output, model.test_input)
    np.testing.assert_allclose(out, model.expected, rtol=0, atol=1e-6)


def test_pull_by_alias_and_latest_gives_the_same_bytes(pushed_graph, converting_server, tmp_path):
    assert cli(converting_server, "alias", "inception", "production", "1").returncode == 0
    for ref in ("production", "latest"):
        result = cli(converting_server, "pull", f"inception:{ref}", "-o", str(tmp_path / f"{ref}.pb"))
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "production.pb").read_bytes() == (tmp_path / "latest.pb").read_bytes()


def test_frozen_download_has_etag_length_disposition_and_honours_range(pushed_graph, converting_server):
    url = f"{converting_server.url}/api/v1/models/inception/versions/1/frozen.pb"
    full = requests.get(url)
    record = requests.get(f"{converting_server.url}/api/v1/models/inception/versions/1").json()
    digest = hashlib.sha256(full.content).hexdigest()
    assert digest == record["frozen"]["sha256"]
    assert full.headers["ETag"] == f'"{digest}"'
    assert int(full.headers["Content-Length"]) == len(full.content) == record["frozen"]["size"]
    assert 'filename=inception-v1.pb' in full.headers["Content-Disposition"]
    part = requests.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206
    assert part.content == full.content[10:100]
    assert part.headers["Content-Range"] == f"bytes 10-99/{len(full.content)}"
    assert requests.get(url, headers={"If-None-Match": f'"{digest}"'}).status_code == 304


def test_cli_ls_lists_models_and_versions(pushed_graph, converting_server):
    models_out = cli(converting_server, "ls").stdout
    assert "inception" in models_out
    versions_out = cli(converting_server, "ls", "inception").stdout
    assert "ready" in versions_out and "predictions/Softmax" in versions_out


def test_meta_only_push_detects_and_records_the_output(converting_server, models):
    client = RegistryClient(converting_server.url)
    model = models["legacy_meta"]
    files = [("meta", model.meta), ("index", model.index)] + [("data", p) for p in model.data]
    record = client.push("legacy", files, {})
    done = client.wait("legacy", record["version"], timeout=120)
    assert done["status"] == "ready", done["status_message"]
    assert (done["output_nodes"], done["output_nodes_detected"]) == (["predictions/Softmax"], True)


def test_wrong_output_node_fails_the_version_with_the_closest_names(converting_server, models):
    model = models["resource_meta"]
    result = cli(converting_server, "push", "typo", str(model.prefix), "--output-nodes", "predictions/Softmx",
                 "--wait")
    assert result.returncode == 1
    record = requests.get(f"{converting_server.url}/api/v1/models/typo/versions/1").json()
    assert record["status"] == "failed"
    assert "predictions/Softmax" in record["status_message"]
    assert record["frozen"] is None


def test_cli_pull_of_a_missing_version_says_so(converting_server, pushed_graph, tmp_path):
    result = cli(converting_server, "pull", "inception:42", "-o", str(tmp_path / "x.pb"))
    assert result.returncode != 0
    assert "no version 42" in result.stderr
    assert not (tmp_path / "x.pb").exists()


def test_cli_push_without_a_checkpoint_says_what_is_missing(converting_server, tmp_path):
    result = cli(converting_server, "push", "x", str(tmp_path / "model.ckpt"))
    assert result.returncode != 0
    assert "missing" in result.stderr and ".index" in result.stderr


def test_the_same_upload_converts_to_the_same_bytes_every_time(converting_server, models):
    """Each conversion runs in its own process; the frozen graph must not depend on that."""
    client = RegistryClient(converting_server.url)
    model = models["sharded"]
    files = [("meta", model.meta), ("index", model.index)] + [("data", p) for p in model.data]
    digests = set()
    for _ in range(2):
        record = client.wait("twice", client.push("twice", files, {})["version"], timeout=120)
        assert record["status"] == "ready", record["status_message"]
        digests.add(record["frozen"]["sha256"])
    assert len(digests) == 1
