"""Runs one conversion in a child process with resource limits and least privilege.

The parent never imports TensorFlow.  The child gets an address-space limit
(``REGISTRY_CONVERT_MEMORY_MB``), a CPU-time limit, a file-size limit and a
wall-clock timeout, an environment without credentials, and the sandbox of
``registry.converter.sandbox`` (its own user, namespaces and Landlock, where
the machine allows them); whatever it does, the parent gets back an
:class:`Outcome` it can record.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry import cpus
from registry.converter import sandbox, warm
from registry.storage import open_regular

log = logging.getLogger(__name__)
MAX_OUTPUT_MB = 3072  # a GraphDef cannot exceed 2 GiB anyway
MAX_RESULT_BYTES = 64 * 1024 * 1024
DEFAULT_USER = "nobody"
CHILD_ENV = {"PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS",
             "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS",
             cpus.ORIGINAL_ENV}  # a serving process keeps its threads on one CPU; a conversion gets them all
_reported: set[str] = set()


@dataclass
class Outcome:
    ok: bool
    message: str
    code: str = ""
    retryable: bool = False
    result: dict | None = None
    lost_lease: bool = False


def apply_limits(limits: dict) -> dict | None:
    """Called by the converter child itself, first thing, before it reads any upload;
    returns what its sandbox enforces (``sandbox.enter``).

    Neither the limits nor the sandbox are set between fork and exec
    (``preexec_fn``): running Python there is unsafe in a parent with threads (the
    embedded workers share their process with gRPC and TensorFlow threads, and a
    forked copy of those could crash the child before it ever ran), while without
    ``preexec_fn`` the child is started by vfork + exec with no Python code in between.
    """
    sandbox.die_with_parent(limits["parent"])
    memory = limits["memory_mb"] * 1024 * 1024
    largest = limits["max_output_mb"] * 1024 * 1024
    cpu_seconds = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest, largest))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if "sandbox" in limits and sys.platform.startswith("linux"):
        return sandbox.enter(limits["sandbox"], limits["parent"])
    return None


def child_identity(user: str) -> tuple[int, int] | None:
    """The (uid, gid) a converter child drops to (``REGISTRY_CONVERT_USER``: a user name,
    ``uid`` or ``uid:gid``), or None when it keeps the registry's own user: the registry
    does not run as root, or the setting says ``root``."""
    if os.geteuid() != 0:
        return None
    user = user.strip() or DEFAULT_USER
    try:
        if ":" in user:
            uid, gid = (int(part) for part in user.split(":", 1))
        elif user.isdigit():
            uid = int(user)
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = uid
        else:
            entry = pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
    except (KeyError, ValueError):
        raise ValueError(f"REGISTRY_CONVERT_USER={user!r} names no user of this machine: give an existing "
                         "user name, a numeric uid or uid:gid (a dedicated user is best), or root to "
                         "keep the converter as root (not recommended)") from None
    return None if uid == 0 else (uid, gid)


def _hand_over(workdir: Path, ids: tuple[int, int] | None) -> None:
    """Make the work directory the child's own.  Inputs materialised as symlinks into
    the blob store become copies (the child sees nothing outside its work directory,
    and blobs are readable by the registry's user only); with ``ids`` everything in
    it is given to the child's user."""
    top = os.path.realpath(workdir)
    for folder, dirs, files in os.walk(workdir):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path) and os.path.commonpath([os.path.realpath(path), top]) != top:
                _copy_in(path)
            if ids is not None:
                os.lchown(path, *ids)
    if ids is not None:
        os.chown(workdir, *ids)


def _copy_in(link: str) -> None:
    target = os.path.realpath(link)
    copy = f"{link}.copying"
    if os.path.isdir(target):
        shutil.copytree(target, copy)
    else:
        with open(target, "rb") as source, open(copy, "xb") as dest:
            try:  # in the kernel; a reflink where the file system has them (XFS, btrfs)
                while os.copy_file_range(source.fileno(), dest.fileno(), 1 << 30):
                    pass
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                source.seek(0)
                dest.seek(0)
                dest.truncate()
                shutil.copyfileobj(source, dest, 1 << 20)
    os.unlink(link)
    os.rename(copy, link)


def _report(info: dict | None) -> None:
    """Log, once per process, what confines the converter child, and each protection it had to go without."""
    if info and "summary" not in _reported:
        _reported.add("summary")
        log.info("converter sandbox: user %s; file system: %s; network: %s; Landlock: %s", info.get("user"),
                 info.get("filesystem"), info.get("network"), info.get("landlock"))
    for gap in (info or {}).get("gaps", []):
        if gap not in _reported:
            _reported.add(gap)
            log.warning("converter sandbox: %s", gap)


def _log_tail(log_file: BinaryIO, lines: int = 15) -> str:
    """The end of the child's output, read through the parent's own handle (the child
    may have replaced the file) and bounded (it may have written gigabytes)."""
    try:
        size = os.fstat(log_file.fileno()).st_size
        log_file.seek(max(0, size - 64 * 1024))
        text = log_file.read().decode(errors="replace")
    except OSError:
        return ""
    noise = ("cuda", "cuInit", "oneDNN", "cpu_feature_guard", "rebuild TensorFlow", "MLIR", "absl::InitializeLog")
    kept = [line for line in text.splitlines() if line.strip() and not any(n in line for n in noise)]
    return "\n".join(kept[-lines:])


def _read_result(path: Path) -> dict | None:
    """result.json as the child left it; None if it left none."""
    try:
        with open_regular(path) as f:
            raw = f.read(MAX_RESULT_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(raw) > MAX_RESULT_BYTES:
        raise ValueError(f"larger than {MAX_RESULT_BYTES} bytes")
    result = json.loads(raw)
    if not isinstance(result, dict) or not isinstance(result.get("ok"), bool):
        raise ValueError("not a result record")
    return result


def _child_env(home: str) -> dict[str, str]:
    """The child runs untrusted graphs: it gets no database URL, credentials or tokens,
    and its home and temporary folder are its work directory."""
    env = {k: v for k, v in os.environ.items() if k in CHILD_ENV}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", HOME=home, TMPDIR=home,
               JOBLIB_MULTIPROCESSING="0")  # it would only warn that /dev/shm is read-only
    return env


def warm_up() -> None:
    """Start this thread's warm converter template unless it has one (``REGISTRY_CONVERT_WARM``,
    see ``registry.converter.warm``): an idle worker then costs one waiting Python with TensorFlow
    loaded, about 730 MB resident (1.6 GB of address space) here."""
    warm.warm_up(_child_env(warm.HOME))


def run_conversion(
    request: dict,
    workdir: Path,
    *,
    timeout: float,
    memory_mb: int,
    max_output_mb: int = MAX_OUTPUT_MB,
    user: str = DEFAULT_USER,
    heartbeat: Callable[[], bool] | None = None,
    heartbeat_every: float = 10.0,
    warm_start: bool = False,
) -> Outcome:
    """Run ``registry.converter.child`` on ``request``; wait, renewing the lease.

    ``user`` is ``REGISTRY_CONVERT_USER``: the user the child drops to when the
    registry runs as root (see :func:`child_identity`).  With ``warm_start``, this thread's
    template forks the process for the request (a cold child runs it when it cannot)."""
    cpu_seconds = int(timeout * max(1, os.cpu_count() or 1)) + 10
    ids = child_identity(user)
    _hand_over(workdir, ids)
    box = {"workdir": os.path.realpath(workdir), "uid": ids[0] if ids else None, "gid": ids[1] if ids else None,
           "user": user.strip() or DEFAULT_USER}
    limits = {"memory_mb": memory_mb, "cpu_seconds": cpu_seconds, "max_output_mb": max_output_mb,
              "parent": os.getpid(), "sandbox": box}
    request = dict(request, result_path=str(workdir / "result.json"), limits=limits)
    request_path = workdir / "request.json"
    request_path.write_text(json.dumps(request))
    with open(workdir / "converter.log", "w+b") as log_file:
        child: subprocess.Popen | warm.ForkedJob | None = None
        if warm_start:
            try:
                child = warm.start(request_path, memory_mb, _child_env(warm.HOME), heartbeat=heartbeat,
                                   heartbeat_every=heartbeat_every)
            except warm.LeaseLost as exc:
                return Outcome(False, str(exc), lost_lease=True, retryable=True)
        if child is None:  # -P: the work directory (the current one) is not put on the import path
            child = subprocess.Popen(
                [sys.executable, "-P", "-m", "registry.converter.child", str(request_path)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
                env=_child_env(box["workdir"]), start_new_session=True,
            )
        started = last_beat = time.monotonic()
        while True:
            try:
                child.wait(timeout=max(0.001, min(0.2, started + timeout - time.monotonic())))
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
        _kill(child)  # whatever it left running in its process group
        tail = _log_tail(log_file)

    try:
        result = _read_result(Path(request["result_path"]))
    except (OSError, ValueError) as exc:
        return Outcome(False, f"the converter left an unreadable result ({exc})", code="converter_crashed")
    if result is not None:
        _report(result.get("sandbox"))
        if result.get("ok"):
            return Outcome(True, "", result=result)
        error = result.get("error") or {}
        if error.get("code") == "out_of_memory":
            return Outcome(False, _memory_message(memory_mb), code="out_of_memory")
        if error.get("code") == "output_too_large":
            return Outcome(False, _size_message(max_output_mb), code="output_too_large")
        return Outcome(False, str(error.get("message")), code=str(error.get("code")),
                       retryable=bool(result.get("unexpected")))
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


def _kill(child: subprocess.Popen | warm.ForkedJob) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()
