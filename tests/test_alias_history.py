"""Alias history, "as of" lookups, rollback, protected aliases and promotion gates (issue 17, items 3,
4 and 6's metrics) on SQLite and PostgreSQL, through the HTTP API with real tokens."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from registry.models import ModelVersion, RegisteredModel
from tests.conftest import BOTH_DATABASES
from tests.helpers import bearer, frozen_form, issue_tokens, push

pytestmark = BOTH_DATABASES


@pytest.fixture
def cnn(client, registry, models):
    """Model 'cnn' with versions 1-4 ready (3 verified and nothing flagged, 4 failed verification) and
    tokens of every scope."""
    frozen = models["frozen"].frozen_graph
    for _ in range(4):
        assert push(client, "cnn", frozen_form(frozen)).status_code == 202
    with registry.db.transaction() as session:
        model_id = session.scalar(sa.select(RegisteredModel.id).where(RegisteredModel.name == "cnn"))
        for number in (1, 2, 3, 4):
            verification = {"status": "passed" if number != 4 else "failed", "max_abs_diff": 0.0}
            session.execute(sa.update(ModelVersion).where(ModelVersion.model_id == model_id,
                                                          ModelVersion.version == number)
                            .values(status="ready", conversion={"verification": verification,
                                                                "safety": {"flags": [], "op_histogram": {}}}))
    return issue_tokens(registry.db)


def move(client, token, version, alias="production", **body):
    return client.put(f"/api/v1/models/cnn/aliases/{alias}", json={"version": version, **body},
                      headers=bearer(token))


def test_every_move_is_kept_and_as_of_lookups_answer(client, cnn):
    times = []
    for version in (1, 2, 3):
        assert move(client, cnn["write"], version, reason=f"release {version}").status_code == 200
        times.append(datetime.now(timezone.utc))
        time.sleep(0.05)
    assert client.delete("/api/v1/models/cnn/aliases/production?reason=retired",
                         headers=bearer(cnn["write"])).status_code == 204
    history = client.get("/api/v1/models/cnn/aliases/production/history", headers=bearer(cnn["read"])).get_json()
    moves = [(m["from_version"], m["to_version"], m["reason"], m["actor"]) for m in history["moves"]]
    assert moves == [(3, None, "retired", "write-token"), (2, 3, "release 3", "write-token"),
                     (1, 2, "release 2", "write-token"), (None, 1, "release 1", "write-token")]
    for when, expected in zip(times, (1, 2, 3)):
        state = client.get("/api/v1/models/cnn/aliases/production", query_string={"at": when.isoformat()},
                           headers=bearer(cnn["read"])).get_json()
        assert state["version"] == expected, (when, state)
    before = client.get("/api/v1/models/cnn/aliases/production?at=2000-01-01T00:00Z", headers=bearer(cnn["read"]))
    assert before.status_code == 200 and before.get_json()["version"] is None
    now = client.get("/api/v1/models/cnn/aliases/production", headers=bearer(cnn["read"])).get_json()
    assert now["version"] is None and now["move"]["reason"] == "retired"  # removed: it points nowhere now
    bad = client.get("/api/v1/models/cnn/aliases/production?at=last-tuesday", headers=bearer(cnn["read"]))
    assert bad.status_code == 400 and "2026-11-24T10:00Z" in bad.get_json()["error"]["message"]
    never = client.get("/api/v1/models/cnn/aliases/nope/history", headers=bearer(cnn["read"]))
    assert never.status_code == 404


def test_rollback_moves_back_to_the_version_held_before(client, cnn):
    for version in (1, 3):
        assert move(client, cnn["write"], version).status_code == 200
    answer = client.post("/api/v1/models/cnn/aliases/production/rollback", json={"reason": "v3 is slower"},
                         headers=bearer(cnn["write"]))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["version"] == 1
    last = client.get("/api/v1/models/cnn/aliases/production/history",
                      headers=bearer(cnn["read"])).get_json()["moves"][0]
    assert (last["from_version"], last["to_version"], last["reason"]) == (3, 1, "v3 is slower")
    client.post("/api/v1/models/cnn/aliases/staging/rollback", headers=bearer(cnn["write"]), json={})
    assert move(client, cnn["write"], 2, alias="staging").status_code == 200
    nothing = client.post("/api/v1/models/cnn/aliases/staging/rollback", json={}, headers=bearer(cnn["write"]))
    assert nothing.status_code == 409 and nothing.get_json()["error"]["code"] == "nothing_to_roll_back"


def test_a_protected_alias_needs_promote_and_a_reason(client, cnn):
    assert move(client, cnn["write"], 1).status_code == 200
    rule = client.put("/api/v1/models/cnn/aliases/production/rule", json={"protected": True},
                      headers=bearer(cnn["admin"]))
    assert rule.status_code == 200 and rule.get_json()["protected"] is True
    assert client.put("/api/v1/models/cnn/aliases/production/rule", json={"protected": True},
                      headers=bearer(cnn["promote"])).status_code == 403  # rules: admin only
    refused = move(client, cnn["write"], 2, reason="better")
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "protected_alias"
    assert "promote scope" in refused.get_json()["error"]["message"]
    no_reason = move(client, cnn["promote"], 2)
    assert no_reason.status_code == 400 and no_reason.get_json()["error"]["code"] == "missing_reason"
    assert move(client, cnn["promote"], 2, reason="better on val").status_code == 200
    assert move(client, cnn["admin"], 3, reason="admins may too").status_code == 200
    removal = client.delete("/api/v1/models/cnn/aliases/production", headers=bearer(cnn["write"]))
    assert removal.status_code == 403
    assert client.put("/api/v1/models/cnn/aliases/other", json={"version": 1},
                      headers=bearer(cnn["write"])).status_code == 200  # only production is protected


def test_gates_pass_refuse_and_can_be_forced_by_an_admin(client, cnn):
    metrics = client.post("/api/v1/models/cnn/versions/2/metrics", json={"metrics": {"accuracy@val": 0.81},
                                                                         "eval_set": "val", "step": 1200},
                          headers=bearer(cnn["write"]))
    assert metrics.status_code == 201, metrics.get_json()
    client.post("/api/v1/models/cnn/versions/3/metrics", json={"metrics": {"accuracy@val": 0.70}},
                headers=bearer(cnn["write"]))
    unknown = client.put("/api/v1/models/cnn/aliases/production/rule", headers=bearer(cnn["admin"]), json={
        "protected": False, "gate": {"conditions": [{"kind": "metric", "name": "f1@val", "min": 0.5}]}})
    assert unknown.status_code == 400 and unknown.get_json()["error"]["code"] == "unknown_metric"
    no_set = client.put("/api/v1/models/cnn/aliases/production/rule", headers=bearer(cnn["admin"]), json={
        "protected": False, "gate": {"conditions": [{"kind": "agreement", "eval_set": "val", "min": 0.9}]}})
    assert no_set.status_code == 400 and no_set.get_json()["error"]["code"] == "unknown_eval_set"
    gate = {"conditions": [{"kind": "verified"}, {"kind": "not_flagged"},
                           {"kind": "metric", "name": "accuracy@val", "min": 0.75}]}
    assert client.put("/api/v1/models/cnn/aliases/production/rule", headers=bearer(cnn["admin"]),
                      json={"protected": False, "gate": gate}).status_code == 200

    assert move(client, cnn["write"], 2).status_code == 200  # verified, clean, 0.81 >= 0.75
    refused = move(client, cnn["write"], 3)  # 0.70 < 0.75
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "gate_refused"
    conditions = refused.get_json()["error"]["details"]["conditions"]
    assert [c["passed"] for c in conditions] == [True, True, False]
    assert conditions[2]["measured"] == 0.70 and conditions[2]["threshold"] == {"min": 0.75}
    assert "accuracy@val is 0.7 (needs ≥ 0.75)" in refused.get_json()["error"]["message"]
    unverified = move(client, cnn["write"], 4)
    assert unverified.status_code == 409 and "verification failed" in unverified.get_json()["error"]["message"]
    assert move(client, cnn["promote"], 3, force=True, reason="x").status_code == 403  # forcing: admin only
    assert move(client, cnn["admin"], 3, force=True).status_code == 400  # a reason is needed
    forced = move(client, cnn["admin"], 3, force=True, reason="hotfix, accuracy measured on old set")
    assert forced.status_code == 200
    last = client.get("/api/v1/models/cnn/aliases/production/history",
                      headers=bearer(cnn["read"])).get_json()["moves"][0]
    assert last["forced"] is True and last["to_version"] == 3
    listed = client.get("/api/v1/models/cnn/versions/2/metrics", headers=bearer(cnn["read"])).get_json()
    assert [(m["name"], m["value"], m["eval_set"], m["step"]) for m in listed["metrics"]] == [
        ("accuracy@val", 0.81, "val", 1200)]
    bad = client.post("/api/v1/models/cnn/versions/2/metrics", json={"metrics": {"acc": "high"}},
                      headers=bearer(cnn["write"]))
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_metric_value"


def test_concurrent_moves_leave_a_consistent_history(registry, cnn):
    from registry import catalog

    errors = []

    def mover(version: int) -> None:
        try:
            for _ in range(5):
                catalog.set_alias(registry.db, "cnn", "production", version)
        except Exception as exc:  # a concurrent_change 409 is allowed; anything else is a failure
            if getattr(exc, "code", "") != "concurrent_change":
                errors.append(exc)

    threads = [threading.Thread(target=mover, args=(v,)) for v in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    from registry.catalog.aliases import alias_history
    moves = list(reversed(alias_history(registry.db, "cnn", "production", page_size=200).items))
    assert moves[0].from_version is None
    for earlier, later in zip(moves, moves[1:]):
        assert later.from_version == earlier.to_version  # every move starts where the one before ended
    final = registry.db
    with final.transaction() as session:
        from registry.models import Alias
        now = session.scalar(sa.select(ModelVersion.version).join(Alias, Alias.version_id == ModelVersion.id)
                             .where(Alias.name == "production"))
    assert now == moves[-1].to_version


def test_the_cli_moves_rolls_back_protects_and_records_metrics(live_server, models):
    from click.testing import CliRunner

    from registry import auth
    from registry.auth.audit import SYSTEM
    from registry.cli import main
    from registry.client import RegistryClient

    frozen = str(models["frozen"].frozen_graph)

    def cli(*args, token=None):
        extra = ["--url", live_server.url] + (["--token", token] if token else [])
        result = CliRunner().invoke(main, [*args, *extra])
        assert "Traceback" not in result.output and (result.exception is None
                                                     or isinstance(result.exception, SystemExit)), result.output
        return result

    for _ in range(2):
        assert cli("push", "cnn", "--frozen", frozen).exit_code == 0
    db = live_server.app.extensions["registry"].db
    with db.transaction() as session:
        session.execute(sa.update(ModelVersion).values(status="ready"))
    admin = auth.create_token(db, "root", "admin", SYSTEM)[1]
    writer = auth.create_token(db, "ci", "write", SYSTEM)[1]
    assert cli("alias", "cnn", "production", "1", "--reason", "first", token=writer).exit_code == 0
    assert cli("alias", "cnn", "production", "2", token=writer).exit_code == 0
    history = cli("alias", "cnn", "production", "--history", token=writer).output.splitlines()
    assert history[0].split()[:4] == ["WHEN", "(UTC)", "FROM", "TO"]
    assert history[1].split()[1:4] == ["1", "2", "ci"] and history[2].split()[1:5] == ["-", "1", "ci", "first"]
    back = cli("rollback", "cnn", "production", "--reason", "v2 regressed", token=writer)
    assert back.output.strip() == "cnn: production -> version 1 (rolled back)"
    at = cli("alias", "cnn", "production", "--at", "2000-01-01", token=writer)
    assert "held no version" in at.output
    protect = cli("alias-rule", "cnn", "production", "--protect", token=admin)
    assert protect.output.strip() == "cnn: production is protected, no gate"
    refused = cli("alias", "cnn", "production", "2", "--reason", "x", token=writer)
    assert refused.exit_code == 1 and "promote scope" in refused.output
    recorded = cli("metrics", "cnn:2", "accuracy@val=0.9", "--eval-set", "val", token=writer)
    assert recorded.exit_code == 0 and "accuracy@val  0.9" in recorded.output
    gate = cli("alias-rule", "cnn", "production", "--gate",
               '[{"kind": "metric", "name": "accuracy@val", "min": 0.95}]', token=admin)
    assert gate.output.strip() == "cnn: production is protected, gate of 1 condition(s)"
    gated = cli("alias", "cnn", "production", "2", "--reason", "better", token=admin)
    assert gated.exit_code == 1 and "the gate of alias 'production' refuses version 2" in gated.output
    assert "accuracy@val is 0.9 (needs ≥ 0.95)" in gated.output
    forced = cli("alias", "cnn", "production", "2", "--reason", "hotfix", "--force", token=admin)
    assert forced.output.strip() == "cnn: production -> version 2 (forced past its gate)"
    assert RegistryClient(live_server.url, token=writer).get_model("cnn")["aliases"] == {"production": 2}
    bad = cli("metrics", "cnn:2", "accuracy=high", token=writer)
    assert bad.exit_code == 2 and "is not NAME=NUMBER" in bad.output


def test_deleting_a_version_records_its_aliases_removal(client, cnn):
    assert move(client, cnn["write"], 2, alias="staging").status_code == 200
    assert client.delete("/api/v1/models/cnn/versions/2", headers=bearer(cnn["write"])).status_code == 200
    moves = client.get("/api/v1/models/cnn/aliases/staging/history", headers=bearer(cnn["read"])).get_json()["moves"]
    assert (moves[0]["from_version"], moves[0]["to_version"], moves[0]["reason"]) == (2, None, "version 2 deleted")


def test_agreement_latency_and_flag_conditions_pass_and_refuse(client, registry, cnn):
    """Each remaining gate condition from its recorded evidence: top-1 agreement with the alias's version
    on a set (from the latest comparison of the two), latency_p50_ms, and the op scan."""
    from registry.models import ComparisonReport, EvalSet, utcnow

    with registry.db.transaction() as session:
        model_id = session.scalar(sa.select(RegisteredModel.id).where(RegisteredModel.name == "cnn"))
        session.add(EvalSet(model_id=model_id, name="val", revision=1, format="jsonl", filename="val.jsonl",
                            sha256="0" * 64, size=1, count=100, created_at=utcnow()))
        for other, rate in ((2, 0.97), (3, 0.80)):  # v2 agrees with v1 on 97%, v3 on 80%
            session.add(ComparisonReport(
                model_id=model_id, status="done", eval_set_name="val", eval_set_revision=1,
                versions=[{"version": 1}, {"version": other}], created_at=utcnow(),
                report={"agreement": {"pairs": [{"a": 1, "b": other, "top1_agreement": rate}]}}))
        flags = [{"op": "ReadFile", "category": "file_io", "count": 1, "nodes": ["read"]}]
        session.execute(sa.update(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.version == 4)
                        .values(conversion={"verification": {"status": "passed"},
                                            "safety": {"flags": flags, "flagged": True}}))
    for version, p50 in ((2, 12.0), (3, 30.0)):
        client.post(f"/api/v1/models/cnn/versions/{version}/metrics", json={"metrics": {"latency_p50_ms": p50}},
                    headers=bearer(cnn["write"]))
    assert move(client, cnn["write"], 1).status_code == 200  # no gate yet
    gate = {"conditions": [{"kind": "agreement", "eval_set": "val", "min": 0.95},
                           {"kind": "latency_p50_ms", "max": 20}, {"kind": "not_flagged"}]}
    rule = client.put("/api/v1/models/cnn/aliases/production/rule", headers=bearer(cnn["admin"]),
                      json={"protected": False, "gate": gate})
    assert rule.status_code == 200, rule.get_json()

    refused = move(client, cnn["write"], 3)
    assert refused.status_code == 409
    results = refused.get_json()["error"]["details"]["conditions"]
    assert [(r["passed"], r["measured"]) for r in results[:2]] == [(False, 0.80), (False, 30.0)]
    assert "top-1 agreement with version 1 on val is 80.0% (needs ≥ 0.95)" in results[0]["message"]
    flagged = move(client, cnn["write"], 4)
    assert flagged.status_code == 409
    assert "flagged: ReadFile" in flagged.get_json()["error"]["details"]["conditions"][2]["message"]
    assert "not measured" in flagged.get_json()["error"]["details"]["conditions"][0]["message"]
    assert move(client, cnn["write"], 2).status_code == 200  # 97% agreement, 12 ms, nothing flagged
