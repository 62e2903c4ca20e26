"""Schemathesis drives the live API from its own OpenAPI document: random and
edge-case paths, queries and bodies for every operation, valid and invalid.
No answer may be a 5xx, and every answer must match the documented status
codes, content types, headers and schemas.  The server enforces tokens as it
does outside the embedded default; requests carry an admin token, and
schemathesis also checks that each operation refuses a request without one.
(benchmarks/fuzz_api.py runs the same for longer.)"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (test extras)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from registry.api import api_document  # noqa: E402
from tests.conftest import make_settings, start_live_server  # noqa: E402
from tests.helpers import bearer, frozen_form, issue_tokens, push  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = 16  # per operation, 22 operations: about 350 requests, the same ones every run (derandomized);
# benchmarks/fuzz_api.py explores at random, for longer
SCHEMA = schemathesis.openapi.from_dict(api_document())
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}
TOKENS: dict[str, str] = {}


@SCHEMA.auth()
class AdminToken:
    """Every generated request that is meant to be authenticated carries the admin token."""

    def get(self, case, context):
        return TOKENS["admin"]

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), **bearer(data)}


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory, models):
    settings = make_settings(tmp_path_factory.mktemp("fuzz"), embedded=False, public_read=False)
    server, stop = start_live_server(settings, workers=False)
    TOKENS.update(issue_tokens(server.registry.db))
    client = server.app.test_client()
    admin = bearer(TOKENS["admin"])
    push(client, "cnn", frozen_form(models["frozen"].frozen_graph), headers=admin)  # something to find, alias, delete
    client.put("/api/v1/models/cnn/aliases/production", json={"version": 1}, headers=admin)
    yield server
    stop()


def cases(operation):
    return st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api_answers_every_request_as_documented(fuzzed_server, label):
    operation = OPERATIONS[label]

    @given(case=cases(operation))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        # Every check but "schema-valid requests are accepted": page tokens and uploaded
        # files are opaque strings to a schema, and the server rightly refuses most of them.
        case.call_and_validate(base_url=fuzzed_server.url, timeout=30, excluded_checks=[positive_data_acceptance])

    fuzz()
