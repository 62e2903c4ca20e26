"""Where a serving process's threads run (REGISTRY_LABEL_CPU, registry.cpus), on real servers.

`registry serve` pinned to one CPU keeps every thread of its own there and the inference worker's
request threads with them, while TensorFlow's pools in the worker and the converter's children keep
every CPU; ``off`` leaves everything free; a setting it cannot use is one line saying what to set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from registry import cpus
from registry.client import RegistryClient
from tests.helpers import server_env, start_gunicorn, start_registry, stop_server

ALLOWED = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
pytestmark = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs at least two CPUs to put threads on one")


def thread_cpus(pid: int) -> dict[int, frozenset[int]]:
    """The CPUs each thread of ``pid`` may run on, by thread id."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found[int(task.name)] = frozenset(os.sched_getaffinity(int(task.name)))
        except OSError:  # the thread ended meanwhile
            continue
    return found


def children(pid: int, marker: bytes) -> list[int]:
    """The pids of ``pid``'s child processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and marker in cmdline:
            found.append(int(entry.name))
    return found


def start(command: str, home: Path, setting: str, *options: str) -> tuple[subprocess.Popen, str]:
    return start_registry([command, *options], server_env(home, REGISTRY_LABEL_CPU=setting, REGISTRY_DEMO="0"),
                          ready="/healthz")


def predict(url: str, model) -> None:
    answer = requests.post(f"{url}/v1/models/frozen:predict", json={"instances": model.test_input.tolist()},
                           timeout=120)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], model.expected, atol=1e-5)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, models):
    """A registry home holding a ready version of `frozen`, converted by a pinned `registry serve`
    (kept running for the first test)."""
    home = tmp_path_factory.mktemp("cpus") / "home"
    cpu = ALLOWED[-1]
    proc, url = start("serve", home, str(cpu), "--workers", "1")
    try:
        client = RegistryClient(url)
        model = models["frozen"]
        number = client.push("frozen", [("frozen", model.frozen_graph)], {"output_nodes": model.output})["version"]
        assert client.wait("frozen", number, timeout=300)["status"] == "ready"
        yield {"home": home, "proc": proc, "url": url, "cpu": cpu, "model": model}
    finally:
        stop_server(proc)


def test_a_pinned_server_keeps_its_threads_on_one_cpu_and_gives_compute_every_cpu(pushed):
    proc, cpu = pushed["proc"], pushed["cpu"]
    predict(pushed["url"], pushed["model"])  # the answer is the graph's, pinned or not
    # every thread of the server process, gRPC-less REST, converter threads and all
    assert set(thread_cpus(proc.pid).values()) == {frozenset({cpu})}
    (worker,) = children(proc.pid, b"registry.serving.inference")
    placed = thread_cpus(worker)
    # the worker's main thread reads requests (and runs small graphs in place) beside the server...
    assert placed[worker] == {cpu}
    # ...while TensorFlow's thread pools, made before it pinned itself, may run on every CPU
    assert sum(1 for allowed in placed.values() if allowed == set(ALLOWED)) >= 2, placed
    # the warm converter template (TensorFlow imported, waiting for the next conversion) has every CPU
    (template,) = children(proc.pid, b"registry.converter.child")
    assert set(thread_cpus(template).values()) == {frozenset(ALLOWED)}


def test_off_leaves_every_thread_free(pushed):
    proc, url = start("label-serve", pushed["home"], "off", "--no-grpc")
    try:
        predict(url, pushed["model"])
        assert set(thread_cpus(proc.pid).values()) == {frozenset(ALLOWED)}
        (worker,) = children(proc.pid, b"registry.serving.inference")
        assert set(thread_cpus(worker).values()) == {frozenset(ALLOWED)}
    finally:
        stop_server(proc)


@pytest.mark.parametrize(("value", "says"), [
    ("fast", "REGISTRY_LABEL_CPU must be auto, off or a CPU number (0, 1, ...), not 'fast'"),
    ("4096", "REGISTRY_LABEL_CPU=4096 is not a CPU this process may use"),
])
def test_a_setting_it_cannot_use_is_one_line_saying_what_to_set(tmp_path, value, says):
    env = server_env(tmp_path / "home", REGISTRY_LABEL_CPU=value, REGISTRY_DEMO="0")
    for command in (["serve", "--port", "0"], ["label-serve", "--port", "0", "--no-grpc"]):
        done = subprocess.run([sys.executable, "-m", "registry.cli", *command], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode != 0
        assert says in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_setting_is_read_as_documented():
    assert cpus.check_setting(" Auto ") == "auto" and cpus.check_setting("off") == "off"
    assert cpus.check_setting(str(ALLOWED[-1])) == str(ALLOWED[-1])
    with pytest.raises(ValueError, match="auto, off or a CPU number"):
        cpus.check_setting("-1")
    with pytest.raises(ValueError, match="is not a CPU this process may use"):
        cpus.check_setting(str(max(ALLOWED) + 1))
    assert cpus.choose("off") is None
    assert cpus.choose("auto") in ALLOWED
    assert cpus.choose(str(ALLOWED[0])) == ALLOWED[0]


@pytest.mark.parametrize("processes", [1, 2])
def test_gunicorn_pins_a_single_process_and_leaves_several_to_the_kernel(pushed, processes):
    """``auto`` under `serve --gunicorn`: one process is pinned (as `serve` is), several are not (two
    picked by process id could land on one CPU and leave another idle)."""
    proc, url = start_gunicorn(server_env(pushed["home"], REGISTRY_LABEL_CPU="auto"), processes, "--threads", "4")
    try:
        predict(url, pushed["model"])
        assert set(thread_cpus(proc.pid).values()) == {frozenset(ALLOWED)}  # the CLI, then gunicorn's master
        workers = children(proc.pid, b"gunicorn")
        assert len(workers) == processes
        for worker in workers:
            placed = set(thread_cpus(worker).values())
            if processes == 1:
                assert len(placed) == 1 and len(next(iter(placed))) == 1, placed
            else:
                assert placed == {frozenset(ALLOWED)}
    finally:
        stop_server(proc)
