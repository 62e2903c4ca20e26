"""A self-check of the converter child's sandbox: what it can and cannot do.

Run as the ``sandbox_probe`` task of ``registry.converter.child``, confined exactly
as a conversion is; tests use it to check the sandbox itself rather than a mock.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time


def probe(request: dict) -> dict:
    """Try what the sandbox should forbid and report what succeeded (tests and diagnostics).

    ``read``: files to read; ``write``: files to create; ``connect``: ``[host, port]``
    to open a TCP connection to; ``udp``: ``[host, port]`` to send a datagram to;
    ``linger``: seconds a process started in a new session should outlive the probe."""
    report: dict = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "read": {}, "write": {},
                    "connect": {}, "udp": {}, "tmpdir": os.environ.get("TMPDIR"), "home": os.environ.get("HOME"),
                    "interfaces": [name for _, name in socket.if_nameindex()],
                    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                    "threads": len(os.listdir("/proc/self/task")),
                    "tensorflow_loaded": "tensorflow" in sys.modules}  # a warm child's fork has it
    with open("/proc/self/status") as f:
        report["cap_eff"] = next(line.split()[1] for line in f if line.startswith("CapEff:"))
    for path in request.get("read", []):
        report["read"][path] = _attempt(lambda: open(path, "rb").close() or "read")
    for path in request.get("write", []):
        report["write"][path] = _attempt(lambda: _create(path))
    for host, port in request.get("connect", []):
        report["connect"][f"{host}:{port}"] = _attempt(
            lambda: socket.create_connection((host, port), timeout=3).close() or "connected")
    for host, port in request.get("udp", []):
        report["udp"][f"{host}:{port}"] = _attempt(lambda: _send_datagram(host, port))
    if request.get("linger"):
        if os.fork() == 0:
            os.setsid()
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGHUP])
            time.sleep(request["linger"])
            os._exit(0)
    return {"ok": True, "probe": report}


def _attempt(action) -> str:
    try:
        return action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc)) if exc.errno else str(exc)


def _create(path: str) -> str:
    with open(path, "x") as f:
        f.write("written by the converter child\n")
    return "written"


def _send_datagram(host: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"from the converter child", (host, port))
    return "sent"
