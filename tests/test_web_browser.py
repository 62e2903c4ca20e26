"""The web pages in a real browser: headless Chromium driven by Playwright.

Each test reads what a user sees: it pushes a checkpoint through the form and
watches the progress bar and the status badge, downloads the frozen graph,
sets aliases, compares two versions on images and reads the bar charts, and
makes the push form fail in the ways users make it fail.  Every page visited is
saved as a screenshot under the test's output folder (``tmp_path``).

Playwright's own browser download cannot work here, so the tests launch
Debian's Chromium; without it they skip, naming the install command.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Chromium not found: apt-get install -y chromium", allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is missing: pip install -e '.[test]'")

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
OUTPUT = "predictions/Softmax"
LABELS = ["cat", "dog", "fox", "owl", "yak"]
CONVERSION_TIMEOUT_MS = 120_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Records every change of the push form's progress bar in sessionStorage, which
# survives the navigation to the version page that follows a successful upload.
RECORD_PROGRESS = """
(() => {
  const record = () => {
    const bar = document.getElementById("upload-progress");
    const text = document.getElementById("upload-text");
    if (!bar) return;
    const seen = JSON.parse(sessionStorage.getItem("progress") || "[]");
    seen.push({value: bar.value, max: bar.max, text: text.textContent, url: location.pathname});
    sessionStorage.setItem("progress", JSON.stringify(seen));
  };
  document.addEventListener("DOMContentLoaded", () => {
    const bar = document.getElementById("upload-progress");
    if (!bar) return;
    const observer = new MutationObserver(record);
    observer.observe(bar, {attributes: true});
    observer.observe(document.getElementById("upload-text"), {childList: true, characterData: true, subtree: true});
  });
})();
"""


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real HTTP server with one embedded converter worker."""
    from tests.conftest import make_settings, start_live_server

    server, stop = start_live_server(make_settings(tmp_path_factory.mktemp("web"), embedded_workers=1),
                                     workers=True)
    yield server
    stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class UI:
    """One browser tab on the registry, with a screenshot of every page it shows."""

    def __init__(self, page, base_url: str, out: Path) -> None:
        self.page = page
        self.base_url = base_url
        self.out = out
        self.shots: list[Path] = []
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def goto(self, path: str, status: int = 200):
        response = self.page.goto(self.base_url + path)
        assert response is not None and response.status == status, (path, response and response.status)
        return response

    def shot(self, name: str) -> Path:
        """Save a screenshot of the whole page; check it, and that the page shows no error of ours."""
        path = self.out / f"{len(self.shots) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        data = path.read_bytes()
        assert len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE), path
        width, height = struct.unpack(">II", data[16:24])
        assert width > 0 and height > 0
        self.shots.append(path)
        assert not self.errors, f"JavaScript errors on the page: {self.errors}"
        body = self.page.inner_text("body")
        assert "Traceback" not in body and 'File "' not in body, body[:2000]
        return path


@pytest.fixture
def ui(browser, server, tmp_path):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    context.add_init_script(RECORD_PROGRESS)
    ui = UI(context.new_page(), server.url, tmp_path)
    yield ui
    context.close()
    for shot in ui.shots:  # every page visited left a real PNG behind
        assert shot.is_file() and shot.stat().st_size > 0


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n")
    return path


def checkpoint_files(model, labels: Path | None = None) -> list[tuple[str, Path]]:
    files = [("meta", model.meta), ("index", model.index)] + [("data", p) for p in model.data]
    if model.inference_graph:
        files.append(("graph", model.inference_graph))
    return files + ([("labels", labels)] if labels else [])


@pytest.fixture(scope="module")
def cnn(server, models, labels_file, tmp_path_factory):
    """Model 'cnn': v1 and v2 from two different checkpoints (same output node, both with labels),
    pushed through the API client and converted; their frozen graphs pulled to disk."""
    from registry.client import RegistryClient

    client = RegistryClient(server.url)
    for key in ("resource_graph", "sharded"):
        client.push("cnn", checkpoint_files(models[key], labels_file), {"output_nodes": OUTPUT})
    frozen = tmp_path_factory.mktemp("frozen")
    for number in (1, 2):
        record = client.wait("cnn", number, timeout=CONVERSION_TIMEOUT_MS / 1000)
        assert record["status"] == "ready", record["status_message"]
        client.pull("cnn", str(number), frozen / f"v{number}.pb")
    return {"name": "cnn", "client": client, "frozen": frozen}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    from tests.images import write_images

    return write_images(tmp_path_factory.mktemp("images"))


def files_chosen(page, field: str) -> list[str]:
    return page.eval_on_selector(f"#{field}", "input => Array.from(input.files).map((f) => f.name)")


def field_error(page, field: str):
    return page.locator(f'[data-field="{field}"] .field-error')


# -- pushing through the form -----------------------------------------------------------------

def test_push_through_the_form_shows_upload_progress_then_follows_the_conversion_to_ready(
        ui, server, models, labels_file):
    model = models["resource_graph"]
    page = ui.page
    ui.goto("/push")
    ui.shot("push-form")
    page.fill("#name", "pushed-in-browser")
    page.set_input_files("#meta", str(model.meta))
    page.set_input_files("#index", str(model.index))
    page.set_input_files("#data", [str(p) for p in model.data])
    page.set_input_files("#graph", str(model.inference_graph))
    page.set_input_files("#labels", str(labels_file))
    page.fill("#output_nodes", OUTPUT)
    page.fill("#description", "pushed from the browser")
    assert page.locator(".upload").is_hidden()
    ui.shot("push-form-filled")

    with page.expect_navigation(url="**/models/pushed-in-browser/versions/1"):
        page.click("#push-button")

    # The progress bar, as recorded before the page moved on: it reached its max, and
    # that max is the size of the whole upload.
    progress = json.loads(page.evaluate("sessionStorage.getItem('progress') || '[]'"))
    assert progress, "the upload progress bar never moved"
    sent = [p for p in progress if p["text"].endswith(" sent")]
    assert sent, progress
    last = sent[-1]
    uploaded = sum(p.stat().st_size for p in [model.meta, model.index, *model.data, model.inference_graph,
                                               labels_file])
    assert last["max"] >= uploaded > 0
    assert last["value"] == last["max"], progress
    assert all(p["value"] <= p["max"] for p in progress)
    done, total = last["text"].removesuffix(" sent").split(" of ")
    assert done == total, last["text"]
    assert progress[-1]["text"] == "uploaded: converting…"

    # The version page follows the conversion by itself until the version is ready.
    badge = page.locator("#status .badge")
    assert badge.get_attribute("data-status") in ("queued", "converting")
    assert page.locator("#download-frozen").count() == 0
    ui.shot("version-converting")
    playwright_api.expect(page.locator("#download-frozen")).to_be_visible(timeout=CONVERSION_TIMEOUT_MS)
    assert badge.get_attribute("data-status") == "ready"
    assert badge.inner_text() == "ready"
    assert "verified" in page.inner_text("#status-message")
    assert OUTPUT in page.inner_text("ul.nodes")
    assert "pushed from the browser" in page.inner_text("#status")
    ui.shot("version-ready")

    # TF Serving's SavedModel is built after `ready` (a follow-on job): until it is, the page says so
    # and keeps following, then shows its download by itself.
    playwright_api.expect(page.locator("#download-saved-model")).to_be_visible(timeout=CONVERSION_TIMEOUT_MS)
    assert page.locator("#saved-model-pending").count() == 0
    record = requests.get(f"{server.url}/api/v1/models/pushed-in-browser/versions/1").json()
    assert record["status"] == "ready" and record["output_nodes"] == [OUTPUT]
    assert record["description"] == "pushed from the browser"
    # the pushed files, and the SavedModel built for TF Serving
    assert {f["role"] for f in record["files"]} == {"meta", "index", "data", "graph", "labels", "saved_model"}
    assert record["saved_model"]["state"] == "ready"


# -- downloading -------------------------------------------------------------------------------

def test_download_frozen_graph_from_the_version_page_matches_the_sha256_shown(ui, server, cnn, tmp_path):
    page = ui.page
    ui.goto("/models/cnn/versions/1")
    ui.shot("version-page")
    shown = page.inner_text("dd.hash").strip()
    with page.expect_download() as download_info:
        page.click("#download-frozen")
    download = download_info.value
    assert download.suggested_filename.endswith(".pb")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    api = requests.get(f"{server.url}/api/v1/models/cnn/versions/1").json()
    assert digest == shown == api["frozen"]["sha256"]
    assert saved.stat().st_size == api["frozen"]["size"]
    assert saved.read_bytes() == (cnn["frozen"] / "v1.pb").read_bytes()


# -- aliases -------------------------------------------------------------------------------------

def alias_targets(page) -> dict[str, str]:
    return {item.locator(".alias").inner_text(): item.locator("a").inner_text()
            for item in page.locator("ul.aliases li").all()}


def submit_alias(page, alias: str, version: int) -> None:
    form = page.locator(".alias-form")
    form.locator('input[name="alias"]').fill(alias)
    form.locator('input[name="version"]').fill(str(version))
    with page.expect_navigation():
        form.locator('button[type="submit"]').click()


def test_set_move_and_remove_an_alias_on_the_model_page(ui, server, cnn):
    page = ui.page
    ui.goto("/models/cnn")
    ui.shot("model-page")
    assert page.locator(".alias-form input[name=version]").input_value() == "2"  # newest ready preselected

    submit_alias(page, "production", 1)
    assert alias_targets(page) == {"production": "v1"}
    assert page.locator(".alias-form .error").count() == 0
    ui.shot("model-alias-set")

    submit_alias(page, "staging", 1)
    submit_alias(page, "staging", 2)
    assert alias_targets(page) == {"production": "v1", "staging": "v2"}
    row = page.locator("table.versions tbody tr", has=page.locator('a:text-is("v2")'))
    assert row.locator(".alias").inner_text() == "staging"
    ui.shot("model-alias-moved")

    with page.expect_navigation():
        page.locator("ul.aliases li", has=page.locator('.alias:text-is("staging")')).locator("button").click()
    assert alias_targets(page) == {"production": "v1"}
    ui.shot("model-alias-removed")

    ui.goto("/models/cnn/versions/1")
    assert page.locator("#status .alias").all_inner_texts() == ["production"]
    ui.shot("version-with-alias")
    assert requests.get(f"{server.url}/api/v1/models/cnn").json()["aliases"] == {"production": 1}


# -- comparing ------------------------------------------------------------------------------------

READ_CHARTS = """() => Array.from(document.querySelectorAll('.image-result')).map((card) => ({
  image: card.dataset.image,
  disagree: card.classList.contains('disagree'),
  heading: card.querySelector('h3').textContent,
  charts: Object.fromEntries(Array.from(card.querySelectorAll('.chart[data-version]')).map((chart) => [
    chart.dataset.version,
    Array.from(chart.querySelectorAll('.bar-row[data-label][data-score]')).map((row) => ({
      label: row.dataset.label, score: Number(row.dataset.score), shown: row.querySelector('.bar-value').textContent,
      expected: row.classList.contains('expected')})),
  ])),
}))"""


def test_compare_two_versions_on_images_and_read_the_charts(ui, server, cnn, pictures):
    import numpy as np

    from tests.images import label_image_scores

    names = ["photo.jpg", "chart.png", "scan.bmp", "palette.gif", "other.png"]
    paths = [pictures[n] for n in names]
    # What each frozen graph says, as label_image.py would print it.
    scores = {number: [label_image_scores(cnn["frozen"] / f"v{number}.pb", p, "input", OUTPUT, height=8, width=8)
                       for p in paths] for number in (1, 2)}
    expected = [LABELS[int(np.argmax(s))] for s in scores[1]]
    expected[0] = next(label for label in LABELS if label != expected[0])  # one wrong on purpose

    page = ui.page
    ui.goto("/models/cnn/compare")
    for number in (1, 2):
        page.check(f'input[name="version"][value="{number}"]')
    page.set_input_files("#images", [str(p) for p in paths])
    assert page.locator("#chosen-images li").all_inner_texts() == names
    page.fill("#expected", "\n".join(expected))
    assert page.locator("#results").is_hidden()
    ui.shot("compare-form")
    page.click("#compare-button")
    playwright_api.expect(page.locator("#results")).to_be_visible(timeout=60_000)
    playwright_api.expect(page.locator("#compare-button")).to_be_enabled()
    assert page.locator("#form-error").is_hidden()
    ui.shot("compare-results")

    shown = page.evaluate(READ_CHARTS)
    assert [card["image"] for card in shown] == names
    api = requests.post(f"{server.url}/v1/models/cnn:compare",
                        files=[("versions", (None, "1,2")), ("expected", (None, "\n".join(expected)))]
                        + [("image", (p.name, p.read_bytes())) for p in paths]).json()
    by_version = {v["version"]: v for v in api["versions"]}
    for i, card in enumerate(shown):
        assert sorted(card["charts"]) == ["1", "2"]
        for number in (1, 2):
            bars = card["charts"][str(number)]
            answer = by_version[number]["results"][i]["predictions"]
            assert [b["label"] for b in bars] == [p["label"] for p in answer]
            np.testing.assert_allclose([b["score"] for b in bars], [p["score"] for p in answer], rtol=0, atol=1e-6)
            assert [b["shown"] for b in bars] == [f"{p['score']:.3f}" for p in answer]
            # ... and equal to what the frozen graph computes, label_image.py's way.
            order = np.argsort(scores[number][i])[::-1][:len(bars)]
            assert [b["label"] for b in bars] == [LABELS[k] for k in order]
            np.testing.assert_allclose([b["score"] for b in bars], scores[number][i][order], rtol=0, atol=1e-5)
            assert [b["expected"] for b in bars] == [b["label"] == expected[i] for b in bars]
        tops = {number: card["charts"][str(number)][0]["label"] for number in (1, 2)}
        assert card["disagree"] == (tops[1] != tops[2]), card
        assert ("versions disagree" in card["heading"]) == card["disagree"]
        assert f"(expected {expected[i]})" in card["heading"]
    assert [c["image"] for c in shown if c["disagree"]] == api["agreement"]["disagreements"]

    summary = page.locator("#version-summary tbody tr")
    assert summary.count() == 2
    top1 = {row.get_attribute("data-version"): row.locator(".accuracy-top1").inner_text() for row in summary.all()}
    assert top1["1"] == "80.0%"
    hits2 = sum(LABELS[int(np.argmax(s))] == e for s, e in zip(scores[2], expected))
    assert top1["2"] == f"{100 * hits2 / len(names):.1f}%"
    agreement = 1 - len(api["agreement"]["disagreements"]) / len(names)
    pairs = page.inner_text("#pairs")
    assert any(f"v{a} vs v{b}: top-1 agreement {100 * agreement:.1f}%" in pairs for a, b in ((1, 2), (2, 1))), pairs


def test_compare_without_images_says_so(ui, cnn):
    page = ui.page
    ui.goto("/models/cnn/compare")
    page.click("#compare-button")
    playwright_api.expect(page.locator("#form-error")).to_have_text("Add at least one image.")
    for box in page.locator('input[name="version"]').all():
        box.uncheck()
    page.click("#compare-button")
    playwright_api.expect(page.locator("#form-error")).to_have_text("Choose at least one version.")
    assert page.locator("#results").is_hidden()
    ui.shot("compare-errors")


# -- bad input --------------------------------------------------------------------------------------

def test_push_form_errors_appear_next_to_the_field_and_keep_the_choices(ui, server, models, pictures,
                                                                        labels_file):
    model = models["resource_graph"]
    page = ui.page
    ui.goto("/push?model=bad-input")
    assert page.input_value("#name") == "bad-input"  # the model name comes from the link
    page.set_input_files("#meta", str(model.meta))
    page.set_input_files("#data", [str(p) for p in model.data])
    page.set_input_files("#labels", str(labels_file))
    page.fill("#output_nodes", OUTPUT)
    page.fill("#description", "still here")

    # 1. No .index: said next to the index field; nothing the user chose is lost.
    page.click("#push-button")
    index_error = field_error(page, "index")
    playwright_api.expect(index_error).to_be_visible()
    assert "index" in index_error.inner_text()
    assert page.locator('[data-field="index"]').get_attribute("class").split() == ["field", "invalid"]
    assert page.locator(".field-error:visible").count() == 1
    assert page.locator("#form-error").is_hidden()
    assert page.url.endswith("/push?model=bad-input")
    assert page.input_value("#name") == "bad-input"
    assert page.input_value("#output_nodes") == OUTPUT
    assert page.input_value("#description") == "still here"
    assert files_chosen(page, "meta") == [model.meta.name]
    assert files_chosen(page, "data") == [p.name for p in model.data]
    assert files_chosen(page, "labels") == [labels_file.name]
    assert page.locator("#push-button").is_enabled()
    assert page.locator(".upload").is_hidden()
    ui.shot("push-missing-index")

    # 2. A picture as the .meta: said next to the meta field; the index error is gone.
    page.set_input_files("#index", str(model.index))
    page.set_input_files("#meta", str(pictures["chart.png"]))
    page.click("#push-button")
    meta_error = field_error(page, "meta")
    playwright_api.expect(meta_error).to_be_visible()
    assert "MetaGraphDef" in meta_error.inner_text() and "chart.png" in meta_error.inner_text()
    assert index_error.is_hidden()
    assert page.locator(".field-error:visible").count() == 1
    assert files_chosen(page, "index") == [model.index.name]
    ui.shot("push-meta-not-a-graph")

    # 3. A text file as the .index: said next to the index field.
    page.set_input_files("#meta", str(model.meta))
    page.set_input_files("#index", str(labels_file))
    page.click("#push-button")
    playwright_api.expect(index_error).to_be_visible()
    assert "not a checkpoint index" in index_error.inner_text()
    assert meta_error.is_hidden()
    ui.shot("push-index-not-an-index")

    # 4. A frozen push without the file: said next to the frozen field.
    page.check('input[name="kind"][value="frozen"]')
    assert page.locator(".checkpoint-only").is_hidden()
    page.click("#push-button")
    playwright_api.expect(field_error(page, "frozen")).to_have_text("Choose the frozen .pb file.")
    ui.shot("push-frozen-missing")

    # 5. A name that is no model name (a "/" would even change the upload's URL), then none at all:
    #    said next to the name field.
    for name in ("team/model", ".."):
        page.fill("#name", name)
        page.click("#push-button")
        playwright_api.expect(field_error(page, "name")).to_contain_text(f"invalid model name '{name}'")
        assert page.locator("#form-error").is_hidden()
    ui.shot("push-bad-name")
    page.fill("#name", "")
    page.click("#push-button")
    playwright_api.expect(field_error(page, "name")).to_have_text("Give the model a name.")
    ui.shot("push-no-name")

    # Nothing was created by the refused uploads.
    assert requests.get(f"{server.url}/api/v1/models/bad-input").status_code == 404


def test_unknown_output_node_fails_the_version_naming_the_closest_node(ui, server, models):
    model = models["resource_graph"]
    page = ui.page
    ui.goto("/push")
    page.fill("#name", "typo")
    page.set_input_files("#meta", str(model.meta))
    page.set_input_files("#index", str(model.index))
    page.set_input_files("#data", [str(p) for p in model.data])
    page.fill("#output_nodes", "predictions/Softmx")
    with page.expect_navigation(url="**/models/typo/versions/1"):
        page.click("#push-button")
    ui.shot("version-typo-converting")
    playwright_api.expect(page.locator('#status .badge[data-status="failed"]')).to_be_visible(
        timeout=CONVERSION_TIMEOUT_MS)
    page.wait_for_load_state("load")
    playwright_api.expect(page.locator("#status")).to_have_attribute("data-poll", "")  # reloaded, not polling
    message = page.inner_text("#status-message")
    assert "predictions/Softmx" in message and "predictions/Softmax" in message, message
    assert page.locator("#download-frozen").count() == 0
    assert "(requested)" in page.inner_text("ul.nodes")
    ui.shot("version-typo-failed")


# -- not found ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, says", [
    ("/models/nope", "'nope' does not exist"),
    ("/models/cnn/versions/99", "no version 99"),
    ("/models/cnn/versions/no-such-alias", "no version or alias 'no-such-alias'"),
    ("/models/nope/compare", "'nope' does not exist"),
    ("/no/such/page", "not found"),
])
def test_unknown_pages_are_a_friendly_404(ui, cnn, path, says):
    response = ui.goto(path, status=404)
    assert response.headers["content-type"].startswith("text/html")
    page = ui.page
    assert page.inner_text("h1") == "Not found"
    assert says.lower() in page.inner_text("main").lower()
    assert page.locator('main a[href="/"]').count() >= 1  # a way back
    ui.shot("not-found")


# -- first run: the demo model -------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """A fresh registry seeded with the demo model, as `make run` does on first start."""
    from registry.client import RegistryClient
    from registry.demo.seed import seed_demo
    from tests.conftest import make_settings, start_live_server

    server, stop = start_live_server(make_settings(tmp_path_factory.mktemp("first-run"), embedded_workers=1),
                                     workers=True)
    result = seed_demo(server.registry)
    assert result is not None, "seeding the demo failed: see the warning logged by registry.demo"
    client = RegistryClient(server.url)
    for number in result.versions:
        assert client.wait("digits", number, timeout=120, poll=0.2)["status"] == "ready"
    yield server
    stop()


def test_first_run_shows_the_demo_model_whose_versions_disagree_on_the_samples(browser, demo_server, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    ui = UI(context.new_page(), demo_server.url, tmp_path)
    try:
        ui.goto("/")
        assert ui.page.locator("table.list a", has_text="digits").count() == 1
        ui.shot("first-run-models")
        ui.page.click("table.list a:has-text('digits')")
        ui.page.click("text=Compare versions")
        assert sorted(ui.page.eval_on_selector_all('input[name="version"]:checked', "els => els.map(e => e.value)")) \
            == ["1", "2"]
        ui.page.click("#use-samples")
        ui.page.wait_for_function("document.querySelectorAll('#chosen-images li').length === 10")
        assert len(ui.page.input_value("#expected").split("\n")) == 10
        ui.page.click("#compare-button")
        ui.page.wait_for_selector("#results", state="visible")
        ui.shot("first-run-compare")
        assert ui.page.locator(".image-result.disagree").count() >= 1
        top1 = {row.get_attribute("data-version"): row.locator(".accuracy-top1").inner_text()
                for row in ui.page.locator("#version-summary tbody tr").all()}
        early, better = (float(top1[v].rstrip("%")) for v in ("1", "2"))
        assert better > early and better >= 80
    finally:
        context.close()


def test_push_a_tf2_saved_model_through_the_form_and_a_hostile_archive_is_refused_next_to_its_field(
        ui, server, tmp_path):
    import io
    import tarfile

    import tensorflow as tf

    from registry.converter.saved_model import write_archive

    class Doubler(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable([[2.0, 0.0], [0.0, 2.0]])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            return {"doubled": x @ self.w}

    module = Doubler()
    tf.saved_model.save(module, str(tmp_path / "doubler"), signatures={"serving_default": module.serve})
    archive = tmp_path / "doubler.tar.gz"
    write_archive(tmp_path / "doubler", archive)
    hostile = tmp_path / "slip.tar.gz"
    with tarfile.open(hostile, "w:gz") as tar:
        info = tarfile.TarInfo("../../etc/passwd")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))

    page = ui.page
    ui.goto("/push")
    page.fill("#name", "doubler")
    page.check('input[name="kind"][value="saved_model"]')
    assert page.locator(".checkpoint-only").is_hidden() and page.locator("#output_nodes").is_hidden()
    page.click("#push-button")
    playwright_api.expect(field_error(page, "saved_model")).to_have_text("Choose the SavedModel .zip or .tar.gz.")
    page.set_input_files("#saved_model", str(hostile))
    page.click("#push-button")
    playwright_api.expect(field_error(page, "saved_model")).to_contain_text("points outside the archive")
    ui.shot("push-saved-model-refused")

    page.set_input_files("#saved_model", str(archive))
    with page.expect_navigation(url="**/models/doubler/versions/1"):
        page.click("#push-button")
    playwright_api.expect(page.locator("#download-saved-model")).to_be_visible(timeout=CONVERSION_TIMEOUT_MS)
    assert "doubled" in page.inner_text("ul.nodes")
    ui.shot("saved-model-ready")
    record = requests.get(f"{server.url}/api/v1/models/doubler/versions/1").json()
    assert record["source"] == "saved_model" and record["output_nodes"] == ["doubled"]
