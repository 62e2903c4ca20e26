"""A request cannot take the label service down.

Graphs run in supervised inference worker processes under an address-space
limit (REGISTRY_LABEL_MEMORY_MB): a 28-byte :predict on a graph whose Fill takes
its shape from the input fails alone (413, gRPC RESOURCE_EXHAUSTED) and the next
request succeeds; a worker killed mid-request costs that request a 503 and is
replaced; workers die with their label service and carry no credentials; the
cache budget bounds what the workers really hold; and :predict JSON is
measured (values, nesting) before it is parsed.  Real graphs, real HTTP, real
worker processes, read from /proc.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf

from registry.client import RegistryClient
from tests import tfmodels
from tests.conftest import make_settings, start_live_server

pytestmark = pytest.mark.slow
tf1 = tf.compat.v1
MEMORY_MB = 4096  # the test workers' address space: TensorFlow takes about 2 GB of it
MAX_ELEMENTS = 5_000_000  # the default of REGISTRY_PREDICT_MAX_ELEMENTS
FOREVER = 10**12  # loop steps of the slow graph: hours of work
GiB = 1024**3


def build_fill_frozen(directory: Path) -> Path:
    """input int32 [2] → ``tf.fill(input, 1.0)`` → output: the request chooses how much it allocates."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        shape = tf1.placeholder(tf.int32, [2], name="input")
        tf.fill(shape, 1.0, name="output")
    path = directory / "fill.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def build_weights_frozen(directory: Path, megabytes: int, seed: int) -> Path:
    """input [None, 4] → output, through a constant of ``megabytes`` MB of seeded weights."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4], name="input")
        table = tf.constant(np.random.default_rng(seed).random((megabytes * 1024 * 1024 // 16, 4), dtype=np.float32))
        tf.identity(x + tf.reduce_mean(table, axis=0), name="output")
    path = directory / f"weights-{seed}.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def proc_status(pid: int, field: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def inference_workers(parent: int | None = None) -> list[int]:
    """The pids of the inference worker processes whose parent is ``parent`` (this process)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"registry.serving.inference" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def push_frozen(client: RegistryClient, name: str, path: Path, **fields) -> int:
    pushed = client.push(name, [("frozen", path)], {"output_nodes": "output", **fields})
    return pushed["version"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A live registry with a converter and a label service whose workers have 4096 MB each:
    'fill' (the Fill-by-input graph), 'cnn' (a small frozen CNN) and 'slow' (a loop)."""
    root = tmp_path_factory.mktemp("isolation")
    settings = make_settings(root / "home", embedded_workers=1, label_memory_mb=MEMORY_MB,
                             label_timeout_seconds=120.0)
    server, stop = start_live_server(settings, workers=True)
    client = RegistryClient(server.url)
    cnn = tfmodels.build_frozen(root / "cnn")
    versions = {"fill": push_frozen(client, "fill", build_fill_frozen(root / "fill")),
                "cnn": client.push("cnn", [("frozen", cnn.frozen_graph)], {"output_nodes": cnn.output})["version"],
                "slow": push_frozen(client, "slow", tfmodels.build_slow_frozen(root / "slow"))}
    for name, number in versions.items():
        record = client.wait(name, number, timeout=300)
        assert record["status"] == "ready", record["status_message"]
    yield {"server": server, "url": server.url, "cnn": cnn, "root": root}
    stop()


def predict(served, name: str, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{served['url']}/v1/models/{name}:predict", data=data, timeout=kwargs.pop("timeout", 120),
                         **kwargs)


def assert_still_serving(served) -> None:
    """A normal request right after: answered, and right."""
    cnn = served["cnn"]
    answer = predict(served, "cnn", {"instances": cnn.test_input.tolist()})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], cnn.expected, atol=1e-5)
    filled = predict(served, "fill", {"inputs": [2, 3]})
    assert filled.status_code == 200, filled.text
    assert filled.json()["outputs"] == [[1.0] * 3] * 2


# -- runaway allocations --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [[30000, 28000], [100000, 100000]])
def test_a_request_whose_graph_allocates_without_bound_fails_alone_and_the_next_succeeds(served, shape):
    assert_still_serving(served)  # loaded
    workers = inference_workers()
    peak_before = proc_status(os.getpid(), "VmHWM")
    body = json.dumps({"inputs": shape}, separators=(",", ":"))
    assert len(body) <= 28
    answer = predict(served, "fill", body)
    assert answer.status_code == 413, answer.text
    assert set(answer.json()) == {"error"}
    assert "REGISTRY_LABEL_MEMORY_MB" in answer.json()["error"] and "OOM" in answer.json()["error"]
    # The allocation was refused in the worker (it answered and lives on); the label service never held it.
    assert proc_status(os.getpid(), "VmHWM") - peak_before < GiB
    assert inference_workers() == workers
    assert_still_serving(served)


def test_an_answer_larger_than_a_response_may_carry_is_refused(served):
    # 9000 x 9000 floats fit the worker (324 MB) but not a JSON answer, nor a 256 MB message.
    answer = predict(served, "fill", {"inputs": [9000, 9000]})
    assert answer.status_code == 413, answer.text
    assert "256 MB" in answer.json()["error"]
    # 3000 x 3000 = 9 M values: fine as arrays, too many for a JSON answer.
    answer = predict(served, "fill", {"inputs": [3000, 3000]})
    assert answer.status_code == 413, answer.text
    assert "REGISTRY_PREDICT_MAX_ELEMENTS" in answer.json()["error"]
    assert_still_serving(served)


def test_grpc_predict_of_a_runaway_allocation_is_resource_exhausted_and_the_next_succeeds(served):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from registry.serving.grpc_server import start_grpc_server

    grpc_server, port = start_grpc_server(served["server"].registry, port=0)

    def request(name: str, value: np.ndarray):
        message = predict_pb2.PredictRequest()
        message.model_spec.name = name
        message.inputs["input"].CopyFrom(tf.make_tensor_proto(value))
        return message

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for shape, says in (([100000, 100000], "REGISTRY_LABEL_MEMORY_MB"), ([9000, 9000], "256 MB")):
                with pytest.raises(grpc.RpcError) as error:
                    stub.Predict(request("fill", np.array(shape, np.int32)), timeout=120)
                assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert says in error.value.details()
            filled = stub.Predict(request("fill", np.array([2, 2], np.int32)), timeout=120)
            assert tf.make_ndarray(filled.outputs["output"]).tolist() == [[1.0, 1.0], [1.0, 1.0]]
            cnn = served["cnn"]
            answer = stub.Predict(request("cnn", cnn.test_input), timeout=120)
            np.testing.assert_allclose(tf.make_ndarray(answer.outputs["predictions_Softmax"]), cnn.expected,
                                       atol=1e-5)
    finally:
        grpc_server.stop(0)


# -- dead workers ---------------------------------------------------------------------------------

def test_a_worker_killed_mid_request_fails_that_request_with_503_and_is_replaced(served):
    assert predict(served, "slow", {"inputs": {"input": [[2.0]], "iterations": 3}}).json()["outputs"] == [[6.0]]
    (victim,) = inference_workers()
    answers: list = []
    running = threading.Thread(target=lambda: answers.append(
        predict(served, "slow", {"inputs": {"input": [[2.0]], "iterations": FOREVER}})))
    running.start()
    time.sleep(2.0)  # the loop is running in the worker
    os.kill(victim, signal.SIGKILL)
    running.join(timeout=60)
    assert answers and answers[0].status_code == 503, answers and answers[0].text
    assert "stopped while running this request" in answers[0].json()["error"]
    assert "REGISTRY_LABEL_MEMORY_MB" in answers[0].json()["error"]
    assert answers[0].headers.get("Retry-After") == "1"
    assert predict(served, "slow", {"inputs": {"input": [[2.0]], "iterations": 5}}).json()["outputs"] == [[10.0]]
    assert_still_serving(served)
    replacement = inference_workers()
    assert len(replacement) == 1 and victim not in replacement


def test_an_idle_worker_killed_is_replaced_and_its_graphs_load_again(served):
    assert_still_serving(served)
    (victim,) = inference_workers()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: (pids := inference_workers()) and victim not in pids, what="a replacement worker")
    assert_still_serving(served)


def test_workers_carry_no_credentials_and_die_with_their_label_service(served, tmp_path):
    """A `registry label-serve` with a database URL and cloud credentials in its environment:
    its worker's environment has neither, and SIGKILLing the label service kills the worker."""
    home = served["server"].settings.home
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_"))}
    env.update(REGISTRY_HOME=str(home), REGISTRY_DATABASE_URL=f"sqlite:///{home / 'registry.db'}",
               REGISTRY_PUBLIC_READ="1", REGISTRY_DEMO="0", REGISTRY_LABEL_MEMORY_MB=str(MEMORY_MB),
               AWS_SECRET_ACCESS_KEY="s3cr3t-for-test",
               AWS_ACCESS_KEY_ID="AKIATEST", REGISTRY_TOKEN="rgt_test_token")
    port = free_port()
    log = open(tmp_path / "label-serve.log", "wb")
    service = subprocess.Popen([sys.executable, "-m", "registry.cli", "label-serve", "--no-grpc", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/healthz"), what="label-serve")
        cnn = served["cnn"]
        answer = requests.post(f"{url}/v1/models/cnn:predict", json={"instances": cnn.test_input.tolist()},
                               timeout=120)
        assert answer.status_code == 200, answer.text
        # its inference worker loaded TensorFlow without printing its native start-up lines (issue 15)
        printed = (tmp_path / "label-serve.log").read_bytes()
        assert b"Label service listening on" in printed and b"oneDNN" not in printed, printed.decode()[-2000:]
        (worker,) = inference_workers(service.pid)
        environment = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
        names = {item.split(b"=", 1)[0].decode() for item in environment if item}
        assert not {n for n in names if n.startswith(("REGISTRY_", "AWS_"))}, names
        assert b"s3cr3t-for-test" not in b"\0".join(environment)
        os.killpg(service.pid, signal.SIGKILL)  # the worker is in a session of its own: not in this group
        service.wait(timeout=30)
        wait_for(lambda: not Path(f"/proc/{worker}").exists() or _zombie(worker), timeout=10,
                 what="the worker to die with its label service")
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(timeout=30)
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# -- the cache budget -----------------------------------------------------------------------------

GRAPH_MB = 24  # a loaded one costs what its worker measured: its 24 MB of weights (once) and a little more
CACHE_MB = 40  # room for one
VERSIONS = 5
ROUNDS = 3


def test_the_cache_budget_bounds_what_the_workers_really_hold(tmp_path, monkeypatch):
    """15 loads of 5 versions of a 24 MB graph under a 40 MB budget (one graph at a time): the
    workers' resident memory stays within what they held after the first load, the budget and a
    margin (without unloading, five such graphs hold about 100 MB more).  Then a worker that holds
    more than its graphs should after an eviction is replaced, and serving goes on."""
    settings = make_settings(tmp_path / "home", embedded_workers=1, label_memory_mb=MEMORY_MB,
                             label_cache_mb=CACHE_MB)
    others = set(inference_workers())  # other servers' workers in this process (the module's)

    def workers() -> list[int]:
        return [pid for pid in inference_workers() if pid not in others]

    server, stop = start_live_server(settings, workers=True)
    try:
        client = RegistryClient(server.url)
        for seed in range(VERSIONS):
            push_frozen(client, "weights", build_weights_frozen(tmp_path / "graphs", GRAPH_MB, seed))
        for number in range(1, VERSIONS + 1):
            record = client.wait("weights", number, timeout=300)
            assert record["status"] == "ready", record["status_message"]
        expected: dict[int, list] = {}

        def cycle(rounds: int) -> tuple[int, int]:
            """Predict with every version in turn; the workers' total VmRSS after the first and at most."""
            first = peak = 0
            for _ in range(rounds):
                for number in range(1, VERSIONS + 1):
                    answer = requests.post(f"{server.url}/v1/models/weights/versions/{number}:predict",
                                           json={"instances": [[1.0, 2.0, 3.0, 4.0]]}, timeout=120)
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["predictions"] == expected.setdefault(number, answer.json()["predictions"])
                    rss = sum(proc_status(pid, "VmRSS") for pid in workers())
                    first, peak = first or rss, max(peak, rss)
            return first, peak

        first, peak = cycle(ROUNDS)
        service = server.registry.label_service()
        assert all(count == ROUNDS for count in service.cache.loads.values())  # every load was evicted again
        assert service.cache.used_bytes <= CACHE_MB * 1024 * 1024
        assert peak - first < (CACHE_MB + 48) * 1024 * 1024, (first >> 20, peak >> 20)
        assert len({str(p) for p in expected.values()}) == VERSIONS  # five different graphs answered

        # A worker holding more than its graphs need after an eviction is drained and replaced. To
        # provoke it, the margin it may hold beyond them is made negative: every eviction is "too much".
        from registry.serving import workers as worker_module

        (before,) = workers()
        monkeypatch.setattr(worker_module, "RECYCLE_SLACK_BYTES", -64 * 1024**3)
        cycle(1)
        wait_for(lambda: before not in workers(), what="the old worker to be replaced")
        monkeypatch.undo()
        cycle(1)
        assert workers() and before not in workers()
    finally:
        stop()


# -- :predict JSON bounds -------------------------------------------------------------------------

def test_a_body_with_more_values_than_allowed_is_refused_quickly_with_413(served):
    body = b'{"instances": [' + b"0," * (32 * 1024 * 1024) + b"0]}"  # 64 MB, 33 M values
    started = time.monotonic()
    answer = predict(served, "cnn", body)
    elapsed = time.monotonic() - started
    assert answer.status_code == 413, answer.text
    assert set(answer.json()) == {"error"} and "REGISTRY_PREDICT_MAX_ELEMENTS" in answer.json()["error"]
    assert elapsed < 10, elapsed
    assert_still_serving(served)


def test_a_body_just_within_the_bound_is_parsed(served):
    # MAX_ELEMENTS values: measured, parsed, then refused by the model for its shape (a 400, not a 413).
    body = '{"instances": [' + "0," * (MAX_ELEMENTS - 3) + "0]}"
    answer = predict(served, "cnn", body)
    assert answer.status_code == 400, answer.text
    assert "shape" in answer.json()["error"]


@pytest.mark.parametrize("body, status, says", [
    ("[" * 100_000 + "]" * 100_000, 400, "levels deep"),
    ('{"instances": ' + "[" * 65 + "1" + "]" * 65 + "}", 400, "levels deep"),
    ('{"instances": [' + "{" * 50_000, 400, "levels deep"),
    ('{"instances": ["' + '\\"' * 2_000_000, 400, "not valid JSON"),
])
def test_deeply_nested_or_unterminated_bodies_are_400s(served, body, status, says):
    started = time.monotonic()
    answer = predict(served, "cnn", body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and says in answer.json()["error"]
    assert time.monotonic() - started < 10
    assert_still_serving(served)


def test_strings_do_not_count_their_commas_or_brackets(served):
    # A string full of commas and brackets is one value at depth 3, not millions of values.
    body = json.dumps({"instances": ["[,{" * 3_000_000]})
    answer = predict(served, "cnn", body)
    assert answer.status_code == 400, answer.text
    assert "expected numbers" in answer.json()["error"]
