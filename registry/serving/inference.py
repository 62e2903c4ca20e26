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
the frozen bytes of each version to load, and the input arrays of each
request.  For ``:label`` and ``:compare`` those are the uploaded images as
they came: they are decoded here, in label_image.py's preprocessing built into
the version's graph (:mod:`registry.serving.preprocess`), so untrusted image
bytes are decoded only in this sandbox, and a label is one ``Session.run``.  Requests run in threads, concurrently: the
threads take turns reading the connection, and the one that reads a request runs
it, so no request waits for a thread to wake up.  It lets another thread read on
first, unless the request is a short run (a simple graph whose runs of that
feed/fetch set take under a millisecond, :mod:`registry.serving.session`): then
it keeps reading after it, and no other thread wakes (on a 2-core machine those
wake-ups cost more than the run).  Should such a run take longer after all
(a Fill of a size the request chose, say), a watchdog hands the reading on to
another thread after ``HOLD_LIMIT_S``, so requests behind it do not wait for it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict

from registry import cpus, heap, native_logs
from registry.serving import wire

RUN_THREADS = 32  # requests one worker runs at once (the label service batches before sending)
HOLD_LIMIT_S = 0.02  # a short run that takes longer than this lets another thread read on
MAX_PREPROCESSORS = 16  # preprocessing settings kept for op_run_shared
IDLE_WATCH_S = 1.0  # the watchdog sleeps until the next short run after this long without one


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


def _trim(collect: bool = True) -> None:
    """Give freed heap back to the kernel (glibc keeps it otherwise), after collecting garbage (about
    0.2 s with TensorFlow loaded) if ``collect``."""
    if collect:
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
        self.preprocessors: OrderedDict[tuple, tuple] = OrderedDict()  # op_run_shared's, by setting and dtype
        self.lock = threading.Lock()
        self.loading = threading.Lock()  # one load at a time, so that what it costs can be measured

    def reply(self, request: dict, header: dict, buffers=()) -> None:
        self.channel.send(header, buffers, id=request["id"])

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

    def quick(self, request: dict) -> bool:
        """A run of a simple graph whose runs of this feed/fetch set have been short."""
        if request.get("op") != "run":
            return False
        with self.lock:
            session = self.graphs.get(request.get("key"))
        try:
            names = tuple(entry["name"] for entry in request["arrays"])
            return session is not None and session.quick(names, tuple(request["fetch"]))
        except (KeyError, TypeError):
            return False  # malformed: handle() answers why

    def op_load(self, request: dict, buffers: list[bytes]) -> None:
        from registry.serving.session import FrozenSession  # TensorFlow: imported by main() after the limits

        with self.loading:
            before = rss_bytes() - sum(len(b) for b in buffers)  # the received bytes go once it is loaded
            session = FrozenSession(buffers[0], request["tensors"], request["timeout_seconds"])
            del buffers[:]
            _trim(collect=False)  # what a load leaves goes by reference counting
            rss = rss_bytes()
        # What the version costs: the memory it added (the label service's cache counts it by this), at
        # least the weights its variables hold (runs of other graphs meanwhile can make RSS drop).
        memory = max(rss - before, session.weight_bytes)
        with self.lock:
            self.graphs[request["key"]] = session
        self.reply(request, {"ok": True, "tensors": session.tensors, "rss": rss, "memory_bytes": memory})

    def op_unload(self, request: dict, buffers: list[bytes]) -> None:
        with self.lock:
            session = self.graphs.pop(request["key"], None)
        del session  # closed once no run uses it any more (the label service waits for its runs)
        _trim()
        self.reply(request, {"ok": True, "rss": rss_bytes()})

    def op_run(self, request: dict, buffers: list[bytes]) -> None:
        with self.lock:
            session = self.graphs.get(request["key"])
        if session is None:
            self.fail(request, "not_loaded", "the graph is not loaded in this worker")
            return
        feeds = wire.decode_arrays(request["arrays"], buffers)
        del buffers[:]
        outputs = self._guarded(request, lambda: session.run(feeds, request["fetch"]))
        if outputs is not None:
            self._answer(request, outputs)

    def op_run_shared(self, request: dict, buffers: list[bytes]) -> None:
        """Encoded images through label_image.py's preprocessing of one setting, once, then into the image
        input of each target graph: versions compared on a set decode each image once, not once each."""
        targets = request["targets"]
        with self.lock:
            sessions = [self.graphs.get(target["key"]) for target in targets]
        if any(session is None for session in sessions):
            self.fail(request, "not_loaded", "a graph is not loaded in this worker")
            return
        images = wire.decode_arrays(request["arrays"], buffers)["images"]
        del buffers[:]
        height, width, mean, std = request["setting"]
        timeout = float(request.get("timeout_seconds") or 0)

        def run() -> tuple[dict, dict]:
            outputs, runs, decoded, preprocess_s = {}, [], {}, 0.0
            for number, (target, session) in enumerate(zip(targets, sessions)):
                dtype = session.graph.get_tensor_by_name(target["input"]).dtype.base_dtype
                if dtype not in decoded:  # the image input's dtype: cast in the graph, as the fused run does
                    started = time.perf_counter()
                    prep, feed, output = self._preprocessing(height, width, mean, std, dtype, timeout)
                    decoded[dtype] = prep.run({feed: images}, [output])[output]
                    preprocess_s += time.perf_counter() - started
                started = time.perf_counter()
                result = session.run({target["input"]: decoded[dtype]}, target["fetch"])
                runs.append(time.perf_counter() - started)
                outputs.update({f"{number}/{name}": value for name, value in result.items()})
            return outputs, {"preprocess": preprocess_s, "runs": runs}

        answer = self._guarded(request, run)
        if answer is not None:
            self._answer(request, answer[0], {"seconds": answer[1]})

    def _preprocessing(self, height: int, width: int, mean: float, std: float, dtype, timeout: float):
        from registry.serving.session import preprocessing  # TensorFlow: loaded by main() after the limits

        key = (height, width, mean, std, dtype.name)
        with self.lock:
            made = self.preprocessors.get(key)
            if made is not None:
                self.preprocessors.move_to_end(key)
                return made
        made = preprocessing(height, width, mean, std, dtype, timeout)
        with self.lock:
            self.preprocessors[key] = made
            while len(self.preprocessors) > MAX_PREPROCESSORS:
                self.preprocessors.popitem(last=False)
        return made

    def _guarded(self, request: dict, run):
        """``run()``'s result, or None once its failure is answered, as the kind the label service maps."""
        import tensorflow as tf  # already loaded by warm_up(): after the limits main() set

        try:
            return run()
        except tf.errors.DeadlineExceededError as exc:
            self.fail(request, "timeout", _first_line(exc))
        except tf.errors.ResourceExhaustedError as exc:
            self.fail(request, "memory", _first_line(exc))
        except (tf.errors.InvalidArgumentError, ValueError) as exc:
            from registry.serving.preprocess import failed_to_decode  # loaded with the session

            # a label_image input's decoder failed: the image is damaged, not the model's input wrong
            self.fail(request, "invalid_image" if failed_to_decode(exc) else "invalid", _first_line(exc))
        except tf.errors.OpError as exc:
            self.fail(request, "failed", f"{type(exc).__name__}: {_first_line(exc)}")
        return None

    def _answer(self, request: dict, outputs: dict, extra: dict | None = None) -> None:
        size = wire.nbytes(outputs)
        if size > self.max_output_bytes:
            self.reply(request, {"ok": False, "error": "too_large", "message": str(size)})
            return
        described, data = wire.encode_arrays(outputs)
        self.reply(request, {"ok": True, "arrays": described, **(extra or {})}, data)


class Readers:
    """Up to ``RUN_THREADS`` threads that take turns reading requests: the one that reads a request
    handles it, and a thread that is free reads the next (one is started if none is).  After a
    short run, the thread that ran it reads on (see the module's docstring)."""

    def __init__(self, channel: wire.Channel, worker: Worker) -> None:
        self.channel = channel
        self.worker = worker
        self._reading = threading.Lock()  # held by the thread reading (or running a short run)
        self._lock = threading.Lock()
        self._free = 1  # threads between requests (reading, or waiting to read); the first is main's
        self._threads = 1
        self._short: object | None = None  # the short run under way while its thread holds _reading
        self._short_since = 0.0
        self._watch = threading.Condition(self._lock)
        self._watching = False  # the watchdog runs (or sleeps until the next short run)
        self._parked = False

    def serve(self) -> None:
        """Read and handle requests until the label service says exit or goes; then end the process."""
        reading = False  # this thread holds _reading from its last (short) run
        while True:
            if not reading:
                self._reading.acquire()
            try:
                request, buffers = self.channel.recv()
            except (EOFError, wire.ProtocolError):
                os._exit(0)  # the label service is gone or broken: nothing left to do
            except MemoryError:
                os._exit(1)  # a request too large to take in under the limit: the label service answers 503
            if request.get("op") == "exit":
                os._exit(0)
            short = self.worker.quick(request)
            token = object()
            with self._lock:
                self._free -= 1
                more = self._free == 0 and self._threads < RUN_THREADS
                if more:
                    self._free += 1
                    self._threads += 1
                if short:
                    self._short, self._short_since = token, time.monotonic()
                    self._start_watching()
            if not short:
                self._reading.release()
            if more:
                try:
                    threading.Thread(target=self.serve, name="inference", daemon=True).start()
                except RuntimeError:  # no memory for another thread: the ones there are read on
                    with self._lock:
                        self._free -= 1
                        self._threads -= 1
            try:
                self.worker.handle(request, buffers)
            except OSError:
                os._exit(0)  # the answer cannot be sent: the label service is gone
            with self._lock:
                self._free += 1
                reading = short and self._short is token  # not handed on by the watchdog meanwhile
                if reading:
                    self._short = None

    def _start_watching(self) -> None:
        """(With _lock held.)  Make sure the watchdog looks at this short run."""
        if not self._watching:
            self._watching = True
            threading.Thread(target=self._watchdog, name="inference-watchdog", daemon=True).start()
        elif self._parked:
            self._watch.notify()

    def _watchdog(self) -> None:
        """Every ``HOLD_LIMIT_S``: a short run that has held the reading for longer hands it on (the
        lock is released for its thread, which then no longer reads on).  Sleeps while idle."""
        idle_since = time.monotonic()
        while True:
            time.sleep(HOLD_LIMIT_S)
            with self._lock:
                now = time.monotonic()
                overdue = self._short is not None and now - self._short_since > HOLD_LIMIT_S
                if overdue:
                    self._short = None
                if self._short is not None or overdue:
                    idle_since = now
                elif now - idle_since > IDLE_WATCH_S:
                    self._parked = True
                    self._watch.wait_for(lambda: self._short is not None)
                    self._parked = False
                    idle_since = time.monotonic()
            if overdue:
                self._reading.release()


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
    channel = wire.Channel(socket.socket(fileno=config["fd"]), max_bytes=config["max_input_bytes"])
    if config.get("cpus"):  # the label service's threads are on one CPU: TensorFlow's pools get them all
        cpus.release(set(config["cpus"]))

    with native_logs.held_back():  # TensorFlow's native start-up lines, unless REGISTRY_NATIVE_LOGS=1
        from registry.serving.session import warm_up  # TensorFlow loads only now, under the limits above

        warm_up()  # import TensorFlow and create its thread pools before saying ready
    cpus.pin_thread(config.get("cpu"))  # the threads that read requests (and run small graphs) from here on
    heap.own_process()
    heap.freeze_imports()  # full collections skip TensorFlow's objects from now on (registry.heap)
    worker = Worker(channel, config["max_output_bytes"])
    channel.send({"op": "ready", "rss": rss_bytes(), "pid": os.getpid(), "frozen": gc.get_freeze_count()})
    Readers(channel, worker).serve()


if __name__ == "__main__":
    main(sys.argv)
