"""The published OpenAPI document matches the routes and the responses."""

from __future__ import annotations

import re

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.helpers import frozen_form, push

METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH"}


def documented(client) -> dict:
    return client.get("/api/v1/openapi.json").get_json()


def test_every_api_route_is_documented_and_every_documented_route_exists(app, client):
    doc = documented(client)
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            served.update((path, m.lower()) for m in rule.methods & METHODS)
    described = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert served == described


def _validator(doc: dict, name: str):
    """A validator for one of the document's component schemas, resolving its $refs."""
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:api", resource)
    return jsonschema.Draft202012Validator({"$ref": f"urn:api#/components/schemas/{name}"}, registry=registry)


@pytest.fixture
def doc(client):
    return documented(client)


def test_push_answer_matches_the_version_schema(client, models, doc):
    body = push(client, "cnn", frozen_form(models["frozen"].frozen_graph)).get_json()
    _validator(doc, "Version").validate(body)


def test_listings_match_their_schemas(client, models, doc):
    push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
    client.put("/api/v1/models/cnn/aliases/production", json={"version": 1})
    _validator(doc, "ModelList").validate(client.get("/api/v1/models").get_json())
    _validator(doc, "Model").validate(client.get("/api/v1/models/cnn").get_json())
    _validator(doc, "VersionList").validate(client.get("/api/v1/models/cnn/versions").get_json())
    _validator(doc, "Alias").validate(client.put("/api/v1/models/cnn/aliases/staging", json={"version": 1}).get_json())


def test_ready_version_matches_the_version_schema(client, registry, models, doc):
    from registry.jobs.worker import Worker

    push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
    Worker(registry.settings, registry.db, registry.storage).run_once()
    body = client.get("/api/v1/models/cnn/versions/latest").get_json()
    assert body["status"] == "ready"
    _validator(doc, "Version").validate(body)


def test_errors_match_the_error_schema_and_their_status_is_documented(client, doc):
    validator = _validator(doc, "Error")
    cases = [
        (client.get("/api/v1/models/nope"), "/api/v1/models/{name}", "get"),
        (client.get("/api/v1/models?page_size=0"), "/api/v1/models", "get"),
        (client.post("/api/v1/models/x/versions", json={}), "/api/v1/models/{name}/versions", "post"),
    ]
    for response, path, method in cases:
        validator.validate(response.get_json())
        assert str(response.status_code) in doc["paths"][path][method]["responses"]


def test_documented_statuses_cover_what_the_server_answers(client, models, doc):
    paths = doc["paths"]
    assert "202" in paths["/api/v1/models/{name}/versions"]["post"]["responses"]
    assert "206" in paths["/api/v1/models/{name}/versions/{ref}/frozen.pb"]["get"]["responses"]
    assert "409" in paths["/api/v1/models/{name}/versions/{ref}/frozen.pb"]["get"]["responses"]


def test_every_operation_on_a_model_refuses_an_invalid_name_with_a_documented_400(client, doc):
    values = {"name": "not a name!", "ref": "1", "alias": "production", "report_id": "1", "set": "holdout",
              "revision": "1", "index": "0"}
    for path, item in doc["paths"].items():
        if "{name}" not in path:
            continue
        url = re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)
        for method, operation in item.items():
            assert "400" in operation["responses"], f"{method.upper()} {path} does not document its 400"
            answer = client.open(url, method=method.upper(), json={})
            if operation.get("security") == [{"bearer": ["admin"]}]:
                assert answer.status_code == 401, (method, path)  # an admin token comes first
                continue
            assert answer.status_code == 400, (method, path, answer.status_code)
            if method in ("get", "delete"):  # no body to refuse first
                assert answer.get_json()["error"]["code"] == "invalid_model_name", (method, path)


def test_each_operation_declares_the_scope_the_access_rules_require(app, doc):
    from registry.auth.access import RULES

    endpoint_of = {getattr(view, "operation").operation_id: endpoint
                   for endpoint, view in app.view_functions.items() if hasattr(view, "operation")}
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            scope = RULES[endpoint_of[operation["operationId"]]]
            if scope is None:
                assert operation["security"] == [], path
            else:
                assert operation["security"] == [{"bearer": [scope]}], (path, method)
                assert {"401", "403"} <= set(operation["responses"]), (path, method)


def test_token_and_audit_answers_match_their_schemas(client, registry, doc):
    from registry import auth
    from registry.auth.audit import Actor

    _, admin = auth.create_token(registry.db, "admin", "admin", Actor("tests"))
    headers = {"Authorization": f"Bearer {admin}"}
    created = client.post("/api/v1/tokens", json={"name": "ci", "scope": "write"}, headers=headers)
    assert created.status_code == 201
    _validator(doc, "Token").validate(created.get_json())
    _validator(doc, "TokenList").validate(client.get("/api/v1/tokens", headers=headers).get_json())
    _validator(doc, "Token").validate(client.delete("/api/v1/tokens/ci", headers=headers).get_json())
    _validator(doc, "AuditPage").validate(client.get("/api/v1/audit", headers=headers).get_json())
    refused = client.get("/api/v1/audit")
    _validator(doc, "Error").validate(refused.get_json())
    assert str(refused.status_code) in doc["paths"]["/api/v1/audit"]["get"]["responses"]


def test_allowed_ops_answers_match_their_schemas(client, registry, models, doc):
    from registry import auth
    from registry.auth.audit import Actor

    push(client, "cnn", frozen_form(models["frozen"].frozen_graph))
    _, admin = auth.create_token(registry.db, "admin", "admin", Actor("tests"))
    headers = {"Authorization": f"Bearer {admin}"}
    _validator(doc, "AllowedOps").validate(client.get("/api/v1/models/cnn/allowed-ops").get_json())
    changed = client.put("/api/v1/models/cnn/allowed-ops", json={"ops": ["ReadFile"], "reason": "vocabulary"},
                         headers=headers)
    assert changed.status_code == 200
    _validator(doc, "AllowedOps").validate(changed.get_json())
    assert changed.get_json()["last_change"]["actor"] == "admin"
    _validator(doc, "Model").validate(client.get("/api/v1/models/cnn").get_json())
    invalid = client.put("/api/v1/models/cnn/allowed-ops", json={"ops": ["no such op!"], "reason": "x"},
                         headers=headers)
    _validator(doc, "Error").validate(invalid.get_json())
    assert str(invalid.status_code) in doc["paths"]["/api/v1/models/{name}/allowed-ops"]["put"]["responses"]


def test_names_and_enums_in_the_document_are_the_ones_the_code_checks(doc):
    from registry import auth, catalog, safety
    from registry.entities import VERSION_STATUSES

    listing = {p["name"]: p["schema"] for p in doc["paths"]["/api/v1/models/{name}/versions"]["get"]["parameters"]}
    assert listing["name"]["pattern"] == catalog.MODEL_NAME_RE.pattern
    assert listing["status"]["enum"] == list(VERSION_STATUSES)
    assert listing["page_size"]["maximum"] == catalog.MAX_PAGE_SIZE
    alias = {p["name"]: p["schema"] for p in doc["paths"]["/api/v1/models/{name}/aliases/{alias}"]["put"]["parameters"]}
    assert alias["alias"]["pattern"] == catalog.ALIAS_RE.pattern
    schemas = doc["components"]["schemas"]
    assert schemas["TokenRequest"]["properties"]["name"]["pattern"] == auth.TOKEN_NAME_RE.pattern
    assert schemas["TokenRequest"]["properties"]["scope"]["enum"] == list(auth.SCOPES)
    ops = schemas["AllowedOpsRequest"]["properties"]["ops"]
    assert (ops["items"]["pattern"], ops["maxItems"]) == (safety.OP_NAME_RE.pattern, safety.MAX_ALLOWED_OPS)


@pytest.mark.parametrize(("method", "url", "body", "code", "says"), [
    ("put", "/api/v1/models/cnn/aliases/prod", {"version": True}, "invalid_alias_body", '{"version": 3}'),
    ("put", "/api/v1/models/cnn/aliases/prod", {"version": "3x"}, "invalid_alias_body", '{"version": 3}'),
    ("patch", "/api/v1/models/cnn/versions/1", {}, "invalid_version_update", '"preprocessing"'),
    ("patch", "/api/v1/models/cnn/versions/1", {"description": 5}, "invalid_version_update", "must be a string"),
    ("patch", "/api/v1/models/cnn/versions/1", {"preprocessing": 3}, "invalid_preprocessing", "must be an object"),
    ("patch", "/api/v1/models/cnn/versions/1", {"preprocessing": {"input_std": 0}}, "invalid_preprocessing",
     "input_std must not be 0"),
    ("patch", "/api/v1/models/cnn/versions/1", {"preprocessing": {"input_mean": 10**30}}, "invalid_preprocessing",
     "below 2^63"),
    ("put", "/api/v1/models/cnn/serving", {"versions": [0]}, "invalid_served_versions", "non-empty list"),
    ("put", "/api/v1/models/cnn/serving", {"versions": [2**64]}, "invalid_served_versions", "go up to"),
    ("put", "/api/v1/models/cnn/serving", {"versions": [1], "x": 1}, "invalid_served_versions", '"all"'),
    ("get", "/api/v1/models?page_size=ten", None, "invalid_page_size", "whole number, not 'ten'"),
    ("get", "/api/v1/models?page_size=0", None, "invalid_page_size", "between 1 and 1000"),
    ("get", "/api/v1/models/cnn/versions?status=done", None, "invalid_status", "queued, converting, ready, failed"),
    ("get", "/api/v1/models?page_token=%%%", None, "invalid_page_token", "next_page_token"),
])
def test_a_request_the_models_refuse_gets_the_registry_error_and_what_to_fix(client, doc, method, url, body, code,
                                                                             says):
    answer = client.open(url, method=method.upper(), json=body)
    assert answer.status_code == 400
    _validator(doc, "Error").validate(answer.get_json())
    assert answer.get_json()["error"]["code"] == code
    assert says in answer.get_json()["error"]["message"]
