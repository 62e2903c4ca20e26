"""Push → ready through the CLI, against running TensorFlow's ``freeze_graph`` by hand.

The issue-14 pitch: "push, and it is ready faster than you could freeze it by hand".  For the same
>100 MB Inception-v3-sized checkpoint (built once, cached under ``benchmarks/.work``), in one run,
alternating:

- **by hand**: ``python -m tensorflow.python.tools.freeze_graph`` as a process (what people run:
  TensorFlow's import included); ``--input_graph`` for ``VariableV2`` variables, ``--input_meta_graph``
  for resource variables (``--input_graph`` crashes on them in TF 2.21);
- **the registry**: ``registry push NAME PREFIX ... --wait`` as a process against a running
  ``registry serve`` (embedded worker, its warm converter template started): upload, freeze, verify,
  ready.

Then how long the version's SavedModel (its follow-on job) takes after ``ready``, and whether the
frozen bytes equal the converter's own in-process output for the same files (same sha256).

Targets (issue 14): push → ready ≤ 0.6× the ``freeze_graph`` process, for both kinds of variables;
SavedModel ready ≤ 2 s after the version.  Exits 1 when a target is missed.

Run from the repository root: ``.venv/bin/python benchmarks/push_to_ready.py``
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import freeze_vs_freeze_graph as model  # noqa: E402  (the cached Inception-sized model and its builders)
import requests  # noqa: E402
import tensorflow as tf  # noqa: E402
from registry_server import REGISTRY_BIN, RegistryServer  # noqa: E402

from registry.converter.child import convert  # noqa: E402

TARGET_RATIO = 0.6
TARGET_SAVED_MODEL_S = 2.0
ROUNDS = 3
RESOURCE_DIR = model.WORK / "resource_model"
RESOURCE_PREFIX = RESOURCE_DIR / "model.ckpt"


def ensure_resource_model() -> None:
    """The same network with resource variables, saved with its .meta (freeze_graph needs --input_meta_graph)."""
    if (RESOURCE_DIR / "done").is_file():
        return
    print(f"building the resource-variable model in {RESOURCE_DIR.relative_to(model.REPO)} (once) ...", flush=True)
    RESOURCE_DIR.mkdir(parents=True, exist_ok=True)
    legacy = model._variable

    def resource_variable(name, shape, initializer):
        return tf.compat.v1.get_variable(name, shape, tf.float32, initializer, use_resource=True)

    model._variable = resource_variable
    try:
        with tf.Graph().as_default():
            tf.compat.v1.set_random_seed(model.SEED)
            images = tf.compat.v1.placeholder(tf.float32, [None, model.IMAGE_SIZE, model.IMAGE_SIZE, 3],
                                              name=model.INPUT_NODE)
            model.inception_v3(images)
            saver = tf.compat.v1.train.Saver()
            with tf.compat.v1.Session() as session:
                session.run(tf.compat.v1.global_variables_initializer())
                saver.save(session, str(RESOURCE_PREFIX))
    finally:
        model._variable = legacy
    (RESOURCE_DIR / "done").write_text("1")


def data_bytes(prefix: Path) -> int:
    return sum(p.stat().st_size for p in prefix.parent.glob(f"{prefix.name}.data-*"))


def freeze_by_hand(kind: str, output: Path) -> float:
    if kind == "VariableV2":
        args = [f"--input_graph={model.INFERENCE_GRAPH}", "--input_binary=true",
                f"--input_checkpoint={model.CHECKPOINT_PREFIX}"]
    else:
        args = [f"--input_meta_graph={RESOURCE_PREFIX}.meta", "--input_binary=true",
                f"--input_checkpoint={RESOURCE_PREFIX}"]
    command = [sys.executable, "-m", "tensorflow.python.tools.freeze_graph", *args,
               f"--output_node_names={model.OUTPUT_NODE}", f"--output_graph={output}"]
    return timed(command)


def push_command(kind: str, name: str, url: str) -> list[str]:
    if kind == "VariableV2":
        files = [str(model.CHECKPOINT_PREFIX), "--graph", str(model.INFERENCE_GRAPH)]
    else:
        files = [str(RESOURCE_PREFIX)]
    return [str(REGISTRY_BIN), "push", name, *files, "--output-nodes", model.OUTPUT_NODE, "--wait", "--url", url]


def timed(command: list[str]) -> float:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=model.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{done.stderr[-2000:]}")
    return elapsed


def saved_model_delay(url: str, name: str, number: int, timeout: float = 60.0) -> float:
    """Seconds from the moment the push came back ready until the SavedModel state reads ready."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        record = requests.get(f"{url}/api/v1/models/{name}/versions/{number}", timeout=10).json()
        if record["saved_model"]["state"] in ("ready", "failed"):
            if record["saved_model"]["state"] == "failed":
                raise RuntimeError(f"the SavedModel failed: {record['saved_model']['message']}")
            return time.perf_counter() - started
        time.sleep(0.02)
    raise RuntimeError("the SavedModel was not ready in time")


def in_process_sha(kind: str, work: Path) -> str:
    files = ({"graph": str(model.INFERENCE_GRAPH), "checkpoint_prefix": str(model.CHECKPOINT_PREFIX)}
             if kind == "VariableV2" else {"meta": f"{RESOURCE_PREFIX}.meta", "checkpoint_prefix": str(RESOURCE_PREFIX)})
    output = work / f"{kind}-in-process.pb"
    convert({"source": "checkpoint+graph" if kind == "VariableV2" else "checkpoint+meta", "files": files,
             "output_nodes": [model.OUTPUT_NODE], "input_nodes": [], "output_path": str(output),
             "verify_tolerance": 1e-5, "verify": False})
    return hashlib.sha256(output.read_bytes()).hexdigest()


def main() -> int:
    model.ensure_model()
    ensure_resource_model()
    ok = True
    with tempfile.TemporaryDirectory(prefix="push-to-ready-") as tmp:
        work = Path(tmp)
        with RegistryServer(work / "home", workers=1, log_path=work / "server.log") as server:
            time.sleep(8)  # the worker starts its warm converter template (TensorFlow imported once)
            print(f"\n{'variables':12} {'checkpoint':>11} {'freeze_graph':>13} {'push --wait':>12} {'ratio':>6} "
                  f"{'SavedModel after ready':>23}  sha256 = in-process converter")
            for kind, prefix in (("VariableV2", model.CHECKPOINT_PREFIX), ("resource", RESOURCE_PREFIX)):
                name = f"bench-{kind.lower()}"
                by_hand, pushes, delays = [], [], []
                for round_ in range(ROUNDS):
                    by_hand.append(freeze_by_hand(kind, work / f"{kind}-{round_}.pb"))
                    pushes.append(timed(push_command(kind, name, server.url)))
                    delays.append(saved_model_delay(server.url, name, round_ + 1))
                record = requests.get(f"{server.url}/api/v1/models/{name}/versions/1", timeout=10).json()
                same = record["frozen"]["sha256"] == in_process_sha(kind, work)
                hand, push = statistics.median(by_hand), statistics.median(pushes)
                ratio = push / hand
                delay = max(delays)
                ok &= ratio <= TARGET_RATIO and delay <= TARGET_SAVED_MODEL_S and same
                print(f"{kind:12} {data_bytes(prefix) / 1e6:9.0f} MB {hand:11.2f} s {push:10.2f} s {ratio:5.2f}x "
                      f"{delay:21.2f} s  {'yes' if same else 'NO'}", flush=True)
    print(f"\ntargets: push --wait <= {TARGET_RATIO}x freeze_graph by hand (medians of {ROUNDS}); SavedModel "
          f"<= {TARGET_SAVED_MODEL_S:g} s after ready (worst); frozen bytes equal the converter's own")
    print("all targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
