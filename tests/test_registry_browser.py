"""Tags, search, alias history and promotion gates in a real browser (issue 17): headless Chromium
driven by Playwright against a real server.  A user tags a version, searches models and versions with
the filter grammar (and reads where a malformed filter went wrong), follows an alias's timeline, and is
refused by a gate and reads why."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Chromium not found: apt-get install -y chromium", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, models):
    """Model 'cnn' with versions 1 and 2 ready (v1 tagged stage=prod, accuracy@val 0.81 and 0.70), model
    'bert' tagged team=nlp, and a gate on cnn's production alias needing accuracy@val >= 0.8."""
    from registry import catalog
    from registry.catalog import aliases
    from registry.catalog.metrics import record_metrics
    from registry.client import RegistryClient
    from registry.models import ModelVersion
    from tests.conftest import make_settings, start_live_server

    live, stop = start_live_server(make_settings(tmp_path_factory.mktemp("browser17")), workers=False)
    client = RegistryClient(live.url)
    frozen = models["frozen"].frozen_graph
    for name in ("cnn", "cnn", "bert"):
        client.push(name, [("frozen", frozen)], {})
    db = live.app.extensions["registry"].db
    with db.transaction() as session:
        session.execute(sa.update(ModelVersion).values(status="ready", conversion={
            "verification": {"status": "passed", "max_abs_diff": 0.0}, "safety": {"flags": []}}))
    catalog.set_tags(db, "cnn", {"team": "vision"})
    catalog.set_tags(db, "bert", {"team": "nlp"})
    catalog.set_tags(db, "cnn", {"stage": "prod"}, ref="1")
    record_metrics(db, "cnn", "1", {"accuracy@val": 0.81})
    record_metrics(db, "cnn", "2", {"accuracy@val": 0.70})
    aliases.set_alias_rule(db, "cnn", "production", protected=False, gate={"conditions": [
        {"kind": "metric", "name": "accuracy@val", "min": 0.8}]})
    yield live
    stop()


@pytest.fixture(scope="module")
def page(server):
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(20_000)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.base = server.url
        yield page
        assert errors == [], errors
        chromium.close()


def go(page, path: str) -> None:
    page.goto(page.base + path)
    assert "Traceback" not in page.inner_text("body")


def test_tag_a_version_and_remove_the_tag(page):
    go(page, "/models/cnn/versions/2")
    form = page.locator(".tag-form")
    form.locator('input[name="key"]').fill("reviewed-by")
    form.locator('input[name="value"]').fill("ana")
    with page.expect_navigation():
        form.locator("button").click()
    assert page.locator('#tags .tag[data-key="reviewed-by"]').inner_text() == "reviewed-by=ana"
    form.locator('input[name="key"]').fill("bad key!")
    page.locator('.tag-form input[name="key"]').evaluate("e => e.removeAttribute('pattern')")
    with page.expect_navigation():
        form.locator("button").click()
    assert "invalid tag key 'bad key!'" in page.locator("#tags .error").inner_text()
    with page.expect_navigation():
        page.locator('#tags li', has=page.locator('.tag[data-key="reviewed-by"]')).locator("button").click()
    assert page.locator('#tags .tag[data-key="reviewed-by"]').count() == 0


def test_search_models_and_versions_with_the_filter_grammar(page):
    go(page, "/")
    page.fill('input[name="q"]', "tags.team = 'vision'")
    with page.expect_navigation():
        page.click("form.search button")
    names = page.locator("table.list tbody td:first-child > a").all_inner_texts()
    assert names == ["cnn"]
    page.fill('input[name="q"]', "tags.team = ")
    with page.expect_navigation():
        page.click("form.search button")
    assert "at column 12" in page.locator("#search-error").inner_text()  # the search box trims the space

    go(page, "/models/cnn")
    page.fill('#version-search input[name="filter"]', "tags.stage = 'prod'")
    with page.expect_navigation():
        page.click("#version-search button")
    assert page.locator("table.versions tbody a").all_inner_texts() == ["v1"]
    page.fill('#version-search input[name="filter"]', "stage = 'prod'")
    with page.expect_navigation():
        page.click("#version-search button")
    assert "unknown field 'stage'" in page.locator("#search-error").inner_text()
    assert "at column 1" in page.locator("#search-error").inner_text()  # counted in what was typed


def submit_alias(page, alias: str, version: int, reason: str = "") -> None:
    form = page.locator(".alias-form")
    form.locator('input[name="alias"]').fill(alias)
    form.locator('input[name="version"]').fill(str(version))
    form.locator('input[name="reason"]').fill(reason)
    with page.expect_navigation():
        form.locator('button[type="submit"]').click()


def test_the_alias_timeline_and_a_gate_that_refuses_with_its_reasons(page):
    go(page, "/models/cnn")
    submit_alias(page, "production", 1, "first release")
    assert "gate: metric accuracy@val ≥ 0.8" in page.locator('.gate[data-alias="production"]').inner_text()
    submit_alias(page, "production", 2, "newer")
    error = page.locator(".alias-form .error").inner_text()
    assert "the gate of alias 'production' refuses version 2" in error
    assert "accuracy@val is 0.7 (needs ≥ 0.8)" in error
    submit_alias(page, "staging", 1)
    submit_alias(page, "staging", 2, "try v2")
    timeline = page.locator('ol.timeline[data-alias="staging"] li').all_inner_texts()
    assert "v1 → v2" in timeline[0] and "by anonymous" in timeline[0] and "try v2" in timeline[0]
    assert "created → v1" in timeline[1]
    production = page.locator('ol.timeline[data-alias="production"] li').all_inner_texts()
    assert len(production) == 1 and "first release" in production[0]  # the refused move left no trace


def test_metrics_are_charted_across_versions_with_the_aliases_marked(page):
    import requests

    moved = requests.put(f"{page.base}/api/v1/models/cnn/aliases/production", json={"version": 1}, timeout=30)
    assert moved.status_code == 200, moved.text
    go(page, "/models/cnn")
    chart = page.locator('svg.metric-chart[data-metric="accuracy@val"]')
    dots = {int(d.get_attribute("data-version")): float(d.get_attribute("data-value"))
            for d in chart.locator("circle").all()}
    assert dots == {1: 0.81, 2: 0.70}
    assert chart.locator('line.alias-mark[data-alias="production"]').count() == 1


def test_tag_the_model_on_its_page(page):
    go(page, "/models/bert")
    form = page.locator("#model-tag-form")
    form.locator('input[name="key"]').fill("owner")
    form.locator('input[name="value"]').fill("nlp-team")
    with page.expect_navigation():
        form.locator("button").click()
    assert page.locator('#model-tags .tag[data-key="owner"]').inner_text() == "owner=nlp-team"
    with page.expect_navigation():
        page.locator('#model-tags button[aria-label="remove tag owner"]').click()
    assert page.locator('#model-tags .tag[data-key="owner"]').count() == 0
    assert page.locator('#model-tags .tag[data-key="team"]').inner_text() == "team=nlp"
