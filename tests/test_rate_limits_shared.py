"""Rate limits shared by several server processes through Redis.

Two real `registry serve --gunicorn` servers run on one registry (one SQLite
database, one blob folder).  With REGISTRY_RATELIMIT_STORAGE pointing at a real
Redis server, a client that used its pushes on one server is refused on the
other; with the default in-process counts each server counts on its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.helpers import server_env, start_gunicorn, stop_server

pytestmark = pytest.mark.slow
REDIS_URL = os.environ.get("REGISTRY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_answers() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _start(home: Path, storage: str):
    return start_gunicorn(server_env(home, REGISTRY_RATE_LIMIT_PUSH="2/minute", REGISTRY_RATELIMIT_STORAGE=storage), 1)


def _pushes(servers: list[str], graph: bytes) -> list[int]:
    return [requests.post(f"{url}/api/v1/models/cnn/versions", files={"frozen": ("frozen.pb", graph)},
                          timeout=30).status_code for url in servers]


@pytest.mark.parametrize("storage, third_push", [("redis", 429), ("memory://", 202)])
def test_two_server_processes_share_one_push_limit_only_through_redis(tmp_path, models, storage, third_push):
    if storage == "redis":
        if not _redis_answers():
            pytest.skip(f"no Redis answers at {REDIS_URL}: apt-get install -y redis-server (.ci/run starts it)")
        storage = REDIS_URL
    home = tmp_path / "home"
    subprocess.run([sys.executable, "-m", "registry.cli", "migrate"], check=True, capture_output=True,
                   env={**{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
                        "REGISTRY_HOME": str(home)})
    (first, a), (second, b) = _start(home, storage), _start(home, storage)
    try:
        statuses = _pushes([a, b, b], models["frozen"].frozen_graph.read_bytes())
        assert statuses == [202, 202, third_push], statuses
        if third_push == 429:
            refused = requests.post(f"{a}/api/v1/models/cnn/versions",
                                    files={"frozen": ("frozen.pb", b"\x0a")}, timeout=30)
            assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
            assert "2/minute per client (REGISTRY_RATE_LIMIT_PUSH)" in refused.json()["error"]["message"]
    finally:
        stop_server(first)
        stop_server(second)
