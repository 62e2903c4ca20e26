"""The demo model: trained at first start on scikit-learn's digits, pushed through the real
push path, converted by the real embedded worker and compared through the real label service."""

from __future__ import annotations

import io
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from registry import catalog
from registry.client import RegistryClient
from registry.config import Settings
from registry.demo.seed import MARKER, MODEL, seed_demo, should_seed, start_seeding
from tests.conftest import make_settings, start_live_server
from tests.helpers import push

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A fresh registry with an embedded converter, seeded once and waited on until every version is ready."""
    settings = make_settings(tmp_path_factory.mktemp("demo"), embedded_workers=1)
    server, stop = start_live_server(settings, workers=True)
    client = RegistryClient(server.url)
    started = time.monotonic()
    result = seed_demo(server.registry)
    assert result is not None, "seeding failed: see the warning logged by registry.demo"
    seeded_in = time.monotonic() - started
    records = {v: client.wait(MODEL, v, timeout=120, poll=0.2) for v in result.versions}
    ready_in = time.monotonic() - started
    print(f"demo: trained in {result.train_seconds:.1f} s, pushed after {seeded_in:.1f} s, "
          f"all versions ready after {ready_in:.1f} s")
    yield {"server": server, "client": client, "result": result, "records": records, "home": settings.home}
    stop()


def roles(seeded) -> dict[str, int]:
    """Version number by role, read back from the descriptions ("early: ...", "better: ...")."""
    return {record["description"].split(":")[0]: number for number, record in seeded["records"].items()}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_seeding_a_fresh_registry_yields_ready_digits_versions_that_differ(seeded):
    client = seeded["client"]
    versions = list(client.list_versions(MODEL))
    assert len(versions) >= 2
    assert sorted(v["version"] for v in versions) == seeded["result"].versions
    for record in seeded["records"].values():
        assert record["status"] == "ready", record["status_message"]
        assert record["verification"]["status"] == "passed"
        assert record["output_nodes"] == ["predictions/Softmax"]
        assert record["input_nodes"] == [{"name": "input", "dtype": "float32", "shape": [None, 8, 8, 3],
                                          "optional": False}]
        assert record["safety"]["flagged"] is False
    assert set(roles(seeded)) >= {"early", "better"}
    frozen = {v: record["frozen"]["sha256"] for v, record in seeded["records"].items()}
    assert len(set(frozen.values())) == len(frozen)  # really different weights


def test_production_points_at_the_better_version_and_labels_are_the_digits(seeded):
    client = seeded["client"]
    model = client.get_model(MODEL)
    assert model["aliases"]["production"] == roles(seeded)["better"]
    assert model["aliases"]["staging"] == max(seeded["result"].versions)
    for number in seeded["result"].versions:
        labels = requests.get(f"{seeded['server'].url}/api/v1/models/{MODEL}/versions/{number}/labels.txt")
        assert labels.status_code == 200
        assert labels.text.split() == [str(d) for d in range(10)]


def test_sample_images_and_expected_labels_are_in_home_demo(seeded):
    demo = seeded["home"] / "demo"
    samples = sorted(demo.glob("*.png"))
    expected = (demo / "expected.txt").read_text().split()
    assert 8 <= len(samples) <= 12
    assert len(expected) == len(samples)
    assert set(expected) <= {str(d) for d in range(10)}
    assert [p.name for p in samples] == [p.name for p in seeded["result"].samples]
    assert all(png_size(p) == (64, 64) for p in samples)
    assert (demo / MARKER).is_file()


def test_comparing_the_versions_on_the_samples_shows_them_disagree_and_the_better_one_win(seeded):
    demo = seeded["home"] / "demo"
    samples = sorted(demo.glob("*.png"))
    expected = (demo / "expected.txt").read_text().split()
    early, better = roles(seeded)["early"], roles(seeded)["better"]
    answer = seeded["client"].compare(MODEL, samples, [str(early), str(better)], expected)
    accuracy = {v["version"]: v["accuracy"]["top1"] for v in answer["versions"]}
    print(f"demo samples: top-1 early v{early} {accuracy[early]:.0%}, better v{better} {accuracy[better]:.0%}; "
          f"disagree on {answer['agreement']['disagreements']}")
    assert accuracy[better] >= 0.8
    assert accuracy[better] > accuracy[early]
    assert len(answer["agreement"]["disagreements"]) >= 2
    assert answer["agreement"]["pairs"][0]["top1_agreement"] < 1
    # The production alias labels a sample the early version gets wrong, correctly.
    wrong_early = next(i for i, r in enumerate(next(v for v in answer["versions"] if v["version"] == early)["results"])
                       if r["predictions"][0]["label"] != expected[i])
    label = seeded["client"].label(MODEL, "production", samples[wrong_early])
    assert label["version"] == better
    assert label["predictions"][0]["label"] == expected[wrong_early]


def test_a_second_call_does_not_seed_again(seeded):
    registry = seeded["server"].registry
    assert should_seed(registry) is False
    assert seed_demo(registry) is None
    assert start_seeding(registry) is None
    assert sorted(v["version"] for v in seeded["client"].list_versions(MODEL)) == seeded["result"].versions
    assert [m["name"] for m in seeded["client"].list_models()] == [MODEL]


def _app(home: Path, **overrides):
    from registry.app import create_app

    return create_app(make_settings(home, **overrides))


def test_with_the_demo_off_nothing_is_seeded(tmp_path):
    app = _app(tmp_path / "off", demo=False)
    registry = app.extensions["registry"]
    try:
        assert start_seeding(registry) is None
        assert seed_demo(registry) is None
        assert catalog.list_models(registry.db).items == []
        assert not (tmp_path / "off" / "demo").exists()
    finally:
        registry.db.dispose()


@pytest.mark.parametrize("value, on", [(None, True), ("", True), ("1", True), ("yes", True),
                                       ("0", False), ("false", False), ("No", False), ("off", False)])
def test_registry_demo_environment_variable(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv("REGISTRY_DEMO", raising=False)
    else:
        monkeypatch.setenv("REGISTRY_DEMO", value)
    assert Settings.from_env().demo is on


def _minimal_graph_def() -> bytes:
    """A one-node GraphDef (a Placeholder named x), written by hand: no TensorFlow needed."""
    node = b"\x0a\x01x" + b"\x12\x0bPlaceholder"
    return b"\x0a" + bytes([len(node)]) + node


def test_a_registry_that_already_has_models_is_not_seeded(tmp_path):
    app = _app(tmp_path / "used")
    registry = app.extensions["registry"]
    try:
        answer = push(app.test_client(), "mine", {"frozen": (io.BytesIO(_minimal_graph_def()), "mine.pb")})
        assert answer.status_code == 202, answer.get_json()
        assert should_seed(registry) is False
        assert seed_demo(registry) is None
        assert [m.name for m in catalog.list_models(registry.db).items] == ["mine"]
    finally:
        registry.db.dispose()


def test_failed_training_logs_a_warning_and_leaves_nothing(tmp_path, caplog):
    app = _app(tmp_path / "fails")
    registry = app.extensions["registry"]
    try:
        with caplog.at_level(logging.WARNING, logger="registry.demo"):
            assert seed_demo(registry, timeout=0.05) is None
        assert any("demo model not seeded" in r.getMessage() and "longer than" in r.getMessage()
                   for r in caplog.records)
        assert catalog.list_models(registry.db).items == []
        assert not (tmp_path / "fails" / "demo" / MARKER).exists()
        assert should_seed(registry) is True  # a later start tries again
    finally:
        registry.db.dispose()


def _serve(home: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, REGISTRY_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("REGISTRY_DATABASE_URL", None)
    env.pop("REGISTRY_STORAGE", None)
    env.pop("REGISTRY_DEMO", None)
    home.mkdir(parents=True)
    with open(home / "serve.log", "w") as log:  # stderr: logging, read back when something fails
        return subprocess.Popen([sys.executable, "-m", "registry.cli", "serve", "--port", "0", "--workers", "0",
                                 *args], env=env, stdout=subprocess.PIPE, stderr=log, text=True)


def _log(home: Path) -> str:
    return (home / "serve.log").read_text()


def _banner(proc: subprocess.Popen, home: Path) -> tuple[str, str]:
    """The lines `serve` prints up to its hint line, and its URL."""
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, f"serve exited: {_log(home)}"
        lines.append(line)
        if "try:" in line:
            break
    url = next(l.split("listening on ")[1].strip() for l in lines if "listening on" in l)
    return "".join(lines), url


def _stop(proc: subprocess.Popen) -> str:
    """Stop `serve` as a service manager would; the rest of what it printed."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return proc.stdout.read()


def test_serve_seeds_in_the_background_without_loading_tensorflow(tmp_path):
    home = tmp_path / "served"
    proc = _serve(home)
    try:
        banner, url = _banner(proc, home)
        assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}  # answers while training
        deadline = time.monotonic() + 120
        while not (home / "demo" / MARKER).exists():
            assert proc.poll() is None and time.monotonic() < deadline, _log(home)
            time.sleep(0.2)
        model = requests.get(f"{url}/api/v1/models/{MODEL}", timeout=5).json()
        maps = Path(f"/proc/{proc.pid}/maps")
        if maps.exists():  # the web process never loaded TensorFlow, numpy or scikit-learn
            loaded = maps.read_text()
            assert not [lib for lib in ("tensorflow", "numpy", "sklearn", "scipy") if lib in loaded]
    finally:
        rest = _stop(proc)
    assert "demo: preparing model 'digits'" in banner + rest
    assert model["version_count"] >= 2 and "production" in model["aliases"]


def test_serve_no_demo_seeds_nothing(tmp_path):
    home = tmp_path / "off"
    proc = _serve(home, "--no-demo")
    try:
        banner, url = _banner(proc, home)
        assert requests.get(f"{url}/api/v1/models", timeout=5).json()["models"] == []
        assert requests.get(f"{url}/api/v1/models/nope", timeout=5).status_code == 404  # werkzeug colours a 404
    finally:
        rest = _stop(proc)
    assert "demo:" not in banner + rest
    assert not (home / "demo").exists()
    assert "registry.demo" not in _log(home)
    # the access log, written to a file here, reads as plain text (werkzeug colours it for terminals only)
    assert "GET /api/v1/models/nope HTTP/1.1" in _log(home) and "\x1b[" not in _log(home), _log(home)
