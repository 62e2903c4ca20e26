"""Tags and search (issue 17, items 1 and 2) on SQLite and PostgreSQL: the filter grammar as a table
of expressions and the versions they find, a malformed filter pointing at its column, keyset pages,
results that carry their aliases and tags, and tag writes that are validated and audited."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from registry import catalog
from registry.auth.audit import Actor
from registry.catalog.tags import set_tags
from registry.errors import InvalidRequest
from registry.models import ModelVersion, RegisteredModel
from registry.search.grammar import FilterError, parse
from registry.search.query import search_models, search_versions
from tests.conftest import BOTH_DATABASES
from tests.helpers import frozen_form, push

pytestmark = BOTH_DATABASES
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)

# (model, version, status, source, days after T0, version tags)
VERSIONS = [
    ("inception", 1, "ready", "checkpoint+meta", 0, {"team": "vision", "stage": "dev"}),
    ("inception", 2, "failed", "checkpoint+graph", 1, {"team": "vision"}),
    ("inception", 3, "ready", "frozen", 2, {"team": "vision", "stage": "prod", "note": "it's 'quoted'"}),
    ("resnet", 1, "ready", "frozen", 3, {"team": "Vision"}),
    ("resnet", 2, "queued", "keras", 4, {}),
    ("bert", 1, "ready", "saved_model", 5, {"team": "nlp", "stage": "prod"}),
]


@pytest.fixture
def seeded(client, registry, models):
    frozen = models["frozen"].frozen_graph
    for name, number, *_ in VERSIONS:
        assert push(client, name, frozen_form(frozen)).get_json()["version"] == number
    with registry.db.transaction() as session:
        for name, number, status, source, days, _ in VERSIONS:
            model_id = session.scalar(sa.select(RegisteredModel.id).where(RegisteredModel.name == name))
            session.execute(sa.update(ModelVersion).where(ModelVersion.model_id == model_id,
                                                          ModelVersion.version == number)
                            .values(status=status, source=source, created_at=T0 + timedelta(days=days)))
    for name, number, _, _, _, tags in VERSIONS:
        if tags:
            set_tags(registry.db, name, tags, ref=str(number))
    set_tags(registry.db, "inception", {"owner": "ana", "team": "vision"})
    set_tags(registry.db, "bert", {"team": "nlp"})
    catalog.set_alias(registry.db, "inception", "production", 1)
    catalog.set_alias(registry.db, "inception", "staging", 3)
    catalog.set_alias(registry.db, "bert", "production", 1)
    return registry


def found(registry, text: str, **kwargs) -> list[str]:
    page = search_versions(registry.db, text, page_size=100, **kwargs)
    return [f"{v.model}:{v.version}" for v in page.items]


TABLE = [
    ("tags.team = 'vision' AND status = 'ready'", {"inception:1", "inception:3"}),
    ('tags.team = "vision" AND status = "ready"', {"inception:1", "inception:3"}),
    ("tags.team ILIKE 'vision'", {"inception:1", "inception:2", "inception:3", "resnet:1"}),
    ("tags.team LIKE 'Vis%'", {"resnet:1"}),  # LIKE is case-sensitive on both engines
    ("tags.team != 'vision'", {"resnet:1", "bert:1"}),  # has the tag, with another value
    ("tags.stage IN ('prod', 'qa')", {"inception:3", "bert:1"}),
    ("tags.note = 'it''s ''quoted'''", {"inception:3"}),
    ("status = 'ready' OR source = 'keras'", {"inception:1", "inception:3", "resnet:1", "resnet:2", "bert:1"}),
    ("name = 'inception' AND (version >= 3 OR alias = 'production')", {"inception:1", "inception:3"}),
    ("alias = 'production'", {"inception:1", "bert:1"}),
    ("alias != 'production' AND name = 'inception'", {"inception:2", "inception:3"}),
    ("alias IN ('staging', 'nope')", {"inception:3"}),
    ("NOT status = 'ready'", {"inception:2", "resnet:2"}),
    ("status NOT IN ('ready', 'failed')", {"resnet:2"}),
    ("version < 2", {"inception:1", "resnet:1", "bert:1"}),
    ("name LIKE 'res%'", {"resnet:1", "resnet:2"}),
    ("created_at >= '2026-11-23T12:00Z' AND created_at < '2026-11-25'", {"resnet:1", "resnet:2"}),
    ("source = 'saved_model' and status = 'ready'", {"bert:1"}),  # keywords in any case
    ("tags.nothere = 'x'", set()),
]


@pytest.mark.parametrize("text, expected", TABLE, ids=[t for t, _ in TABLE])
def test_the_filter_grammar_finds_what_it_says(seeded, text, expected):
    assert set(found(seeded, text)) == expected


ERRORS = [
    ("status = ", 10, "expected a value"),
    ("status == 'ready'", 9, "expected a value"),
    ("tags.team = 'a' AND", 20, "expected a field"),
    ("(status = 'ready'", 18, "expected ')'"),
    ("colour = 'red'", 1, "unknown field 'colour'"),
    ("version = 'three'", 1, "whole numbers"),
    ("status ~ 'x'", 8, "unexpected '~'"),
    ("status LIKE 3", 1, "text in quotes"),
    ("created_at > 'yesterday'", 1, "a time in quotes"),
    ("status = 'ready' 'x'", 18, "expected AND, OR or the end"),
]


@pytest.mark.parametrize("text, column, words", ERRORS, ids=[t for t, _, _ in ERRORS])
def test_a_malformed_filter_is_a_400_pointing_at_the_column(seeded, client, text, column, words):
    with pytest.raises(InvalidRequest) as caught:
        search_versions(seeded.db, text)
    assert words in caught.value.message and f"at column {column}" in caught.value.message
    answer = client.get("/api/v1/versions", query_string={"filter": text})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "invalid_filter"
    assert f"column {column}" in answer.get_json()["error"]["message"]


def test_the_parser_knows_precedence_and_quotes(database):
    tree = parse("a = 1 OR b = 2 AND c = 3")
    assert tree.op == "OR" and tree.parts[1].op == "AND"
    with pytest.raises(FilterError) as caught:
        parse("")
    assert caught.value.column == 1


def test_results_carry_aliases_and_tags_and_page_by_keyset(seeded, client):
    first = search_versions(seeded.db, "status = 'ready'", page_size=2)
    assert [f"{v.model}:{v.version}" for v in first.items] == ["bert:1", "resnet:1"]  # newest first
    assert first.items[0].aliases == ["production"] and first.items[0].tags == {"stage": "prod", "team": "nlp"}
    second = search_versions(seeded.db, "status = 'ready'", page_size=2, page_token=first.next_page_token)
    assert [f"{v.model}:{v.version}" for v in second.items] == ["inception:3", "inception:1"]
    assert second.next_page_token is None
    assert found(seeded, "status = 'ready'", order_by="version ASC")[:1] in (["inception:1"], ["resnet:1"],
                                                                            ["bert:1"])
    answer = client.get("/api/v1/versions", query_string={"filter": "tags.team = 'vision'", "page_size": 2})
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert [(v["model"], v["version"]) for v in body["versions"]] == [("inception", 3), ("inception", 2)]
    assert body["versions"][0]["aliases"] == ["staging"] and body["versions"][0]["tags"]["stage"] == "prod"
    assert body["next_page_token"]
    bad = client.get("/api/v1/versions", query_string={"order_by": "colour DESC"})
    assert bad.status_code == 400 and "created_at" in bad.get_json()["error"]["message"]


def test_models_filter_on_their_own_tags_and_aliases(seeded, client):
    names = [m.name for m in search_models(seeded.db, "tags.team = 'vision' OR alias = 'production'").items]
    assert names == ["bert", "inception"]
    assert search_models(seeded.db, "tags.owner = 'ana'").items[0].tags == {"owner": "ana", "team": "vision"}
    with pytest.raises(InvalidRequest) as caught:
        search_models(seeded.db, "status = 'ready'")
    assert "a field of versions" in caught.value.message
    answer = client.get("/api/v1/models", query_string={"filter": "name LIKE 'b%'"})
    assert [m["name"] for m in answer.get_json()["models"]] == ["bert"]
    assert answer.get_json()["models"][0]["tags"] == {"team": "nlp"}


def test_tag_writes_are_validated_and_audited(seeded, client):
    actor = Actor("ci")
    assert set_tags(seeded.db, "inception", {"stage": "qa", "note": None}, ref="3", actor=actor) == {
        "stage": "qa", "team": "vision"}
    events = client.get("/api/v1/audit").get_json()  # the embedded default has no token: admin needs one
    assert events is not None
    for bad, code in (({"bad key!": "x"}, "invalid_tag_key"), ({"k": "x" * 5001}, "invalid_tag_value"),
                      ({"k": 3}, "invalid_tag_value"), ({}, "invalid_tags")):
        with pytest.raises(InvalidRequest) as caught:
            set_tags(seeded.db, "inception", bad)
        assert caught.value.code == code
    assert set_tags(seeded.db, "inception", {"k": "x" * 5000})["k"] == "x" * 5000
    answer = client.patch("/api/v1/models/inception/versions/1/tags", json={"stage": "prod", "team": None})
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["tags"] == {"stage": "prod"}
    assert client.get("/api/v1/models/inception/versions/1").get_json()["tags"] == {"stage": "prod"}
    answer = client.patch("/api/v1/models/inception/tags", json={"owner": "bo"})
    assert answer.status_code == 200 and answer.get_json()["tags"]["owner"] == "bo"
    refused = client.patch("/api/v1/models/inception/tags", json={"bad key!": "x"})
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "invalid_tag_key"
    with seeded.db.transaction() as session:
        from registry.models import AuditEvent
        changes = session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "tag.changed")
                                  .order_by(AuditEvent.id)).all()
    ci = [e for e in changes if e.actor == "ci"]
    assert ci and ci[0].target == "inception:3"
    assert ci[0].details["tags"] == {"stage": {"old": "prod", "new": "qa"},
                                     "note": {"old": "it's 'quoted'", "new": None}}


def test_the_cli_tags_pushes_with_tags_and_searches(live_server, models):
    from click.testing import CliRunner

    from registry.cli import main

    def cli(*args):
        result = CliRunner().invoke(main, [*args, "--url", live_server.url])
        assert "Traceback" not in result.output and (result.exception is None
                                                     or isinstance(result.exception, SystemExit)), result.output
        return result

    frozen = str(models["frozen"].frozen_graph)
    pushed = cli("push", "cnn", "--frozen", frozen, "--tag", "team=vision", "--tag", "owner=ana",
                 "--source-commit", "abc123", "--dataset", "flowers-v2")
    assert pushed.exit_code == 0, pushed.output
    version = cli("push", "cnn", "--frozen", frozen, "--tag", "team=nlp")
    assert version.exit_code == 0
    shown = cli("tag", "cnn:1")
    assert shown.output.strip() == "cnn version 1: owner=ana, team=vision"
    changed = cli("tag", "cnn:1", "stage=prod", "--delete", "owner")
    assert changed.output.strip() == "cnn version 1: stage=prod, team=vision"
    assert cli("tag", "cnn", "domain=images").output.strip() == "cnn: domain=images"
    found = cli("search", "tags.team = 'vision' AND status = 'queued'")
    lines = found.output.strip().splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATUS", "SOURCE", "ALIASES", "TAGS", "CREATED"]
    assert len(lines) == 2 and lines[1].split()[:2] == ["cnn", "1"] and "stage=prod, team=vision" in lines[1]
    assert "cnn" in cli("search", "tags.domain = 'images'", "--models").output
    bad = cli("search", "tags.team = ")
    assert bad.exit_code == 1 and "at column 13" in bad.output and bad.output.count("Error:") == 1
    wrong = cli("tag", "cnn:1", "no-equals-sign")
    assert wrong.exit_code == 2 and "is not KEY=VALUE" in wrong.output
    invalid = cli("tag", "cnn:1", "bad key!=x")
    assert invalid.exit_code == 1 and "invalid tag key 'bad key!'" in invalid.output
    from registry.client import RegistryClient
    record = RegistryClient(live_server.url).get_version("cnn", "1")
    assert record["lineage"] == {"source_commit": "abc123", "dataset": "flowers-v2"}
