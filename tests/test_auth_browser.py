"""Signing in from a real browser (headless Chromium): a registry that needs tokens sends
the visitor to the sign-in page, a pasted token opens the push form, and the XHR
upload carries the session's CSRF token."""

from __future__ import annotations

import pytest
import requests

from tests.test_web_browser import CHROMIUM, CHROMIUM_FLAGS, UI, playwright_api  # skips without Chromium

pytestmark = pytest.mark.slow


@pytest.fixture
def secured_server(tmp_path):
    from tests.conftest import make_settings, start_live_server
    from tests.helpers import issue_tokens

    server, stop = start_live_server(make_settings(tmp_path / "h", embedded=False, public_read=False),
                                     workers=False)
    yield server, issue_tokens(server.registry.db)
    stop()


@pytest.fixture
def ui(secured_server, tmp_path):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(20_000)
        yield UI(context.new_page(), secured_server[0].url, tmp_path)
        browser.close()


def test_sign_in_with_a_token_then_push_through_the_form(ui, secured_server, models):
    server, tokens = secured_server
    page = ui.page
    ui.goto("/push")  # followed to the sign-in page
    assert page.url.endswith("/sign-in?next=/push")
    ui.shot("sign-in")
    page.fill("#token", "rgt_not-a-token")
    page.click("#sign-in-button")
    assert "malformed" in page.inner_text("#sign-in-error")
    page.fill("#token", tokens["write"])
    with page.expect_navigation(url="**/push"):
        page.click("#sign-in-button")
    assert page.inner_text("#signed-in-as") == "write-token (write)"
    ui.shot("push-form-signed-in")

    page.fill("#name", "signed-push")
    page.check('input[name="kind"][value="frozen"]')
    page.set_input_files("#frozen", str(models["frozen"].frozen_graph))
    with page.expect_navigation(url="**/models/signed-push/versions/1"):
        page.click("#push-button")
    ui.shot("version-page")

    audit = requests.get(f"{server.url}/api/v1/audit?action=version.push",
                         headers={"Authorization": f"Bearer {tokens['admin']}"}).json()["events"]
    assert [(e["actor"], e["target"]) for e in audit] == [("write-token", "signed-push/1")]

    page.click(".sign-out button")
    page.wait_for_url("**/sign-in?next=/")
    assert page.locator("#sign-in-form").is_visible()
