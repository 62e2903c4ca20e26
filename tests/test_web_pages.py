"""The web pages through Flask's test client (no browser): every page renders
with real data, search, pagination, the alias form, error pages and the demo
sample route."""

from __future__ import annotations

import hashlib
import html
import re

import pytest
import sqlalchemy as sa

from registry.models import ModelVersion, RegisteredModel, utcnow
from tests.helpers import csrf_token, frozen_form, push

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
OUTPUT = "predictions/Softmax"
# What a finished conversion records (taken from a real one of tests/tfmodels' CNN).
CONVERSION = {
    "verification": {"status": "passed", "max_abs_diff": 0.0, "tolerance": 1e-05,
                     "outputs": [{"name": OUTPUT, "dtype": "float32", "test_shape": [1, 5]}]},
    "safety": {"op_histogram": {"Const": 7, "Identity": 5, "AddV2": 3, "Mul": 2, "Conv2D": 1, "MatMul": 1,
                                "Placeholder": 1, "Relu": 1, "Reshape": 1, "Softmax": 1},
               "flags": [], "flagged": False, "upload_flags": []},
    "nodes": {"uploaded": 96, "frozen": 23},
}


def page(client, path: str, status: int = 200) -> str:
    """GET a page as a browser does; check its status and that it is an HTML page, not a stack trace."""
    response = client.get(path, headers=BROWSER)
    assert response.status_code == status, (path, response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "text/html"
    body = response.get_data(as_text=True)
    assert body.lstrip().startswith("<!doctype html>")
    assert "Traceback" not in body and 'File "' not in body
    return body


def text(body: str) -> str:
    """The page's visible text, roughly: tags dropped, entities decoded, whitespace collapsed."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


def version_links(body: str, name: str) -> list[int]:
    """The version numbers listed in the model page's versions table, in order."""
    table = body.split('<table class="list versions">', 1)[1].split("</table>", 1)[0]
    return [int(n) for n in re.findall(rf'<a href="/models/{re.escape(name)}/versions/(\d+)">v\1</a>', table)]


def next_link(body: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">Next page', body)
    return html.unescape(found.group(1)) if found else None


def mark_converted(registry, name: str, number: int, frozen_path, *, failed: str | None = None) -> None:
    """Record on a version what the converter would: ready with its outputs, inputs and report, or failed."""
    with registry.db.transaction() as session:
        model_id = session.scalar(sa.select(RegisteredModel.id).where(RegisteredModel.name == name))
        if failed:
            values = dict(status="failed", status_message=failed)
        else:
            data = frozen_path.read_bytes()
            values = dict(
                status="ready", status_message="frozen and verified (largest difference 0)",
                output_nodes=[OUTPUT], output_nodes_detected=True,
                input_nodes=[{"name": "input", "dtype": "float32", "shape": [None, 8, 8, 3], "optional": False}],
                frozen_sha256=hashlib.sha256(data).hexdigest(), frozen_size=len(data), tf_version="2.21.0",
                conversion=CONVERSION, ready_at=utcnow(),
            )
        session.execute(sa.update(ModelVersion)
                        .where(ModelVersion.model_id == model_id, ModelVersion.version == number).values(**values))


@pytest.fixture
def frozen(models):
    return models["frozen"].frozen_graph


@pytest.fixture
def cnn(client, registry, frozen):
    """Model 'cnn': v1 ready ('production'), v2 failed, v3 still queued."""
    for description in ("first", "second", "third"):
        assert push(client, "cnn", frozen_form(frozen, description=description)).status_code == 202
    mark_converted(registry, "cnn", 1, frozen)
    mark_converted(registry, "cnn", 2, frozen,
                   failed="output node 'predictions/Softmx' is not in the graph. Closest existing nodes: "
                          "predictions/Softmax.")
    assert client.put("/api/v1/models/cnn/aliases/production", json={"version": 1}).status_code == 200
    return "cnn"


# -- every page ---------------------------------------------------------------------------------

def test_models_page_lists_models_with_newest_ready_version_and_aliases(client, cnn):
    body = page(client, "/")
    shown = text(body)
    assert 'href="/models/cnn"' in body
    assert 'href="/models/cnn/versions/1"' in body  # newest ready
    assert "production → v1" in shown
    assert "cnn v1 3" in shown  # name, newest ready, number of versions


def test_model_page_lists_versions_newest_first_with_status_and_aliases(client, cnn):
    body = page(client, "/models/cnn")
    assert version_links(body, "cnn") == [3, 2, 1]
    assert re.findall(r'data-status="(\w+)"', body) == ["queued", "failed", "ready"]
    shown = text(body)
    assert "3 versions · newest ready: v1" in shown
    assert "production → v1" in shown
    assert 'href="/models/cnn/compare"' in body and 'href="/push?model=cnn"' in body
    assert next_link(body) is None
    assert 'name="version" type="number" min="1" required value="1"' in body  # the alias form offers v1


def test_ready_version_page_shows_outputs_inputs_report_and_download(client, cnn, frozen):
    body = page(client, "/models/cnn/versions/1")
    shown = text(body)
    digest = hashlib.sha256(frozen.read_bytes()).hexdigest()
    assert 'data-status="ready"' in body and 'data-poll=""' in body
    assert 'id="download-frozen" href="/api/v1/models/cnn/versions/1/frozen.pb"' in body
    assert digest in shown and OUTPUT in shown
    assert "input float32 [?, 8, 8, 3]" in shown
    assert "verified: largest difference 0" in shown
    assert "no op reads or writes files" in shown
    assert 'id="op-histogram"' in body and "Conv2D" in shown
    assert "production" in shown and "first" in shown
    assert "registry pull cnn:1 -o cnn-v1.pb" in shown
    download = client.get("/api/v1/models/cnn/versions/1/frozen.pb")
    assert hashlib.sha256(download.data).hexdigest() == digest


def test_version_page_by_alias_and_latest_is_the_same_version(client, cnn):
    for ref in ("production", "latest"):
        assert "cnn v1" in text(page(client, f"/models/cnn/versions/{ref}"))


def test_failed_version_page_shows_why(client, cnn):
    body = page(client, "/models/cnn/versions/2")
    shown = text(body)
    assert 'data-status="failed"' in body and 'data-poll=""' in body
    assert "Closest existing nodes: predictions/Softmax" in shown
    assert "download-frozen" not in body


def test_queued_version_page_follows_the_conversion(client, cnn):
    body = page(client, "/models/cnn/versions/3")
    assert 'data-status="queued"' in body
    assert 'data-poll="/api/v1/models/cnn/versions/3"' in body
    assert "download-frozen" not in body
    assert client.get("/api/v1/models/cnn/versions/3").get_json()["status"] == "queued"


def test_a_ready_version_whose_saved_model_is_being_built_says_so_and_follows_the_build(client, registry, cnn):
    with registry.db.transaction() as session:
        session.execute(sa.update(ModelVersion).where(ModelVersion.version == 1).values(saved_model_state="pending"))
    body = page(client, "/models/cnn/versions/1")
    assert 'data-status="ready"' in body and 'id="download-frozen"' in body
    assert 'id="saved-model-pending"' in body and "SavedModel: building" in text(body)
    assert 'id="download-saved-model"' not in body
    assert 'data-poll="/api/v1/models/cnn/versions/1"' in body and 'data-shown="saved_model"' in body
    assert client.get("/api/v1/models/cnn/versions/1").get_json()["saved_model"]["state"] == "pending"

    with registry.db.transaction() as session:  # the build failed: nothing to follow, no download
        session.execute(sa.update(ModelVersion).where(ModelVersion.version == 1).values(saved_model_state="failed"))
    body = page(client, "/models/cnn/versions/1")
    assert 'data-poll=""' in body and "saved-model-pending" not in body and "download-saved-model" not in body


def test_push_page_and_its_model_name_from_the_link(client, cnn):
    body = page(client, "/push")
    for field in ("name", "meta", "index", "data", "graph", "frozen", "labels", "output_nodes", "input_nodes"):
        assert f'data-field="{field}"' in body
    assert '<progress id="upload-progress"' in body
    assert 'id="name" name="name" value="cnn"' in page(client, "/push?model=cnn")
    assert 'value="&lt;b&gt;"' in page(client, "/push?model=<b>")  # escaped


def test_compare_page_offers_ready_versions_only(client, cnn, registry, frozen):
    body = page(client, "/models/cnn/compare")
    boxes = re.findall(r'<input type="checkbox" name="version" value="(\d+)"( checked)?>', body)
    assert boxes == [("1", " checked")]
    assert 'data-model="cnn"' in body and 'id="compare-button"' in body
    assert "use-samples" not in body  # only the demo model has sample images


def test_compare_page_without_a_ready_version_says_so(client, frozen):
    push(client, "waiting", frozen_form(frozen))
    assert "No ready version yet" in text(page(client, "/models/waiting/compare"))


def test_assets_are_served_by_the_app(client):
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


# -- search and pagination -------------------------------------------------------------------------

def test_models_search_by_name(client, frozen):
    assert "No models yet" in text(page(client, "/"))
    for name in ["alpha", "beta", "gamma-net", "delta-net"]:
        push(client, name, frozen_form(frozen))
    body = page(client, "/?q=net")
    assert re.findall(r'<a href="/models/([\w.-]+)">', body) == ["delta-net", "gamma-net"]
    assert 'value="net"' in body  # the query stays in the box
    assert "No model name contains “zzz”" in text(page(client, "/?q=zzz"))
    assert "No model name contains “&lt;script&gt;”" in page(client, "/?q=<script>")


def test_models_list_pages(client, frozen):
    for name in ["alpha", "beta", "gamma-net", "delta-net"]:
        push(client, name, frozen_form(frozen))
    first = page(client, "/?page_size=3")
    assert re.findall(r'<a href="/models/([\w.-]+)">', first) == ["alpha", "beta", "delta-net"]
    second = page(client, next_link(first))
    assert re.findall(r'<a href="/models/([\w.-]+)">', second) == ["gamma-net"]
    assert next_link(second) is None


def test_model_page_pages_through_versions_25_at_a_time(client, frozen):
    for _ in range(30):
        assert push(client, "paged", frozen_form(frozen)).status_code == 202
    first = page(client, "/models/paged")
    assert version_links(first, "paged") == list(range(30, 5, -1))
    assert "30 versions" in text(first)
    url = next_link(first)
    assert url is not None and url.startswith("/models/paged?page_token=")
    second = page(client, url)
    assert version_links(second, "paged") == [5, 4, 3, 2, 1]
    assert next_link(second) is None
    # page_size is kept on the next page's link
    small = page(client, "/models/paged?page_size=10")
    assert version_links(small, "paged") == list(range(30, 20, -1))
    assert "page_size=10" in next_link(small)
    assert version_links(page(client, next_link(small)), "paged") == list(range(20, 10, -1))


def test_bad_page_token_is_an_html_page_that_says_what_to_do(client, frozen):
    push(client, "paged", frozen_form(frozen))
    assert "invalid page_token" in text(page(client, "/models/paged?page_token=garbage!", status=400))


# -- the alias form ----------------------------------------------------------------------------------

def set_alias(client, name: str, **form) -> str:
    """Submit the alias form and follow the redirect back to the model page."""
    response = client.post(f"/models/{name}/aliases", data={**form, "csrf_token": csrf_token(client)},
                           headers=BROWSER)
    assert response.status_code == 302
    assert response.headers["Location"].endswith("#aliases")
    return page(client, response.headers["Location"].split("#")[0])


def aliases_listed(body: str) -> dict[str, int]:
    section = body.split('<section id="aliases"', 1)[1]
    return {alias: int(number) for alias, number in
            re.findall(r'<li><span class="alias">([^<]+)</span> → <a href="[^"]+">v(\d+)</a>', section)}


def alias_error(body: str) -> str | None:
    found = re.search(r'<p class="error" role="alert">(.*?)</p>', body, flags=re.S)
    return html.unescape(found.group(1)) if found else None


def test_alias_form_sets_moves_and_removes_aliases(client, registry, frozen):
    for _ in range(2):
        push(client, "cnn", frozen_form(frozen))
    mark_converted(registry, "cnn", 1, frozen)
    mark_converted(registry, "cnn", 2, frozen)

    body = set_alias(client, "cnn", alias="production", version="1")
    assert aliases_listed(body) == {"production": 1}
    assert alias_error(body) is None
    body = set_alias(client, "cnn", alias="staging", version="1")
    assert aliases_listed(body) == {"production": 1, "staging": 1}
    body = set_alias(client, "cnn", alias="staging", version="2")
    assert aliases_listed(body) == {"production": 1, "staging": 2}
    assert "staging" in text(page(client, "/models/cnn/versions/2"))
    body = set_alias(client, "cnn", alias="staging", action="delete")
    assert aliases_listed(body) == {"production": 1}
    assert client.get("/api/v1/models/cnn").get_json()["aliases"] == {"production": 1}


@pytest.mark.parametrize("form, says", [
    ({"alias": "1st", "version": "1"}, "invalid alias '1st'"),
    ({"alias": "has space", "version": "1"}, "invalid alias 'has space'"),
    ({"alias": "latest", "version": "1"}, "'latest' is reserved"),
    ({"alias": "", "version": "1"}, "invalid alias ''"),
    ({"alias": "production", "version": ""}, "choose the version the alias should point at"),
    ({"alias": "production", "version": "two"}, "choose the version the alias should point at"),
    ({"alias": "production", "version": "9"}, "no version 9"),
    ({"alias": "production", "version": "2"}, "failed to convert"),
    ({"alias": "nothing", "action": "delete"}, "has no alias 'nothing'"),
])
def test_alias_form_shows_a_clear_error(client, registry, frozen, form, says):
    for _ in range(2):
        push(client, "cnn", frozen_form(frozen))
    mark_converted(registry, "cnn", 2, frozen, failed="conversion failed")
    body = set_alias(client, "cnn", **form)
    assert says in alias_error(body)
    assert aliases_listed(body) == {}


def test_alias_form_for_an_unknown_model_is_a_404_page(client):
    response = client.post("/models/nope/aliases",
                           data={"alias": "production", "version": "1", "csrf_token": csrf_token(client)},
                           headers=BROWSER)
    if response.status_code == 302:  # back to the model page, which does not exist
        body = page(client, response.headers["Location"].split("#")[0], status=404)
    else:
        assert response.status_code == 404 and response.mimetype == "text/html"
        body = response.get_data(as_text=True)
    assert "model 'nope' does not exist" in text(body)


# -- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, says", [
    ("/models/nope", "model 'nope' does not exist"),
    ("/models/nope/versions/1", "model 'nope' does not exist"),
    ("/models/nope/compare", "model 'nope' does not exist"),
    ("/models/cnn/versions/99", "model 'cnn' has no version 99 (versions go up to 3)"),
    ("/models/cnn/versions/nothing", "has no version or alias 'nothing'"),
    ("/no/such/page", "not found"),
])
def test_unknown_pages_are_html_404s_for_browsers(client, cnn, path, says):
    body = page(client, path, status=404)
    assert "<h1>Not found</h1>" in body
    assert says.lower() in text(body).lower()
    assert 'href="/"' in body


@pytest.mark.parametrize("path, code", [
    ("/api/v1/models/nope", "model_not_found"),
    ("/api/v1/models/cnn/versions/99", "version_not_found"),
    ("/api/v1/no/such/thing", "not_found"),
])
def test_unknown_api_paths_are_json_404s_even_for_browsers(client, cnn, path, code):
    response = client.get(path, headers=BROWSER)
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == code


def test_an_invalid_model_name_in_a_page_url_is_an_html_400(client):
    body = page(client, "/models/-bad-", status=400)
    assert "invalid model name '-bad-'" in text(body)


def test_an_unexpected_failure_is_an_html_page_without_a_stack_trace(client, monkeypatch):
    from registry import catalog

    def broken(*args, **kwargs):
        raise RuntimeError("database exploded at /secret/path")

    monkeypatch.setattr(catalog, "list_models", broken)
    body = page(client, "/", status=500)
    assert "Something went wrong" in body
    assert "exploded" not in body and "RuntimeError" not in body and "/secret/path" not in body


# -- demo samples ------------------------------------------------------------------------------------

@pytest.fixture
def demo_folder(settings):
    folder = settings.home / "demo"
    folder.mkdir(parents=True)
    (folder / "0_digit.png").write_bytes(b"\x89PNG\r\n\x1a\nsample-zero")
    (folder / "1_digit.png").write_bytes(b"\x89PNG\r\n\x1a\nsample-one")
    (folder / "expected.txt").write_text("0\n1\n")
    (folder / "notes.txt").write_text("not for the web")
    (settings.home / "outside.png").write_bytes(b"\x89PNG\r\n\x1a\noutside")
    return folder


def test_demo_route_serves_the_demo_png_files(client, demo_folder):
    response = client.get("/demo/1_digit.png")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.data == (demo_folder / "1_digit.png").read_bytes()


@pytest.mark.parametrize("path", [
    "/demo/expected.txt", "/demo/notes.txt", "/demo/missing.png", "/demo/%2E%2E/outside.png",
    "/demo/..%2Foutside.png", "/demo/%2E%2E/registry.db", "/demo/", "/demo/0_digit.PNG.txt",
])
def test_demo_route_serves_nothing_else(client, demo_folder, path):
    response = client.get(path, headers=BROWSER)
    assert response.status_code == 404, path
    assert b"sample" not in response.data and b"outside" not in response.data


def test_compare_page_of_the_demo_model_offers_its_samples(client, registry, frozen, demo_folder):
    push(client, "digits", frozen_form(frozen))
    mark_converted(registry, "digits", 1, frozen)
    body = page(client, "/models/digits/compare")
    assert 'id="use-samples"' in body and "Use the 2 demo sample images" in body
    samples = re.search(r"data-samples='([^']*)'", body).group(1)
    assert '"name": "0_digit.png"' in html.unescape(samples) and '"expected": "1"' in html.unescape(samples)
    assert 'data-base="/demo/"' in body


def test_a_long_description_on_the_compare_page_is_cut_with_an_ellipsis(client, registry, frozen):
    long = "Inception v3 fine-tuned on the flowers set, 12 epochs, learning rate 0.01 then 0.001"
    assert push(client, "long", frozen_form(frozen, description=long)).status_code == 202
    mark_converted(registry, "long", 1, frozen)
    body = page(client, "/models/long/compare")
    assert f'title="{long}">{long[:59]}…</span>' in body
