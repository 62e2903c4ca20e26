"""The serving path of two versions of this code side by side: a git revision against the working tree.

On a shared machine the absolute figures of ``tf_serving_api.py`` move with the hour (the same code
measured 0.8 ms one day and 2.3 ms another), so a change to the serving path is judged here: the
revision ``--baseline`` is checked out in a temporary git worktree, and both versions run at once, each
as ``tf_serving_api.py`` runs one: ``registry serve --grpc-port`` (which converts) and ``registry serve
--gunicorn`` on its own registry home, with TF Serving's ``half_plus_two`` pushed as a SavedModel.
Their gRPC ``Predict``, REST ``:predict`` and REST ``:classify`` calls alternate in one rotation
(``tf_serving_api.measure_latency``), so both see the same machine, and each round prints the p50 of
each call and the ratio working tree / baseline (below 1: the working tree is faster).  At the end, the
tail of each over all rounds: p99, p99.9, the slowest call, and how many took over 50 ms (a call that
slow waited for something else than its own work, such as a full garbage collection).

    .venv/bin/python benchmarks/ab_serving.py [--baseline HEAD] [--samples 2000] [--rounds 3]

Runs from a temporary directory: ``python -m gunicorn`` puts its working directory first on the
import path, and in the checkout that would import the working tree's ``registry`` for both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from registry_server import RegistryServer, free_port  # noqa: E402
from tf_serving_api import CLASSIFY_BODY, SMALL, Rest, _rest_call, measure_latency, percentile, push  # noqa: E402

from registry.client import RegistryClient  # noqa: E402
from registry.converter.saved_model import write_archive  # noqa: E402
from tests.tfmodels import build_half_plus_two  # noqa: E402

CALLS = ("gRPC Predict", "REST :predict", "REST :classify")
STALL_MS = 50.0  # a call this slow waited for something else than its own work (a full GC pass, say)


def start(stack: ExitStack, label: str, code: Path, home: Path, archive: Path) -> dict:
    """Both servers of one version of the code (``code`` first on the import path), and its calls."""
    env = {"REGISTRY_GC_INTERVAL_SECONDS": "0", "PYTHONPATH": str(code)}
    grpc_port = free_port()
    server = stack.enter_context(RegistryServer(home, workers=1, log_path=home.with_suffix(".log"), env=env,
                                                args=("--grpc-port", str(grpc_port))))
    push(RegistryClient(server.url), SMALL, [("saved_model", archive)], {})
    gunicorn = stack.enter_context(RegistryServer(home, workers=0, log_path=home.with_suffix(".gunicorn.log"),
                                                  env=env, args=("--gunicorn", "--processes", "1", "--threads", "8")))
    channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = SMALL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], dtype=np.float32)))
    if stub.Predict(request, timeout=30).outputs["y"].float_val != [3.0]:
        raise SystemExit(f"{label}: half_plus_two(2.0) is not 3.0")
    rest = Rest(gunicorn.port)
    return {
        f"gRPC Predict ({label})": lambda: stub.Predict(request, timeout=30),
        f"REST :predict ({label})": _rest_call(rest, f"/v1/models/{SMALL}:predict",
                                               json.dumps({"instances": [[2.0]]}).encode()),
        f"REST :classify ({label})": _rest_call(rest, f"/v1/models/{SMALL}:classify",
                                                json.dumps(CLASSIFY_BODY).encode()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="the git revision to compare the working tree with")
    parser.add_argument("--samples", type=int, default=2000, help="rounds of the rotation per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements, each printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="registry-ab-") as directory, ExitStack() as stack:
        tmp = Path(directory)
        os.chdir(tmp)
        baseline = tmp / "baseline"
        try:
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(baseline),
                            args.baseline], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"cannot check out {args.baseline!r}: {exc.stderr.strip()}") from None
        stack.callback(subprocess.run, ["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)],
                       capture_output=True)
        write_archive(build_half_plus_two(tmp / SMALL), tmp / f"{SMALL}.tar.gz")
        calls = {**start(stack, "baseline", baseline, tmp / "home-baseline", tmp / f"{SMALL}.tar.gz"),
                 **start(stack, "working tree", REPO, tmp / "home-working", tmp / f"{SMALL}.tar.gz")}
        print(f"baseline {args.baseline} against the working tree: {args.samples} rounds each, one call of each "
              "per round, order rotated; p50, ms")
        every: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            measured = measure_latency(calls, args.samples)
            p50 = {name: statistics.median(times) for name, times in measured.items()}
            print("  " + "   ".join(f"{call}: {p50[f'{call} (baseline)']:.3f} -> {p50[f'{call} (working tree)']:.3f} "
                                    f"({p50[f'{call} (working tree)'] / p50[f'{call} (baseline)']:.3f}x)"
                                    for call in CALLS), flush=True)
            for name, times in measured.items():
                every[name].extend(times)
        print(f"the tail over all {args.rounds * args.samples} calls of each: p99 / p99.9 / max, ms; calls over "
              f"{STALL_MS:g} ms")
        for call in CALLS:
            print(f"  {call}: " + "   ".join(
                f"{side} {percentile(times, 0.99):.2f} / {percentile(times, 0.999):.2f} / {max(times):.1f}, "
                f"{sum(t > STALL_MS for t in times)} over"
                for side, times in ((side, every[f"{call} ({side})"]) for side in ("baseline", "working tree"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
