"""Cross-site pushes from a real browser (headless Chromium driven by Playwright).

The registry runs as `make run` does: the embedded default with no token ever created, so writes
need no token.  A page served by a second local HTTP server (another origin) tries to push the way
the attack in issue 11 did, with ``fetch(..., {method: 'POST', body: FormData, mode: 'no-cors'})``:
the browser sends it, the registry answers 403 and no version appears.  A page whose host name is
re-pointed at the registry (DNS rebinding, simulated with Chromium's host resolver rules) is refused
by the Host check.  The registry's own push form and the CLI still push.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.test_web_browser import CHROMIUM, CHROMIUM_FLAGS, UI, playwright_api  # skips without Chromium

pytestmark = pytest.mark.slow

REBIND_NAME = "rebind.example"
ATTACK_PAGE = """<!doctype html>
<html><body>
<p id="state">loading</p>
<script>
async function attack(registry, model) {
  // The hostile upload comes from the attacker's own origin; the push goes to the registry.
  const graph = await fetch("/model.pb").then((r) => r.blob());
  const form = new FormData();
  form.append("frozen", graph, "model.pb");
  form.append("description", "pushed by another site");
  await fetch(`${registry}/api/v1/models/${model}/versions`, {method: "POST", body: form, mode: "no-cors"});
  document.getElementById("state").textContent = "sent";
  return "sent";
}
document.getElementById("state").textContent = "ready";
</script>
</body></html>
"""


@pytest.fixture(scope="module")
def frozen_graph(tmp_path_factory) -> Path:
    from tests import tfmodels

    return tfmodels.build_frozen(tmp_path_factory.mktemp("frozen")).frozen_graph


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory):
    """`make run`'s registry: embedded default, no token, so anonymous writes are open."""
    from tests.conftest import make_settings, start_live_server

    server, stop = start_live_server(make_settings(tmp_path_factory.mktemp("open")), workers=False)
    server.seen = []
    server.app.wsgi_app = _recording(server.app.wsgi_app, server.seen)
    yield server
    stop()


def _recording(wsgi_app, seen: list):
    """The app, noting each request's path, Origin, Sec-Fetch-Site and answer status (it changes nothing)."""
    def app(environ, start_response):
        record = {"path": environ["PATH_INFO"], "method": environ["REQUEST_METHOD"],
                  "origin": environ.get("HTTP_ORIGIN"), "sec_fetch_site": environ.get("HTTP_SEC_FETCH_SITE")}
        seen.append(record)

        def noting_start_response(status, headers, *args):
            record["status"] = int(status.split()[0])
            return start_response(status, headers, *args)

        return wsgi_app(environ, noting_start_response)

    return app


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def attacker(tmp_path_factory, frozen_graph):
    """A second local HTTP server (another port: another origin) serving the attack page and a graph."""
    root = tmp_path_factory.mktemp("attacker")
    (root / "index.html").write_text(ATTACK_PAGE)
    (root / "model.pb").write_bytes(frozen_graph.read_bytes())
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    rules = f"--host-resolver-rules=MAP {REBIND_NAME} 127.0.0.1"  # DNS rebinding, after the flip
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=[*CHROMIUM_FLAGS, rules])
        yield chromium
        chromium.close()


@pytest.fixture
def ui(browser, registry_server, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    ui = UI(context.new_page(), registry_server.url, tmp_path)
    yield ui
    context.close()


def _model_exists(server, name: str) -> bool:
    return requests.get(f"{server.url}/api/v1/models/{name}", timeout=10).status_code == 200


@pytest.mark.parametrize("attacker_host", ["127.0.0.1", "localhost"], ids=["same-site-other-port", "cross-site"])
def test_a_page_of_another_origin_cannot_push(ui, registry_server, attacker, attacker_host):
    page = ui.page
    page.goto(f"http://{attacker_host}:{attacker}/index.html")
    assert page.inner_text("#state") == "ready"
    model = f"evil-{attacker_host.replace('.', '-')}"
    target = f"/api/v1/models/{model}/versions"
    with page.expect_response(lambda r: target in r.url) as seen:
        assert page.evaluate("([registry, model]) => attack(registry, model)", [registry_server.url, model]) == "sent"
    refused = seen.value
    assert refused.request.method == "POST"
    assert refused.status == 403  # the browser sent it, with its Origin; the registry refused it
    # What the registry received: the browser's own word on where the request came from
    seen_by_server = [r for r in registry_server.seen if r["path"] == target]
    assert seen_by_server == [{"path": target, "method": "POST", "status": 403,
                               "origin": f"http://{attacker_host}:{attacker}",
                               "sec_fetch_site": "same-site" if attacker_host == "127.0.0.1" else "cross-site"}]
    ui.shot("attack-page")
    assert not _model_exists(registry_server, model)


def test_a_rebound_host_name_cannot_load_pages_or_push(ui, registry_server):
    port = registry_server.url.rsplit(":", 1)[1]
    rebound = f"http://{REBIND_NAME}:{port}"
    response = ui.page.goto(f"{rebound}/push")
    assert response is not None and response.status == 400
    assert "REGISTRY_ALLOWED_HOSTS" in ui.page.inner_text("body")
    ui.shot("rebound-host-refused")
    # A script already running under the rebound name is same-origin with the registry now: the Origin
    # check cannot tell, the Host check does.
    status = ui.page.evaluate("""async () => {
        const form = new FormData();
        form.append("frozen", new Blob([new Uint8Array([10, 0])]), "model.pb");
        const answer = await fetch("/api/v1/models/rebound/versions", {method: "POST", body: form});
        return [answer.status, (await answer.json()).error.code];
    }""")
    assert status == [400, "host_not_allowed"]
    assert not _model_exists(registry_server, "rebound")


def test_the_registry_s_own_push_form_still_pushes(ui, registry_server, frozen_graph):
    page = ui.page
    ui.goto("/push")
    page.fill("#name", "own-form")
    page.check('input[name="kind"][value="frozen"]')
    page.set_input_files("#frozen", str(frozen_graph))
    with page.expect_response(lambda r: "/api/v1/models/own-form/versions" in r.url) as pushed:
        with page.expect_navigation(url="**/models/own-form/versions/1"):
            page.click("#push-button")
    assert pushed.value.status == 202
    assert pushed.value.request.all_headers().get("origin") == registry_server.url  # a same-origin write
    ui.shot("version-page")
    assert _model_exists(registry_server, "own-form")


def test_the_cli_still_pushes(registry_server, frozen_graph):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "REGISTRY_URL": registry_server.url}
    env.pop("REGISTRY_TOKEN", None)
    pushed = subprocess.run([sys.executable, "-m", "registry.cli", "push", "from-cli", "--frozen", str(frozen_graph)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    assert "from-cli version 1: queued" in pushed.stdout
    assert _model_exists(registry_server, "from-cli")
