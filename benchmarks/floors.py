"""What a request costs through the stacks the label service runs on, with nothing of the registry in them.

Issues 13 and 14 set latency targets as an overhead over, or a ratio to, an in-process
``Session.run``.  This script measures, side by side in one run, the parts of such a request that no
code of the registry can remove, and prints the bound each puts on those targets:

* **gRPC**: a ``grpcio`` server in another process, made as the label service makes its own
  (``registry.serving.grpc_server.new_server``: sync server, 16 threads, the same message limits,
  gRPC core's classic poller, its threads on one CPU as ``registry.cpus`` puts the label service's;
  the same server with gRPC's default EventEngine listener is measured beside it, for comparison),
  whose ``Predict`` answers a fixed
  ``PredictResponse`` (y = [[3.0]]) without looking at the request; the client is TF Serving's
  ``PredictionServiceStub`` on one channel, sending ``tf_serving_api.py``'s request.
* **REST**: a Flask app of a dozen lines on gunicorn, started with the flags ``registry serve
  --gunicorn`` uses (gthread, one process x 8 threads, keep-alive, access log, its hooks), answering
  ``:predict`` with ``{"predictions": [[3.0]]}`` after parsing the JSON body, and ``:label`` with a
  five-label JSON after reading the body, which is ``label_service.py``'s 640x480 JPEG.  One
  keep-alive ``http.client`` connection, as the other benchmarks use.
* **one process hop**: a run request of the label service's wire protocol (``registry.serving.wire``)
  to another process, which answers at once with a one-float result: what sending a request to an
  inference worker costs before the worker does anything.
* the **baselines** of the targets, in this process: ``Session.run`` of half_plus_two's y = 0.5x + 2
  (issue 13), and label_image.py's two steps (preprocessing ``Session.run``, then the model's) on
  the small CNN of ``label_service.py`` (issue 14).

Every call kind runs once per round, in an order rotated each round (as ``tf_serving_api.py``
does), so all see the same machine.  The bounds are lower bounds: the registry's measured figure
cannot be below stack + hop + its own run of the graph, less the baseline; the graph's run in the
worker is counted as free for the REST and gRPC figures (it takes 0.03-0.05 ms there), and as
long as the baseline's two steps for :label (the fused run takes as long as they do).

    .venv/bin/python benchmarks/floors.py [--samples 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from registry_server import free_port  # noqa: E402

from registry.serving import wire  # noqa: E402

SMALL_PREPROCESSING = {"input_height": 224, "input_width": 224, "input_mean": 0, "input_std": 255}
TARGETS = {  # issue 13: overhead over the plain run, ms; issue 14: ratio to label_image.py's two steps
    "gRPC Predict": 0.7, "REST :predict": 1.0, ":label small CNN": 1.05,
}
FLASK_APP = textwrap.dedent('''
    from flask import Flask, request

    app = Flask(__name__)

    @app.post("/v1/models/<name>:predict")
    def predict(name):
        request.get_json()
        return {"predictions": [[3.0]]}

    @app.post("/v1/models/<name>/versions/<int:version>:label")
    def label(name, version):
        request.get_data()
        return {"model": name, "version": version,
                "labels": [{"index": i, "label": f"class {i}", "score": 0.1} for i in range(5)]}
''')
ECHO = textwrap.dedent('''
    import socket, sys
    from registry.serving import wire
    channel = wire.Channel(socket.socket(fileno=int(sys.argv[1])), max_bytes=1 << 30)
    answer = [{"name": "y:0", "dtype": "float32", "shape": [1, 1]}]
    while True:
        try:
            header, buffers = channel.recv()
        except EOFError:
            break
        channel.send({"ok": True, "arrays": answer}, buffers, id=header["id"])
''')


# -- the stacks, empty ------------------------------------------------------------------------


def grpc_server(port: int) -> None:
    """(In its own process.)  TF Serving's PredictionService answering a fixed response."""
    from registry.serving.grpc_server import new_server  # first: it sets gRPC up before gRPC loads
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    response = predict_pb2.PredictResponse()
    response.model_spec.name = "half_plus_two"
    response.model_spec.version.value = 1
    response.model_spec.signature_name = "serving_default"
    output = response.outputs["y"]
    output.dtype = 1  # DT_FLOAT
    output.tensor_shape.dim.add(size=1)
    output.tensor_shape.dim.add(size=1)
    output.float_val.append(3.0)

    class Fixed(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            return response

    from registry import cpus

    cpus.pin_process(os.environ.get(cpus.SETTING) or "auto")  # its threads on one CPU, as the label service's
    server = new_server()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Fixed(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def wait_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a floor server exited ({process.returncode}):\n{log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"a floor server did not listen on {port} within 60 s")


def gunicorn_argv(port: int, folder: Path) -> list[str]:
    """The flags of ``registry serve --gunicorn`` (registry.cli.server), for the twelve-line app."""
    from gunicorn.config import KNOWN_SETTINGS

    argv = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1", "--threads", "8",
            "-k", "gthread", "--timeout", "0", "--access-logfile", "-", "--chdir", str(folder),
            "-c", "python:registry.gunicorn_conf"]  # its hooks: one process keeps its threads on one CPU
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        argv.append("--no-control-socket")
    return [*argv, "floor_app:app"]


class Http:
    """One keep-alive connection; one body per path."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, path: str, body: bytes, content_type: str) -> Callable[[], object]:
        def post():
            self.connection.request("POST", path, body, {"Content-Type": content_type})
            response = self.connection.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}: {data[:200]!r}")
        return post


class Hop:
    """The label service's wire protocol to another process and back."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.process = subprocess.Popen([sys.executable, "-c", ECHO, str(theirs.fileno())],
                                        pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self.channel = wire.Channel(mine, max_bytes=1 << 30)
        self.arrays = [{"name": "x:0", "dtype": "float32", "shape": [1, 1]}]
        self.buffer = b"\x00\x00\x00\x40"
        self.count = 0

    def call(self) -> None:
        self.count += 1
        self.channel.send({"op": "run", "key": "1:0123456789abcdef", "fetch": ["y:0"], "arrays": self.arrays},
                          [self.buffer], id=self.count)
        header, buffers = self.channel.recv()
        if header.get("id") != self.count:
            raise RuntimeError(f"the echo answered {header}")

    def close(self) -> None:
        self.channel.close()
        self.process.wait(timeout=10)


# -- the baselines ------------------------------------------------------------------------------


def half_plus_two() -> Callable[[], object]:
    import numpy as np
    import tensorflow as tf

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 1], name="x")
        tf.add(tf.multiply(x, 0.5), 2.0, name="y")
    session = tf1.Session(graph=graph)
    value = np.array([[2.0]], dtype=np.float32)
    return lambda: session.run("y:0", {"x:0": value})


def small_cnn_two_steps() -> tuple[Callable[[], object], bytes]:
    import label_service

    label_service.WORK.mkdir(parents=True, exist_ok=True)
    jpeg = label_service.ensure_jpeg()
    plain = label_service.PlainGraph(label_service.ensure_small_cnn(), "input:0", "output:0")
    steps = label_service.LabelImage(plain, jpeg, SMALL_PREPROCESSING)
    return steps.run, jpeg.read_bytes()


# -- the run --------------------------------------------------------------------------------------


def measure(calls: dict[str, Callable[[], object]], samples: int) -> dict[str, float]:
    """p50 of each call, ms, measured as tf_serving_api.py measures (once per round, order rotated)."""
    from tf_serving_api import measure_latency  # TensorFlow: not in the gRPC floor's own process until it asks

    return {name: statistics.median(values) for name, values in measure_latency(calls, samples).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="rounds (one call of each kind per round)")
    parser.add_argument("--grpc-server", type=int, help=argparse.SUPPRESS)  # the gRPC floor's own process
    args = parser.parse_args()
    if args.grpc_server:
        grpc_server(args.grpc_server)
        return 0

    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    from tf_serving_api import WARM_UP

    with tempfile.TemporaryDirectory(prefix="registry-floors-") as directory:
        folder = Path(directory)
        (folder / "floor_app.py").write_text(FLASK_APP)
        ports = {"grpc": free_port(), "grpc-default": free_port(), "gunicorn": free_port()}
        http_port = ports["gunicorn"]
        logs = {name: folder / f"{name}.log" for name in ports}
        servers = {}
        for name, port in ports.items():
            with open(logs[name], "wb") as log:
                argv = (gunicorn_argv(port, folder) if name == "gunicorn"
                        else [sys.executable, __file__, "--grpc-server", str(port)])
                # "grpc-default": gRPC core's own default (an empty GRPC_EXPERIMENTS), for comparison
                env = dict(os.environ, GRPC_EXPERIMENTS="") if name == "grpc-default" else None
                servers[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        hop = Hop()
        try:
            for name, port in ports.items():
                wait_listening(port, servers[name], logs[name])
            channels = [grpc.insecure_channel(f"127.0.0.1:{ports[name]}") for name in ("grpc", "grpc-default")]
            stub, default_stub = (prediction_service_pb2_grpc.PredictionServiceStub(c) for c in channels)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "half_plus_two"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], dtype=np.float32)))
            two_steps, jpeg = small_cnn_two_steps()
            rest = Http(http_port)
            hop_name = "one process hop (wire protocol)"
            groups = {  # each target's calls, in a rotation of their own (as its benchmark measures them)
                "issue 13 (tf_serving_api.py's rotation)": {
                    "plain Session.run (half_plus_two)": half_plus_two(),
                    "gRPC Predict, fixed answer": lambda: stub.Predict(request, timeout=30),
                    "(the same, gRPC's EventEngine listener)": lambda: default_stub.Predict(request, timeout=30),
                    "REST :predict, fixed answer": rest.call("/v1/models/half_plus_two:predict",
                                                             json.dumps({"instances": [[2.0]]}).encode(),
                                                             "application/json"),
                    hop_name: hop.call,
                },
                "issue 14 (label_service.py's rotation)": {
                    "label_image.py's two steps (small CNN)": two_steps,
                    "REST :label, JPEG body, fixed answer": rest.call("/v1/models/small/versions/1:label", jpeg,
                                                                      "image/jpeg"),
                    hop_name: hop.call,
                },
            }
            p50s = {}
            for title, calls in groups.items():
                print(f"{title}: {args.samples} rounds (+{WARM_UP} warm-up), one call of each per round, order "
                      f"rotated; p50, ms")
                p50s[title] = measure(calls, args.samples)
                width = max(map(len, p50s[title]))
                for name, value in p50s[title].items():
                    print(f"  {name:<{width}}  {value:7.3f}")
            for channel in channels:
                channel.close()
        finally:
            hop.close()
            for process in servers.values():
                process.terminate()
                process.wait(timeout=15)
    p50, small = p50s.values()
    plain, steps = p50["plain Session.run (half_plus_two)"], small["label_image.py's two steps (small CNN)"]
    print(f"\nlower bounds the stacks alone put on the targets (the registry's own code counted as free; JPEG "
          f"body {len(jpeg):,} bytes):")
    for api, stack in (("gRPC Predict", "gRPC Predict, fixed answer"), ("REST :predict", "REST :predict, fixed answer")):
        bound = p50[stack] + p50[hop_name] - plain
        print(f"  {api} overhead >= {p50[stack]:.3f} + {p50[hop_name]:.3f} (hop) - {plain:.3f} (plain run) = "
              f"{bound:.3f} ms  (target <= {TARGETS[api]:.1f} ms: {TARGETS[api] - bound:+.3f} ms left for the "
              "registry's own work)")
    label_stack, hop_ms = small["REST :label, JPEG body, fixed answer"], small[hop_name]
    bound = (label_stack + hop_ms + steps) / steps
    target = TARGETS[":label small CNN"]
    print(f"  :label small CNN ratio >= ({label_stack:.3f} + {hop_ms:.3f} (hop) + {steps:.3f} (the run)) / "
          f"{steps:.3f} = {bound:.3f}  (target <= {target:.2f}: "
          f"{'within reach' if bound <= target else 'out of reach on this stack'}; it leaves "
          f"{(target - 1) * steps:.3f} ms for everything around the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
