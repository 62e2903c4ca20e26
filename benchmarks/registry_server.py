"""A real ``registry serve`` subprocess for the benchmarks, on a fresh REGISTRY_HOME."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REGISTRY_BIN = Path(sys.executable).with_name("registry")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    """``registry serve --workers N --no-demo``; stopped with SIGTERM on exit."""

    def __init__(self, home: Path, *, workers: int, log_path: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.home = home
        self.args = args  # more ``registry serve`` options (--grpc-port ...)
        self.env = env or {}
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "RegistryServer":
        env = dict(os.environ, REGISTRY_HOME=str(self.home), **self.env)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(REGISTRY_BIN), "serve", "--port", str(self.port), "--workers", str(self.workers), "--no-demo",
                 *self.args],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self._wait_healthy()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.log_path.read_text()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or still starting (a cold start compiles and imports)
            time.sleep(0.1)
        raise RuntimeError(f"the server did not answer /healthz within {timeout:g} s")

    def stop(self) -> None:
        """SIGTERM (the server shuts down cleanly on it); kill only if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
