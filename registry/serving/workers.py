"""Supervised inference worker processes: the label service runs every graph in one.

A request can make a graph allocate without bound (a ``Fill`` whose shape comes
from the input, say).  In the label service's own process that would take the
service down; in a worker under an address-space limit
(``REGISTRY_LABEL_MEMORY_MB``) it fails that request.  TensorFlow answers an
allocation the limit refuses with ``ResourceExhausted`` (413), and the worker
goes on; if a worker dies anyway, the requests it was running get 503 and the
supervisor starts another in its place.

``REGISTRY_LABEL_WORKERS`` workers run at once.  Each version is loaded into
one of them (the one holding the least), and stays there until the cache
evicts it.  After an eviction the worker reports its resident memory; one that
holds noticeably more than its graphs should (the allocator keeping freed
memory, fragmentation) is drained and replaced, so ``REGISTRY_LABEL_CACHE_MB``
bounds what the workers really hold, not only the cache's estimate.

Workers are started from one long-lived supervisor thread, because the kernel
kills a worker when the *thread* that started it exits (``PR_SET_PDEATHSIG``).

Somewhat over 400 lines: the supervisor and the handle of each worker (start,
load, run, drain, replace) are one protocol with one set of locks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from registry import cpus
from registry.serving import wire

log = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 256 * 1024 * 1024  # as much as one answer may carry (gRPC's message limit here)
MAX_INPUT_BYTES = 4 * 1024**3  # a frozen graph (a GraphDef stays under 2 GiB) or a request's arrays
START_TIMEOUT_S = 120.0  # how long a request waits for a worker to start
LOAD_TIMEOUT_S = 600.0
RUN_GRACE_S = 30.0  # beyond REGISTRY_LABEL_TIMEOUT_SECONDS before a silent worker is given up on
RECYCLE_SLACK_BYTES = 256 * 1024 * 1024  # resident memory a worker may hold beyond its graphs' estimate
# The worker's whole environment: no database URL, storage credentials or tokens.
WORKER_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS",
              "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL",
              "MALLOC_ARENA_MAX")
# glibc reserves 64 MB of address space per malloc arena, up to 8 per core, and the worker's limit counts
# them: two arenas leave about 300 MB more of REGISTRY_LABEL_MEMORY_MB to graphs and their tensors.
MALLOC_ARENAS = "2"

STARTING, READY, DRAINING, DEAD = "starting", "ready", "draining", "dead"


class WorkerLost(Exception):
    """The worker died (or was stopped) before it answered."""


class WorkerError(Exception):
    """The worker answered with a failure: ``kind`` says which (memory, timeout, invalid, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class NoWorker(Exception):
    """No worker is ready, and none could be started in time."""


class _Call:
    """One request waiting for its answer.  ``wake`` is held while its caller sleeps: released once the
    answer (or the loss) is in, or to make the caller the one that reads the connection next."""

    __slots__ = ("wake", "woken", "done", "header", "buffers", "lost")

    def __init__(self) -> None:
        self.wake = threading.Lock()  # lighter than an Event
        self.wake.acquire()
        self.woken = False  # wake was released and its caller has not taken it back yet
        self.done = False  # answered, or lost with its worker
        self.header: dict = {}
        self.buffers: list = []
        self.lost = False


def _status(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            return f"died with {signal.Signals(-returncode).name}"
        except ValueError:
            return f"died with signal {-returncode}"
    return f"exited with status {returncode}"


class WorkerProcess:
    """One inference worker, seen from the label service: calls to it and what it holds."""

    def __init__(self, pool: "WorkerPool", number: int) -> None:
        self.pool = pool
        self.number = number
        self.state = STARTING
        self.held: dict[object, int] = {}  # loaded graphs and their estimated memory
        self.baseline_rss = 0  # resident memory once started, before any graph
        self.rss = 0
        self.frozen_objects = 0
        self.drain_deadline = 0.0
        self.stopping = False
        self.exit_status = ""
        self._lock = threading.Lock()
        self._pending: dict[int, _Call] = {}
        self._next_id = 0
        self._reading = threading.Lock()  # held by the one thread reading the connection
        self._broken = False  # the connection ended or sent garbage: nothing more is read from it
        ours, theirs = socket.socketpair()
        config = {"fd": theirs.fileno(), "parent": os.getpid(), "memory_mb": pool.memory_mb,
                  "max_output_bytes": MAX_OUTPUT_BYTES, "max_input_bytes": MAX_INPUT_BYTES,
                  # its request threads join ours on one CPU, TensorFlow's pools get them all (registry.cpus)
                  "cpu": cpus.pinned, "cpus": sorted(cpus.original() or ())}
        env = {k: v for k, v in os.environ.items() if k in WORKER_ENV}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENAS)
        env["PYTHONUNBUFFERED"] = "1"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "registry.serving.inference", json.dumps(config)],
                pass_fds=(theirs.fileno(),), env=env, cwd="/", stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            theirs.close()
        self.pid = self.process.pid
        self.channel = wire.Channel(ours, max_bytes=MAX_OUTPUT_BYTES + 1024 * 1024)
        threading.Thread(target=self._watch, name=f"inference-worker-{number}", daemon=True).start()

    def __repr__(self) -> str:
        return f"<inference worker {self.number} pid {self.pid} {self.state}>"

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def held_bytes(self) -> int:
        return sum(self.held.values())

    def call(self, header: dict, buffers: Sequence = (), timeout: float | None = None) -> tuple[dict, list]:
        """Send a request and wait for its answer; WorkerLost if the worker dies first.

        The caller reads the connection itself when no other caller does (leader/follower): the
        answer then wakes the thread that waits for it, not a reader thread that would wake it in
        turn.  A caller that finds another reading sleeps until its answer is handed to it, or
        until it is asked to read on (the reader got its own answer while others still wait).
        """
        call = _Call()
        with self._lock:
            if self.state == DEAD:
                raise WorkerLost(f"worker {self.number} {self.exit_status}")
            self._next_id += 1
            request_id = self._next_id
            self._pending[request_id] = call
        try:
            self.channel.send(header, buffers, id=request_id)
        except (OSError, ValueError) as exc:
            with self._lock:
                self._pending.pop(request_id, None)
            raise WorkerLost(f"worker {self.number} cannot be reached ({exc})") from exc
        deadline = None if timeout is None else time.monotonic() + timeout
        while not call.done:
            if not self._broken and self._reading.acquire(blocking=False):
                try:
                    self._read_until(call, request_id, deadline)
                finally:
                    self._reading.release()
                    self._promote()
                continue
            remaining = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            woke = call.wake.acquire(timeout=remaining)
            with self._lock:
                call.woken = False
                if not woke and not call.done:
                    self._pending.pop(request_id, None)
                    raise TimeoutError(f"worker {self.number} did not answer within {timeout:g} s")
        if call.lost:
            raise WorkerLost(f"worker {self.number} {self.exit_status}")
        return call.header, call.buffers

    def _read_until(self, call: _Call, request_id: int, deadline: float | None) -> None:
        """(Holding ``_reading``.)  Read answers, handing each to its caller, until ``call``'s is in;
        TimeoutError at ``deadline``.  A broken connection kills the worker: its watcher then fails
        every call it had (this one too)."""
        try:
            while not call.done:
                if self._broken:
                    return
                if deadline is not None and not self.channel.readable(deadline - time.monotonic()):
                    with self._lock:
                        if call.done:
                            return
                        self._pending.pop(request_id, None)
                    raise TimeoutError(f"worker {self.number} did not answer within "
                                       f"{deadline - time.monotonic():.0f} s")
                header, buffers = self.channel.recv()
                self._deliver(header, buffers, reader=call)
        except (wire.ProtocolError, MemoryError) as exc:
            log.error("inference worker %d (pid %d) sent a malformed message (%s); stopping it",
                      self.number, self.pid, exc or type(exc).__name__)
            self._broken = True
            self.kill()
        except EOFError:
            self._broken = True
            self.kill()  # it closed the connection: it is going (or broken)

    def _deliver(self, header: dict, buffers: list, reader: _Call | None = None) -> None:
        """Hand an answer to the call waiting for it (one that timed out is dropped)."""
        with self._lock:
            call = self._pending.pop(header.get("id"), None)
            idle = not self._pending
            wake = call is not None and call is not reader and not call.woken
            if call is not None:
                call.header, call.buffers, call.done = header, buffers, True
                call.woken = call.woken or wake
        if wake:
            call.wake.release()
        if idle and self.state == DRAINING:
            self.pool._wake()

    def _promote(self) -> None:
        """The reader is done: wake a caller still waiting, to read on for itself and the others."""
        with self._lock:
            follower = next((c for c in self._pending.values() if not c.woken and not c.done), None)
            if follower is not None:
                follower.woken = True
        if follower is not None:
            follower.wake.release()

    def _watch(self) -> None:
        """The worker's hello, then wait for the process to end (callers read its answers)."""
        started = False
        with self._reading:
            try:
                hello, _ = self.channel.recv()
                if hello.get("op") != "ready":
                    raise wire.ProtocolError(f"worker {self.number} said {hello.get('op')!r} before 'ready'")
                self.baseline_rss = self.rss = int(hello.get("rss", 0))
                self.frozen_objects = int(hello.get("frozen", 0))  # out of full GC passes (registry.heap)
                started = True
            except (wire.ProtocolError, MemoryError, ValueError, TypeError) as exc:
                log.error("inference worker %d (pid %d) sent a malformed message (%s); stopping it",
                          self.number, self.pid, exc or type(exc).__name__)
            except EOFError:
                pass
        if started:
            self.pool._started(self)
        else:
            self.kill()
        self.process.wait()
        self._gone()

    def _gone(self) -> None:
        """The worker process ended: fail what it was running, close the connection."""
        self.exit_status = _status(self.process.returncode)
        with self._lock:
            was = self.state
            self.state = DEAD
            lost, self._pending = list(self._pending.values()), {}
            self._broken = True
            for call in lost:
                call.lost = call.done = True
            wake = [call for call in lost if not call.woken]
            for call in wake:
                call.woken = True
        for call in wake:
            call.wake.release()
        with self._reading:  # a caller reading has seen the end of the connection by now
            self.channel.close()
        self.pool._ended(self, was)

    def stop(self) -> None:
        """Ask the worker to exit (it is killed if the message cannot be sent)."""
        try:
            self.channel.send({"op": "exit"})
        except (OSError, ValueError):
            self.kill()

    def kill(self) -> None:
        if self.process.returncode is None:
            try:
                self.process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass


class WorkerPool:
    """``count`` inference workers, kept running; loads go to the one holding the least."""

    def __init__(self, *, count: int, memory_mb: int, run_timeout: float | None,
                 on_lost: Callable[[WorkerProcess], None] | None = None,
                 stop: threading.Event | None = None) -> None:
        if count < 1:
            raise ValueError(f"REGISTRY_LABEL_WORKERS must be at least 1, not {count}")
        self.count = count
        self.memory_mb = memory_mb
        self.run_timeout = run_timeout  # None: wait as long as the run takes
        self.on_lost = on_lost
        self.workers: list[WorkerProcess] = []
        self.started = 0  # workers started so far, replacements included
        self._cond = threading.Condition()
        self._closed = False
        self._closing = threading.Event()
        self._stop = stop  # the registry's own stop signal, when it has one
        self._failures = 0  # workers in a row that died before they were ready
        self._failure: str | None = None  # why the last one did, until one starts
        self._retry_at = 0.0
        self._supervisor = threading.Thread(target=self._supervise, name="inference-supervisor", daemon=True)
        self._supervisor.start()

    # -- supervision ------------------------------------------------------------------

    def _supervise(self) -> None:
        """Keep ``count`` workers running; stop drained ones.  The only thread that starts workers."""
        while not self.stopping:
            with self._cond:
                live = [w for w in self.workers if w.state in (STARTING, READY)]
                missing = self.count - len(live) if time.monotonic() >= self._retry_at else 0
                finished = [w for w in self.workers if w.state == DRAINING and not w.stopping
                            and (w.pending == 0 or time.monotonic() > w.drain_deadline)]
                for worker in finished:
                    worker.stopping = True
            for worker in finished:
                worker.stop() if worker.pending == 0 else worker.kill()
            for _ in range(max(0, missing)):
                self._start_one()
            with self._cond:
                self._cond.wait(1.0)
        self._shutdown()

    def _start_one(self) -> None:
        with self._cond:
            self.started += 1
            number = self.started
        try:
            worker = WorkerProcess(self, number)
        except OSError as exc:
            self._start_failed(f"cannot start an inference worker: {exc}")
            return
        with self._cond:
            self.workers.append(worker)
        log.info("inference worker %d started (pid %d, %d MB address space)", number, worker.pid, self.memory_mb)

    def _started(self, worker: WorkerProcess) -> None:
        with self._cond:
            if worker.state == STARTING:
                worker.state = READY
            self._failures, self._failure = 0, None
            self._cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self._closing.is_set() or (self._stop is not None and self._stop.is_set())

    def _ended(self, worker: WorkerProcess, was: str) -> None:
        with self._cond:
            if worker in self.workers:
                self.workers.remove(worker)
            self._cond.notify_all()
        if self.stopping:
            return
        if was == STARTING:
            self._start_failed(f"the inference worker {worker.exit_status} before it was ready (with "
                               f"REGISTRY_LABEL_MEMORY_MB={self.memory_mb}: TensorFlow alone needs about 2 GB of "
                               "address space)")
        elif was == READY:
            log.warning("inference worker %d (pid %d) %s; starting another", worker.number, worker.pid,
                        worker.exit_status)
        if worker.held and self.on_lost is not None:
            self.on_lost(worker)

    def _start_failed(self, message: str) -> None:
        log.error("%s", message)
        with self._cond:
            self._failures += 1
            self._failure = message
            self._retry_at = time.monotonic() + min(30.0, 0.5 * 2 ** self._failures)
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def drain(self, worker: WorkerProcess, reason: str, grace: float | None = None) -> None:
        """Stop giving ``worker`` work; once its requests are answered (or after ``grace``), stop it.
        A replacement starts at once."""
        with self._cond:
            if worker.state not in (STARTING, READY):
                return
            worker.state = DRAINING
            worker.drain_deadline = time.monotonic() + (grace if grace is not None else LOAD_TIMEOUT_S)
            self._cond.notify_all()
        log.info("inference worker %d (pid %d) is replaced: %s", worker.number, worker.pid, reason)
        if self.on_lost is not None:
            self.on_lost(worker)

    def _shutdown(self) -> None:
        with self._cond:
            self._closed = True
            workers = list(self.workers)
            self._cond.notify_all()
        for worker in workers:
            worker.stop()
        deadline = time.monotonic() + 5
        for worker in workers:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()

    def close(self) -> None:
        """Stop every worker (and the supervisor)."""
        self._closing.set()
        self._wake()
        self._supervisor.join(timeout=15)

    # -- work -------------------------------------------------------------------------

    def _choose(self) -> WorkerProcess:
        """The ready worker holding the least (waiting for one to start if need be)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        with self._cond:
            failures = self._failures
            while True:
                if self.stopping:
                    raise NoWorker("the label service is stopping")
                ready = [w for w in self.workers if w.state == READY]
                if ready:
                    return min(ready, key=lambda w: (w.held_bytes, w.pending))
                starting = any(w.state == STARTING for w in self.workers)
                if self._failure is not None and (self._failures != failures or not starting):
                    raise NoWorker(self._failure)  # the last start failed, and no other is under way
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoWorker(f"no inference worker started within {START_TIMEOUT_S:g} s")
                self._cond.wait(min(remaining, 1.0))

    def load(self, key: object, frozen: bytes, tensors: list[str], *,
             timeout_seconds: float, estimate: int) -> tuple[WorkerProcess, dict]:
        """Load a frozen graph into a worker: the worker, and the dtype and shape of ``tensors``."""
        worker = self._choose()
        request = {"op": "load", "key": str(key), "tensors": tensors, "timeout_seconds": timeout_seconds}
        try:
            header, _ = worker.call(request, [frozen], timeout=LOAD_TIMEOUT_S)
        except TimeoutError as exc:
            self.drain(worker, f"a load did not finish within {LOAD_TIMEOUT_S:g} s", grace=0)
            raise WorkerLost(str(exc)) from exc
        if not header.get("ok"):
            raise WorkerError(header.get("error", "failed"), header.get("message", ""))
        with self._cond:
            worker.held[key] = int(header.get("memory_bytes") or estimate)  # measured by the worker
            worker.rss = int(header.get("rss", 0))
        return worker, header

    def run(self, worker: WorkerProcess, key: object, feeds: dict[str, np.ndarray],
            fetch: Sequence[str]) -> list[np.ndarray]:
        described, buffers = wire.encode_arrays(feeds)
        request = {"op": "run", "key": str(key), "fetch": list(fetch), "arrays": described}
        _, arrays = self._run(worker, request, buffers)
        return _outputs(worker, arrays, list(fetch))

    def run_shared(self, worker: WorkerProcess, setting: tuple[int, int, float, float], images: np.ndarray,
                   targets: Sequence[tuple[object, str, Sequence[str]]]) -> tuple[list[list[np.ndarray]], dict]:
        """Encoded ``images`` decoded once, with label_image.py's preprocessing of ``setting`` (height,
        width, mean, std), and fed to each target's image input, all in ``worker``: each target's fetched
        outputs, and the seconds the worker took ({"preprocess": s, "runs": [s, ...]})."""
        described, buffers = wire.encode_arrays({"images": images})
        request = {"op": "run_shared", "setting": list(setting), "arrays": described,
                   "timeout_seconds": self.run_timeout or 0,
                   "targets": [{"key": str(key), "input": name, "fetch": list(fetch)} for key, name, fetch in targets]}
        header, arrays = self._run(worker, request, buffers, runs=len(targets))
        outputs = [_outputs(worker, arrays, [f"{number}/{name}" for name in fetch])
                   for number, (_, _, fetch) in enumerate(targets)]
        return outputs, header.get("seconds") or {}

    def _run(self, worker: WorkerProcess, request: dict, buffers: list, runs: int = 1) -> tuple[dict, dict]:
        """A run request's answer: its header and arrays by name (WorkerError for a failure it reports)."""
        timeout = None if self.run_timeout is None else runs * self.run_timeout + RUN_GRACE_S
        try:
            header, data = worker.call(request, buffers, timeout=timeout)
        except TimeoutError as exc:
            # TensorFlow did not stop the run at its deadline: the worker is stuck in an op.
            self.drain(worker, f"a run did not stop {RUN_GRACE_S:g} s past its deadline", grace=0)
            raise WorkerError("timeout", str(exc)) from exc
        if not header.get("ok"):
            raise WorkerError(header.get("error", "failed"), header.get("message", ""))
        try:
            return header, wire.decode_arrays(header.get("arrays", []), data)
        except wire.ProtocolError as exc:
            worker.kill()
            raise WorkerLost(f"worker {worker.number} answered with malformed outputs ({exc})") from exc

    def unload(self, worker: WorkerProcess, key: object) -> None:
        """Drop a graph from its worker; replace the worker if it still holds too much memory."""
        with self._cond:
            if worker.held.pop(key, None) is None or worker.state != READY:
                return
        try:
            header, _ = worker.call({"op": "unload", "key": str(key)}, timeout=LOAD_TIMEOUT_S)
        except (WorkerLost, TimeoutError):
            return
        with self._cond:
            worker.rss = int(header.get("rss", 0))
            allowed = worker.baseline_rss + worker.held_bytes + RECYCLE_SLACK_BYTES
        if worker.rss > allowed:
            self.drain(worker, f"it holds {worker.rss >> 20} MB resident after an eviction, more than its "
                               f"graphs need ({allowed >> 20} MB)")

    def rss_bytes(self) -> dict[int, int]:
        """Each live worker's pid and last reported resident memory."""
        with self._cond:
            return {w.pid: w.rss for w in self.workers if w.state != DEAD}


def _outputs(worker: WorkerProcess, arrays: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    try:
        return [arrays[name] for name in names]
    except KeyError as exc:
        worker.kill()
        raise WorkerLost(f"worker {worker.number} answered without output {exc}") from exc
