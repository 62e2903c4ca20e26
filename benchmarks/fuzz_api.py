"""Fuzz the API for longer than the test suite does: schemathesis generates valid
and invalid requests for every operation of /api/v1/openapi.json and sends them
to a real `registry serve`.  Target: no 5xx and every answer as documented
(status, content type, headers, schema) over at least 1,000 requests.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fuzz_api.py [--examples 100]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from registry_server import REGISTRY_BIN, RegistryServer  # noqa: E402

# A GraphDef with one Placeholder node, written by hand: enough for the upload checks.
NODE = b"\x0a\x01x\x12\x0bPlaceholder"
TINY_GRAPH = b"\x0a" + bytes([len(NODE)]) + NODE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="examples per operation (13 operations)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        # Tokens enforced for reads and writes, as outside the embedded default.
        env = {"REGISTRY_AUTH": "on", "REGISTRY_PUBLIC_READ": "0"}
        with RegistryServer(home / "home", workers=0, log_path=home / "server.log", env=env) as server:
            created = subprocess.run([str(REGISTRY_BIN), "token", "create", "--scope", "admin", "--name", "fuzz"],
                                     env=dict(os.environ, REGISTRY_HOME=str(home / "home"), **env),
                                     capture_output=True, text=True, check=True)
            admin = {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}
            for _ in range(2):
                requests.post(f"{server.url}/api/v1/models/cnn/versions", headers=admin,
                              files={"frozen": ("g.pb", TINY_GRAPH)}, timeout=30).raise_for_status()
            requests.put(f"{server.url}/api/v1/models/cnn/aliases/production", json={"version": 1},
                         headers=admin, timeout=30)
            schema = schemathesis.openapi.from_url(f"{server.url}/api/v1/openapi.json", headers=admin)

            @schema.auth()
            class AdminToken:
                def get(self, case, context):
                    return admin["Authorization"]

                def set(self, case, data, context):
                    case.headers = {**(case.headers or {}), "Authorization": data}

            statuses: collections.Counter = collections.Counter()
            failures: list[str] = []
            started = time.monotonic()
            for result in schema.get_all_operations():
                operation = result.ok()
                cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                                  operation.as_strategy(GenerationMode.NEGATIVE))

                @given(case=cases)
                @settings(max_examples=args.examples, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                def fuzz(case):
                    response = case.call(base_url=server.url, timeout=30)
                    statuses[response.status_code] += 1
                    case.validate_response(response, excluded_checks=[positive_data_acceptance])

                try:
                    fuzz()
                except (Exception, BaseExceptionGroup) as exc:  # a failure: report it, go on with the next
                    failures.append(f"{operation.label}: {exc}")
                print(f"{operation.label:60s} done", flush=True)
            elapsed = time.monotonic() - started
    total = sum(statuses.values())
    print(f"\n{total} requests in {elapsed:.1f} s; statuses: "
          + ", ".join(f"{code}: {count}" for code, count in sorted(statuses.items())))
    fivexx = sum(count for code, count in statuses.items() if code >= 500)
    print(f"5xx answers: {fivexx}; operations with failures: {len(failures)}")
    for failure in failures:
        print(f"FAILED {failure[:2000]}")
    ok = not failures and fivexx == 0 and total >= 1000
    print("target met" if ok else "TARGET MISSED (needs >= 1,000 requests, no 5xx, no failures)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
