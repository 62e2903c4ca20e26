"""An inference worker: a process that runs frozen graphs for the label service.

Started by :mod:`registry.serving.workers` with ``python -m
registry.serving.inference CONFIG``.  First thing, before TensorFlow is
imported, it arranges to die with its parent and sets its address-space limit
(``REGISTRY_LABEL_MEMORY_MB``), so a request that makes a graph allocate
without bound fails here, never in the label service: TensorFlow answers an
allocation the limit refuses with ``ResourceExhausted`` (answered 413), and if
the process dies instead, the label service answers 503 and starts another.

It gets no credentials (its environment is a short allowlist) and reads
nothing from the registry's database or storage: the label service sends it
the frozen bytes of each version to load, and the (already preprocessed)
input arrays of each request.  Requests run in threads, concurrently.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import signal
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from registry.serving import wire

RUN_THREADS = 32  # requests one worker runs at once (the label service batches before sending)


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this process when the label service's supervisor thread dies."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


def rss_bytes() -> int:
    """This process's resident memory (VmRSS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _trim() -> None:
    """Give freed heap back to the kernel (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Worker:
    def __init__(self, channel: wire.Channel, max_output_bytes: int) -> None:
        self.channel = channel
        self.max_output_bytes = max_output_bytes
        self.graphs: dict[str, object] = {}
        self.lock = threading.Lock()

    def reply(self, request: dict, header: dict, buffers=()) -> None:
        self.channel.send(dict(header, id=request["id"]), buffers)

    def fail(self, request: dict, kind: str, message: str) -> None:
        self.reply(request, {"ok": False, "error": kind, "message": message})

    def handle(self, request: dict, buffers: list[bytes]) -> None:
        try:
            getattr(self, "op_" + request["op"])(request, buffers)
        except MemoryError:
            self.fail(request, "memory", "the worker ran out of memory")
        except Exception as exc:  # noqa: BLE001 - every failure is answered, the worker goes on
            if type(exc).__name__ == "ResourceExhaustedError":  # loading a graph too large for the limit
                self.fail(request, "memory", _first_line(exc))
                return
            traceback.print_exc()
            self.fail(request, "failed", f"{type(exc).__name__}: {_first_line(exc)}")

    def op_load(self, request: dict, buffers: list[bytes]) -> None:
        from registry.serving.session import FrozenSession  # TensorFlow: imported by main() after the limits

        session = FrozenSession(buffers[0], request["tensors"], request["timeout_seconds"])
        del buffers[:]
        with self.lock:
            self.graphs[request["key"]] = session
        self.reply(request, {"ok": True, "tensors": session.tensors, "rss": rss_bytes()})

    def op_unload(self, request: dict, buffers: list[bytes]) -> None:
        with self.lock:
            session = self.graphs.pop(request["key"], None)
        del session  # closed once no run uses it any more (the label service waits for its runs)
        _trim()
        self.reply(request, {"ok": True, "rss": rss_bytes()})

    def op_run(self, request: dict, buffers: list[bytes]) -> None:
        import tensorflow as tf  # already loaded by warm_up(): after the limits main() set

        with self.lock:
            session = self.graphs.get(request["key"])
        if session is None:
            self.fail(request, "not_loaded", "the graph is not loaded in this worker")
            return
        feeds = wire.decode_arrays(request["arrays"], buffers)
        del buffers[:]
        try:
            outputs = session.run(feeds, request["fetch"])
        except tf.errors.DeadlineExceededError as exc:
            self.fail(request, "timeout", _first_line(exc))
            return
        except tf.errors.ResourceExhaustedError as exc:
            self.fail(request, "memory", _first_line(exc))
            return
        except (tf.errors.InvalidArgumentError, ValueError) as exc:
            self.fail(request, "invalid", _first_line(exc))
            return
        except tf.errors.OpError as exc:
            self.fail(request, "failed", f"{type(exc).__name__}: {_first_line(exc)}")
            return
        size = wire.nbytes(outputs)
        if size > self.max_output_bytes:
            self.reply(request, {"ok": False, "error": "too_large", "message": str(size)})
            return
        described, data = wire.encode_arrays(outputs)
        self.reply(request, {"ok": True, "arrays": described}, data)


def _first_line(exc: Exception) -> str:
    """What went wrong, in a line: TensorFlow's graph errors put it after the traceback of where the
    node was defined (``Node: 'name'`` then the message)."""
    message = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("Node: "):
            return f"{lines[i + 1]} (node {line[6:].strip()})"
    return lines[0] if lines else type(exc).__name__


def main(argv: list[str]) -> None:
    config = json.loads(argv[1])
    _die_with(config["parent"])
    memory = config["memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the label service decides when this stops
    channel = wire.Channel(Connection(config["fd"]), max_bytes=config["max_input_bytes"])

    from registry.serving.session import warm_up  # TensorFlow loads only now, under the limits above

    warm_up()  # import TensorFlow and create its thread pools before saying ready
    worker = Worker(channel, config["max_output_bytes"])
    channel.send({"op": "ready", "rss": rss_bytes(), "pid": os.getpid()})
    pool = ThreadPoolExecutor(RUN_THREADS, thread_name_prefix="inference")
    while True:
        try:
            request, buffers = channel.recv()
        except (EOFError, wire.ProtocolError):
            break  # the label service is gone or broken: nothing left to do
        if request.get("op") == "exit":
            break
        pool.submit(worker.handle, request, buffers)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
