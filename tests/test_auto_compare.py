"""Automatic comparison when a version becomes ready (issue 16, item 4): with a model's setting (sets and
a reference alias), pushing a version queues a comparison with the alias's version on each set; a
converter worker runs it; the version page says what it found in plain words, and the accuracy feeds
the version's metrics.  Real models, a real server with its worker, real HTTP and the real CLI."""

from __future__ import annotations

import time
import zipfile

import numpy as np
import pytest
import requests
import tensorflow as tf
from click.testing import CliRunner

from registry.cli import main
from registry.client import RegistryClient
from tests import images as test_images
from tests import tfmodels
from tests.conftest import make_settings, start_live_server

LABELS = ["cat", "dog", "fox", "owl", "yak"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto-compare")
    cnns = {n: tfmodels.build_frozen(root / f"cnn{n}", seed=seed) for n, seed in ((1, 3), (2, 11))}
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    pictures = []
    for i in range(8):
        path = root / f"img{i}.png"
        path.write_bytes(tf.io.encode_png(test_images.pixels(40 + i, 10 + i, 9 + i)).numpy())
        pictures.append(path)
    scores = {n: [test_images.label_image_scores(cnns[n].frozen_graph, p, "input", tfmodels.OUTPUT, height=8,
                                                 width=8) for p in pictures] for n in (1, 2)}
    top1 = {n: [LABELS[int(np.argmax(s))] for s in scores[n]] for n in (1, 2)}
    expected = list(top1[1])
    expected[0] = next(label for label in LABELS if label != top1[1][0])  # v1 is wrong once
    archive = root / "holdout.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for picture in pictures:
            zipped.write(picture, picture.name)
        zipped.writestr("expected.txt", "\n".join(expected) + "\n")
    server, stop = start_live_server(make_settings(root / "home", embedded_workers=1), workers=True)
    client = RegistryClient(server.url)
    client.push("cnn", [("frozen", cnns[1].frozen_graph), ("labels", labels)], {"output_nodes": tfmodels.OUTPUT})
    assert client.wait("cnn", 1, timeout=300)["status"] == "ready"
    client.set_alias("cnn", "production", 1)
    yield {"server": server, "client": client, "cnns": cnns, "labels": labels, "archive": archive,
           "top1": top1, "expected": expected}
    stop()


def cli(world, *args):
    result = CliRunner().invoke(main, [*args, "--url", world["server"].url])
    assert "Traceback" not in result.output, result.output
    return result


def test_a_ready_version_is_compared_with_production_on_the_models_sets(world):
    client = world["client"]
    refused = cli(world, "auto-compare", "cnn", "--set", "holdout")
    assert refused.exit_code == 1 and "has no evaluation set 'holdout'" in refused.output
    assert cli(world, "eval-set", "add", "cnn", "holdout", str(world["archive"])).exit_code == 0
    turned_on = cli(world, "auto-compare", "cnn", "--set", "holdout")
    assert turned_on.output.strip() == "cnn: each newly ready version is compared with production on holdout"

    client.push("cnn", [("frozen", world["cnns"][2].frozen_graph), ("labels", world["labels"])],
                {"output_nodes": tfmodels.OUTPUT})
    assert client.wait("cnn", 2, timeout=300)["status"] == "ready"
    deadline = time.monotonic() + 120
    while True:
        listed = client._request("GET", "/api/v1/models/cnn/comparisons").json()["comparisons"]
        auto = [r for r in listed if r["trigger"] == "auto"]
        if auto and auto[0]["status"] in ("done", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(auto) == 1 and auto[0]["status"] == "done", auto
    report = auto[0]
    assert [v["version"] for v in report["versions"]] == [1, 2] and report["eval_set"]["name"] == "holdout"
    top1, expected = world["top1"], world["expected"]
    agreement = np.mean([a == b for a, b in zip(top1[1], top1[2])])
    pair = report["report"]["agreement"]["pairs"][0]
    assert pair["top1_agreement"] == pytest.approx(agreement)
    accuracy = {n: np.mean([t == e for t, e in zip(top1[n], expected)]) for n in (1, 2)}
    page = requests.get(f"{world['server'].url}/models/cnn/versions/2", timeout=30).text
    verdict = (f"agrees with production on {100 * agreement:.1f}% of 8 images; accuracy "
               f"{100 * accuracy[2]:.1f}% vs {100 * accuracy[1]:.1f}%")
    assert verdict in page, page[page.find("comparisons"):][:2000]
    metrics = {m["name"]: m["value"] for m in client.list_metrics("cnn", "2")}
    assert metrics["accuracy@holdout"] == pytest.approx(accuracy[2])
    assert "latency_p50_ms" in metrics
    assert cli(world, "auto-compare", "cnn", "--off").output.strip().startswith("cnn: no automatic comparison")


def test_the_report_permalink_in_a_browser(world):
    """The stored report's page, as Chromium renders it: versions with their sha256, the set revision,
    agreement, the confusion heat map whose cells add up to the inputs, and the disagreement list."""
    from pathlib import Path

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Chromium not found: apt-get install -y chromium")
    playwright_api = pytest.importorskip("playwright.sync_api")
    ensure_set(world)
    client = world["client"]
    answer = requests.post(f"{world['server'].url}/v1/models/cnn:compare",
                           json={"versions": ["1", "2"], "eval_set": "holdout"}, timeout=120)
    assert answer.status_code == 200, answer.text
    report_id = answer.json()["report"]
    stored = client.get_comparison("cnn", report_id)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{world['server'].url}/models/cnn/comparisons/{report_id}")
        facts = page.inner_text("#report-facts")
        assert "holdout@" in facts and stored["versions"][0]["sha256"][:12] in facts
        pair = page.locator("#agreement li.pair").inner_text()
        agreement = stored["report"]["agreement"]["pairs"][0]["top1_agreement"]
        assert f"agree on {100 * agreement:.1f}%" in pair
        for version in (1, 2):
            cells = page.locator(f'table.heatmap[data-version="{version}"] td.cell')
            assert sum(int(c.get_attribute("data-count")) for c in cells.all()) == 8  # every input counted once
        rows = page.locator("#disagreements tbody tr").count()
        assert rows == stored["report"]["agreement"]["disagreement_count"]
        page.goto(f"{world['server'].url}/models/cnn")
        assert f"#{report_id}" in page.inner_text("#latest-comparisons")
        browser.close()
        assert errors == []


def test_the_compare_page_runs_on_a_stored_set_and_opens_the_report(world):
    """Any model: pick an evaluation set on the compare page, and land on the stored report."""
    from pathlib import Path

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Chromium not found: apt-get install -y chromium")
    playwright_api = pytest.importorskip("playwright.sync_api")
    ensure_set(world)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(f"{world['server'].url}/models/cnn/compare")
        page.select_option("#eval-set", label=page.locator("#eval-set option").nth(1).inner_text())
        with page.expect_navigation():
            page.click("#compare-any-button")
        assert "/models/cnn/comparisons/" in page.url
        assert "holdout@" in page.inner_text("#report-facts")
        assert page.locator("table.heatmap").count() >= 1
        page.goto(f"{world['server'].url}/models/cnn/compare")
        page.fill("#instances", "{not json")
        page.click("#compare-any-button")
        assert "do not parse" in page.inner_text("#any-error")
        browser.close()


def ensure_set(world) -> None:
    """The holdout set and version 2 (the first test makes them; a test run alone makes them here)."""
    client = world["client"]
    if not client._request("GET", "/api/v1/models/cnn/eval-sets").json().get("eval_sets"):
        assert cli(world, "eval-set", "add", "cnn", "holdout", str(world["archive"])).exit_code == 0
    if client.get_model("cnn")["last_version"] < 2:
        client.push("cnn", [("frozen", world["cnns"][2].frozen_graph), ("labels", world["labels"])],
                    {"output_nodes": tfmodels.OUTPUT})
        assert client.wait("cnn", 2, timeout=300)["status"] == "ready"


def test_the_reports_disagreements_show_the_sets_images(world):
    """The disagreement list of a report on an image set shows each image, served by the set's input route
    as the image it is (and never as anything a browser would run)."""
    ensure_set(world)
    answer = requests.post(f"{world['server'].url}/v1/models/cnn:compare",
                           json={"versions": ["1", "2"], "eval_set": "holdout"}, timeout=120).json()
    listed = answer["agreement"]["inputs"]
    assert listed, "the two versions disagree on some images"
    page = requests.get(f"{world['server'].url}/models/cnn/comparisons/{answer['report']}", timeout=30).text
    first = listed[0]
    assert f'data-index="{first["index"]}"' in page
    image = requests.get(f"{world['server'].url}/api/v1/models/cnn/eval-sets/holdout/1/inputs/{first['index']}",
                         timeout=30)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    assert image.headers["X-Content-Type-Options"] == "nosniff" and "sandbox" in image.headers[
        "Content-Security-Policy"]
    import zipfile as zipped

    with zipped.ZipFile(world["archive"]) as archive:
        assert image.content == archive.read(first["key"])  # the very image the report names
    missing = requests.get(f"{world['server'].url}/api/v1/models/cnn/eval-sets/holdout/1/inputs/99", timeout=30)
    assert missing.status_code == 404 and "numbered 0 to 7" in missing.json()["error"]["message"]
