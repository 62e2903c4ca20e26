"""Runs one conversion in a child process with resource limits.

The parent never imports TensorFlow.  The child gets an address-space limit
(``REGISTRY_CONVERT_MEMORY_MB``), a CPU-time limit, a file-size limit and a
wall-clock timeout; whatever it does, the parent gets back an
:class:`Outcome` it can record.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_OUTPUT_MB = 3072  # a GraphDef cannot exceed 2 GiB anyway
CHILD_ENV = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS",
             "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS"}


@dataclass
class Outcome:
    ok: bool
    message: str
    code: str = ""
    retryable: bool = False
    result: dict | None = None
    lost_lease: bool = False


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this child when its parent dies (Linux), so that a
    worker killed mid-conversion does not leave the conversion running on its own."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


def apply_limits(limits: dict) -> None:
    """Called by the converter child itself, first thing, before it reads any upload.

    The limits are not set between fork and exec (``preexec_fn``): running Python
    there is unsafe in a parent with threads (the embedded workers share their
    process with gRPC and TensorFlow threads, and a forked copy of those could
    crash the child before it ever ran), while without ``preexec_fn`` the child
    is started by vfork + exec with no Python code in between.
    """
    _die_with(limits["parent"])
    memory = limits["memory_mb"] * 1024 * 1024
    largest = limits["max_output_mb"] * 1024 * 1024
    cpu_seconds = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest, largest))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    noise = ("cuda", "cuInit", "oneDNN", "cpu_feature_guard", "rebuild TensorFlow", "MLIR", "absl::InitializeLog")
    kept = [line for line in text.splitlines() if line.strip() and not any(n in line for n in noise)]
    return "\n".join(kept[-lines:])


def run_conversion(
    request: dict,
    workdir: Path,
    *,
    timeout: float,
    memory_mb: int,
    max_output_mb: int = MAX_OUTPUT_MB,
    heartbeat: Callable[[], bool] | None = None,
    heartbeat_every: float = 10.0,
) -> Outcome:
    """Run ``registry.converter.child`` on ``request``; wait, renewing the lease."""
    cpu_seconds = int(timeout * max(1, os.cpu_count() or 1)) + 10
    limits = {"memory_mb": memory_mb, "cpu_seconds": cpu_seconds, "max_output_mb": max_output_mb,
              "parent": os.getpid()}
    request = dict(request, result_path=str(workdir / "result.json"), limits=limits)
    request_path = workdir / "request.json"
    request_path.write_text(json.dumps(request))
    log_path = workdir / "converter.log"
    # The child runs untrusted graphs: it gets no database URL, credentials or tokens.
    env = {k: v for k, v in os.environ.items() if k in CHILD_ENV}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "registry.converter.child", str(request_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir, env=env,
            start_new_session=True,
        )
        started = last_beat = time.monotonic()
        while True:
            try:
                child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - started > timeout:
                _kill(child)
                return Outcome(False, f"conversion took longer than {timeout:g} s and was stopped "
                               "(REGISTRY_CONVERT_TIMEOUT_SECONDS)", code="conversion_timeout")
            if heartbeat is not None and now - last_beat >= heartbeat_every:
                last_beat = now
                if not heartbeat():
                    _kill(child)
                    return Outcome(False, "lost the job's lease", lost_lease=True, retryable=True)

    result_path = Path(request["result_path"])
    tail = _log_tail(log_path)
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if result.get("ok"):
            return Outcome(True, "", result=result)
        error = result["error"]
        if error["code"] == "out_of_memory":
            return Outcome(False, _memory_message(memory_mb), code="out_of_memory")
        if error["code"] == "output_too_large":
            return Outcome(False, _size_message(max_output_mb), code="output_too_large")
        return Outcome(False, error["message"], code=error["code"], retryable=bool(result.get("unexpected")))
    if _looks_like_memory_failure(child.returncode, tail):
        return Outcome(False, _memory_message(memory_mb), code="out_of_memory")
    if child.returncode in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS):
        # Under an address-space limit TensorFlow dies this way when an allocation fails;
        # the same input would fail the same way again, so it is not retried.
        name = signal.Signals(-child.returncode).name
        return Outcome(False, f"the converter died with {name}; under the {memory_mb} MB address-space limit "
                       "(REGISTRY_CONVERT_MEMORY_MB) this usually means it ran out of memory: raise the limit "
                       "for graphs this large", code="out_of_memory")
    if child.returncode in (-signal.SIGXCPU, -signal.SIGKILL) and time.monotonic() - started > timeout * 0.9:
        return Outcome(False, f"conversion used more than its CPU time limit ({cpu_seconds} s)", code="conversion_timeout")
    if child.returncode == -signal.SIGXFSZ:
        return Outcome(False, _size_message(max_output_mb), code="output_too_large")
    detail = f" ({tail.splitlines()[-1]})" if tail else ""
    return Outcome(False, f"the converter process crashed with exit status {child.returncode}{detail}",
                   code="converter_crashed", retryable=True)


def _looks_like_memory_failure(returncode: int, tail: str) -> bool:
    markers = ("bad_alloc", "MemoryError", "Cannot allocate memory", "OOM", "out of memory", "ResourceExhausted")
    return returncode != 0 and any(m in tail for m in markers)


def _memory_message(memory_mb: int) -> str:
    return (f"conversion ran out of memory (limit {memory_mb} MB, REGISTRY_CONVERT_MEMORY_MB); "
            "the graph or checkpoint is too large for this worker")


def _size_message(max_output_mb: int) -> str:
    return (f"the converter tried to write a file larger than its file-size limit ({max_output_mb} MB, "
            "REGISTRY_CONVERT_MAX_OUTPUT_MB) and was stopped: raise the limit for graphs this large")


def _kill(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()
