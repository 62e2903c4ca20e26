"""The registry holds under hostile requests from browsers and clients, over real HTTP:

* a write from a page of another site (its ``Origin`` or ``Sec-Fetch-Site`` shows it) is refused
  unless it carries a Bearer token, while the CLI and curl (no ``Origin``) keep working;
* a ``Host`` the server does not answer to (DNS rebinding) is refused;
* signing out ends the session on the server: a copied cookie stops working;
* ``next=`` only leads to a plain path on this site;
* input that used to raise inside the server (Unicode digits, numbers past 64 bits, deeply nested
  JSON, a newline in ``next``) gets a 4xx naming the problem, and the server answers the next request.

The browser's side of the cross-site refusal is in tests/test_cross_site_browser.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.conftest import BOTH_DATABASES, make_settings, start_live_server
from tests.helpers import bearer, issue_tokens

DEEP_JSON = "[" * 100_000 + "]" * 100_000  # past the JSON parser's recursion limit, well under 1 MiB
HUGE = "1" * 23  # 23 digits: past the 64-bit integers of SQLite and PostgreSQL
OTHER_ORIGIN = "http://127.0.0.1:1"  # another port: another origin, the same site


@pytest.fixture(scope="module")
def frozen_graph(tmp_path_factory) -> Path:
    from tests import tfmodels

    return tfmodels.build_frozen(tmp_path_factory.mktemp("frozen")).frozen_graph


def push(url: str, name: str, graph: Path, headers: dict | None = None) -> requests.Response:
    with graph.open("rb") as f:
        return requests.post(f"{url}/api/v1/models/{name}/versions", files={"frozen": (graph.name, f)},
                             headers=headers or {}, timeout=30)


def page_token(value) -> str:
    """A page token as the registry makes them (base64 of JSON), holding ``value``."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.fixture
def open_server(tmp_path, database):
    """`make run`'s registry: no token ever created, so writes need none (on PostgreSQL where a test
    asks for BOTH_DATABASES)."""
    overrides = {"database_url": database} if database else {}
    server, stop = start_live_server(make_settings(tmp_path / "open", **overrides), workers=False)
    yield server
    stop()


@pytest.fixture(scope="module")
def shared_open_server(tmp_path_factory):
    """An open registry shared by the tests that each work on a model of their own."""
    server, stop = start_live_server(make_settings(tmp_path_factory.mktemp("shared-open")), workers=False)
    yield server
    stop()


def _secured(home: Path, database: str | None = None):
    settings = make_settings(home, embedded=False, public_read=False, **({"database_url": database} if database
                                                                         else {}))
    server, stop = start_live_server(settings, workers=False)
    return server, issue_tokens(server.registry.db), stop


@pytest.fixture
def secured_server(tmp_path, database):
    """A registry that needs tokens for everything, with a token of each scope."""
    server, tokens, stop = _secured(tmp_path / "secured", database)
    yield server, tokens
    stop()


@pytest.fixture(scope="module")
def shared_secured_server(tmp_path_factory):
    server, tokens, stop = _secured(tmp_path_factory.mktemp("shared-secured"))
    yield server, tokens
    stop()


def own_origin(server) -> str:
    return server.url  # http://127.0.0.1:PORT


def assert_still_answers(url: str, headers: dict | None = None) -> None:
    """The server answers a normal request right after a refused one."""
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{url}/api/v1/models", headers=headers or {}, timeout=10).status_code == 200


# -- cross-site writes ----------------------------------------------------------------------------

CROSS_SITE = {
    "another port": {"Origin": OTHER_ORIGIN},
    "another host": {"Origin": "http://evil.example"},
    "another scheme and port": {"Origin": "https://127.0.0.1"},
    "an opaque origin": {"Origin": "null"},
    "cross-site fetch metadata": {"Sec-Fetch-Site": "cross-site"},
    "cross-site metadata with our own Origin": {"Sec-Fetch-Site": "cross-site", "Origin": "SELF"},
    "same-site metadata without an Origin": {"Sec-Fetch-Site": "same-site"},
    "same-site metadata from another port": {"Sec-Fetch-Site": "same-site", "Origin": OTHER_ORIGIN},
}
SAME_SITE = {
    "no Origin (the CLI, curl)": {},
    "our own Origin": {"Origin": "SELF"},
    "our own Origin, same-origin metadata": {"Origin": "SELF", "Sec-Fetch-Site": "same-origin"},
    "same-site metadata with our own Origin": {"Origin": "SELF", "Sec-Fetch-Site": "same-site"},
    "a typed-in request (none)": {"Sec-Fetch-Site": "none"},
}


def _headers(case: dict, server) -> dict:
    return {k: own_origin(server) if v == "SELF" else v for k, v in case.items()}


def _versions(server, name: str, headers: dict | None = None) -> list[int]:
    answer = requests.get(f"{server.url}/api/v1/models/{name}/versions", headers=headers or {}, timeout=10)
    return [v["version"] for v in answer.json()["versions"]] if answer.status_code == 200 else []


def _aliases(server, name: str, headers: dict | None = None) -> dict:
    return requests.get(f"{server.url}/api/v1/models/{name}", headers=headers or {}, timeout=10).json()["aliases"]


def _model_name(case: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", case.lower()).strip("-")


@pytest.mark.parametrize("case", sorted(CROSS_SITE))
def test_cross_site_writes_without_a_token_are_refused_and_change_nothing(shared_open_server, frozen_graph, case):
    server, name = shared_open_server, _model_name(case)
    assert push(server.url, name, frozen_graph).status_code == 202  # the CLI's way: no Origin
    headers = _headers(CROSS_SITE[case], server)

    answers = {
        "push": push(server.url, name, frozen_graph, headers),
        "push a new model": push(server.url, "evil", frozen_graph, headers),
        "alias": requests.put(f"{server.url}/api/v1/models/{name}/aliases/production", json={"version": 1},
                              headers=headers, timeout=10),
        "delete": requests.delete(f"{server.url}/api/v1/models/{name}/versions/1", headers=headers, timeout=10),
        "delete model": requests.delete(f"{server.url}/api/v1/models/{name}", headers=headers, timeout=10),
    }
    for what, answer in answers.items():
        assert answer.status_code == 403, (what, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "cross_site_request", what
        assert "another site" in error["message"] and "Authorization: Bearer" in error["message"]
    assert _versions(server, name) == [1]
    assert _aliases(server, name) == {}
    assert requests.get(f"{server.url}/api/v1/models/evil", timeout=10).status_code == 404


@pytest.mark.parametrize("case", sorted(SAME_SITE))
def test_same_origin_and_header_less_writes_pass(shared_open_server, frozen_graph, case):
    server, name = shared_open_server, _model_name(case)
    headers = _headers(SAME_SITE[case], server)
    assert push(server.url, name, frozen_graph, headers).status_code == 202
    assert push(server.url, name, frozen_graph, headers).status_code == 202
    alias = requests.put(f"{server.url}/api/v1/models/{name}/aliases/production", json={"version": 2},
                         headers=headers, timeout=10)
    assert alias.status_code == 200, alias.text
    deleted = requests.delete(f"{server.url}/api/v1/models/{name}/versions/1", headers=headers, timeout=10)
    assert deleted.status_code == 200, deleted.text
    assert _versions(server, name) == [2] and _aliases(server, name) == {"production": 2}


def test_cross_site_writes_with_a_bearer_token_pass_and_without_one_are_refused_first(secured_server,
                                                                                     frozen_graph):
    server, tokens = secured_server
    write = bearer(tokens["write"])
    cross = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert push(server.url, "cnn", frozen_graph, cross).json()["error"]["code"] == "cross_site_request"
    assert push(server.url, "cnn", frozen_graph, {**cross, **write}).status_code == 202
    assert push(server.url, "cnn", frozen_graph, {**cross, **write}).status_code == 202
    alias = requests.put(f"{server.url}/api/v1/models/cnn/aliases/production", json={"version": 1},
                         headers={**cross, **write}, timeout=10)
    assert alias.status_code == 200, alias.text
    deleted = requests.delete(f"{server.url}/api/v1/models/cnn/versions/2", headers={**cross, **write}, timeout=10)
    assert deleted.status_code == 200, deleted.text
    # Without the token, the cross-site refusal comes before the 401 (whatever the token would be)
    refused = requests.delete(f"{server.url}/api/v1/models/cnn/versions/1", headers=cross, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "cross_site_request"
    # Basic credentials a browser remembers and adds on its own do not count as a token
    basic = requests.delete(f"{server.url}/api/v1/models/cnn/versions/1",
                            headers={**cross, "Authorization": "Basic dXNlcjpwYXNz"}, timeout=10)
    assert basic.status_code == 403 and basic.json()["error"]["code"] == "cross_site_request"
    assert _versions(server, "cnn", write) == [1]


def test_cross_site_refusals_under_v1_keep_tf_serving_error_shape(open_server):
    answer = requests.post(f"{open_server.url}/v1/models/cnn:predict", json={"instances": [[1.0]]},
                           headers={"Origin": "http://evil.example"}, timeout=10)
    assert answer.status_code == 403
    assert isinstance(answer.json()["error"], str) and "another site" in answer.json()["error"]


def test_cross_site_sign_in_and_sign_out_forms_are_refused(secured_server):
    server, tokens = secured_server
    session = requests.Session()
    session.get(f"{server.url}/sign-in", timeout=10)
    login = session.post(f"{server.url}/sign-in", data={"token": tokens["write"]}, allow_redirects=False,
                         headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site",
                                  "Accept": "text/html"}, timeout=10)
    assert login.status_code == 403 and "another site" in login.text


# -- the Host header (DNS rebinding) --------------------------------------------------------------

def _get(url: str, host: str, path: str = "/api/v1/models") -> requests.Response:
    return requests.get(url + path, headers={"Host": host}, timeout=10)


def test_a_rebinding_host_name_is_refused_naming_the_setting(open_server, frozen_graph):
    server = open_server
    port = server.url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"localhost.evil.example:{port}"):
        answer = _get(server.url, host)
        assert answer.status_code == 400, host
        assert answer.json()["error"]["code"] == "host_not_allowed"
        assert "REGISTRY_ALLOWED_HOSTS" in answer.json()["error"]["message"]
    with frozen_graph.open("rb") as f:  # the rebinding page's push
        refused = requests.post(f"{server.url}/api/v1/models/cnn/versions", files={"frozen": f},
                                headers={"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},
                                timeout=10)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "host_not_allowed"
    page = requests.get(server.url + "/", headers={"Host": f"evil.example:{port}", "Accept": "text/html"},
                        timeout=10)
    assert page.status_code == 400 and "REGISTRY_ALLOWED_HOSTS" in page.text
    v1 = _get(server.url, f"evil.example:{port}", "/v1/models/cnn")
    assert v1.status_code == 400 and "REGISTRY_ALLOWED_HOSTS" in v1.json()["error"]
    assert requests.get(f"{server.url}/api/v1/models/cnn", timeout=10).status_code == 404  # nothing pushed


def test_localhost_and_ip_addresses_always_pass(shared_open_server):
    port = shared_open_server.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", "LOCALHOST", "localhost.", f"127.0.0.1:{port}", "127.0.0.2", f"[::1]:{port}",
                 "10.1.2.3:8080", "0.0.0.0"):
        assert _get(shared_open_server.url, host).status_code == 200, host


def test_configured_host_names_pass(tmp_path):
    settings = make_settings(tmp_path / "named", allowed_hosts=("registry.example", "models.internal"))
    server, stop = start_live_server(settings, workers=False)
    try:
        assert _get(server.url, "registry.example:8080").status_code == 200
        assert _get(server.url, "Models.Internal").status_code == 200
        assert _get(server.url, "other.example").status_code == 400
    finally:
        stop()
    server, stop = start_live_server(make_settings(tmp_path / "any", allowed_hosts=("*",)), workers=False)
    try:
        assert _get(server.url, "anything.example").status_code == 200
    finally:
        stop()


def test_allowed_hosts_come_from_the_setting_the_registry_url_and_the_bound_host(monkeypatch):
    from registry.config import Settings

    monkeypatch.setenv("REGISTRY_ALLOWED_HOSTS", " Registry.Example., models.internal ,")
    monkeypatch.setenv("REGISTRY_URL", "https://public.example:8443/")
    settings = Settings.from_env()
    assert settings.allowed_hosts == ("registry.example", "models.internal", "public.example")
    assert settings.bound_to("myhost").allowed_hosts[-1] == "myhost"
    monkeypatch.delenv("REGISTRY_ALLOWED_HOSTS")
    monkeypatch.delenv("REGISTRY_URL")
    assert Settings.from_env().allowed_hosts == ()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_label_service_process_checks_the_host_too(tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "REGISTRY_HOME": str(tmp_path / "label"),
           "REGISTRY_ALLOWED_HOSTS": "labels.internal"}
    env.pop("REGISTRY_DATABASE_URL", None)
    env.pop("REGISTRY_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "registry.cli", "label-serve", "--host", "127.0.0.1",
                                "--port", str(port), "--no-grpc"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, "label-serve did not start"
                time.sleep(0.2)
        refused = _get(url, "evil.example", "/v1/models/cnn")
        assert refused.status_code == 400 and "REGISTRY_ALLOWED_HOSTS" in refused.json()["error"]
        health = _get(url, "evil.example", "/healthz")
        assert health.status_code == 400 and health.json()["error"]["code"] == "host_not_allowed"
        assert _get(url, "labels.internal", "/healthz").status_code == 200
        assert _get(url, f"127.0.0.1:{port}", "/v1/models/cnn").status_code == 404  # past the check: no model
        cross = requests.post(f"{url}/v1/models/cnn:predict", json={"instances": [[1.0]]},
                              headers={"Origin": "http://evil.example"}, timeout=10)
        assert cross.status_code == 403 and "another site" in cross.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- sessions ---------------------------------------------------------------------------------------

def _signed_in(server, token: str) -> requests.Session:
    """A browser-like session signed in through the form."""
    session = requests.Session()
    page = session.get(f"{server.url}/sign-in", timeout=10).text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)
    answer = session.post(f"{server.url}/sign-in", data={"token": token, "csrf_token": csrf}, allow_redirects=False,
                          timeout=10)
    assert answer.status_code == 302, answer.text
    return session


def _csrf(session: requests.Session, url: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', session.get(f"{url}/", timeout=10).text).group(1)


def _web_sessions(server) -> int:
    with server.registry.db.engine.connect() as connection:
        return connection.execute(sa.text("select count(*) from web_sessions")).scalar()


@BOTH_DATABASES
def test_a_copied_session_cookie_stops_working_after_sign_out(secured_server, frozen_graph):
    server, tokens = secured_server
    browser = _signed_in(server, tokens["write"])
    other_browser = _signed_in(server, tokens["write"])  # the same token signed in elsewhere
    copied = {"Cookie": f"registry_session={browser.cookies['registry_session']}"}  # taken while signed in

    def thief(method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, server.url + path, headers={**copied, **kwargs.pop("headers", {})},
                                allow_redirects=False, timeout=10, **kwargs)

    stolen_csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', thief("GET", "/").text).group(1)
    assert thief("GET", "/").status_code == 200
    assert thief("GET", "/api/v1/models").status_code == 200
    assert _web_sessions(server) == 2

    signed_out = browser.post(f"{server.url}/sign-out", data={"csrf_token": _csrf(browser, server.url)},
                              allow_redirects=False, timeout=10)
    assert signed_out.status_code == 302
    assert "registry_session" not in browser.cookies  # the browser forgot it; the server too:
    assert _web_sessions(server) == 1

    page = thief("GET", "/")
    assert page.status_code == 302 and "/sign-in" in page.headers["Location"]
    assert "signed_out=1" in page.headers["Location"]
    assert thief("GET", "/api/v1/models").status_code == 401
    with frozen_graph.open("rb") as f:
        write = thief("POST", "/api/v1/models/cnn/versions", files={"frozen": f},
                      headers={"X-CSRF-Token": stolen_csrf})
    assert write.status_code == 401
    # the other browser's session is its own: still signed in
    assert other_browser.get(f"{server.url}/api/v1/models", timeout=10).status_code == 200


@BOTH_DATABASES
def test_revoking_a_token_ends_its_sessions_on_the_server(secured_server):
    from registry import auth
    from registry.auth.audit import Actor

    server, tokens = secured_server
    browser = _signed_in(server, tokens["write"])
    reader = _signed_in(server, tokens["read"])
    assert _web_sessions(server) == 2
    auth.revoke_token(server.registry.db, "write-token", Actor("tests"))
    assert _web_sessions(server) == 1
    assert browser.get(f"{server.url}/api/v1/models", timeout=10).status_code == 401
    assert reader.get(f"{server.url}/api/v1/models", timeout=10).status_code == 200


# -- next= ------------------------------------------------------------------------------------------

TRICKS = ["/\t/evil.example", "/%09/evil.example", "/\\evil.example", "/%5Cevil.example", "//evil.example",
          "/%2F/evil.example", "/\n/evil.example", "/%0a/evil.example", "/\r\n/evil.example", "\\\\evil.example",
          "https://evil.example/", "javascript:alert(1)", "evil.example", "/\x7f/evil.example", " //evil.example"]


@pytest.mark.parametrize("target", TRICKS)
def test_next_tricks_fall_back_to_the_models_page(shared_secured_server, target):
    server, tokens = shared_secured_server
    session = requests.Session()
    page = session.get(f"{server.url}/sign-in", params={"next": target}, timeout=10)
    assert page.status_code == 200
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)
    answer = session.post(f"{server.url}/sign-in", data={"token": tokens["read"], "next": target,
                                                         "csrf_token": csrf}, allow_redirects=False, timeout=10)
    assert answer.status_code == 302 and answer.headers["Location"] == "/", answer.headers.get("Location")


def test_next_keeps_a_plain_path_on_this_site(shared_secured_server):
    server, tokens = shared_secured_server
    for target in ("/push", "/models/cnn?page_size=5#aliases", "/models/a%20b"):
        session = requests.Session()
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"',
                         session.get(f"{server.url}/sign-in", timeout=10).text).group(1)
        answer = session.post(f"{server.url}/sign-in", data={"token": tokens["read"], "next": target,
                                                             "csrf_token": csrf}, allow_redirects=False, timeout=10)
        assert answer.headers["Location"] == target


# -- no 500s from input -----------------------------------------------------------------------------

@BOTH_DATABASES
def test_unicode_digits_and_huge_numbers_get_a_4xx_naming_the_problem(open_server, frozen_graph):
    server = open_server
    assert push(server.url, "cnn", frozen_graph).status_code == 202
    url = server.url
    cases = [
        ("GET", "/api/v1/models/cnn/versions/²", None, 400, "digits 0-9"),
        ("GET", "/api/v1/models/cnn/versions/١", None, 400, "digits 0-9"),  # Arabic-Indic 1: int() would take it
        ("GET", "/api/v1/models/cnn/versions/²/frozen.pb", None, 400, "digits 0-9"),
        ("PATCH", "/api/v1/models/cnn/versions/²", {"description": "x"}, 400, "digits 0-9"),
        ("DELETE", "/api/v1/models/cnn/versions/²", None, 400, "digits 0-9"),
        ("PUT", "/api/v1/models/cnn/aliases/production", {"version": "²"}, 400, '{"version": 3}'),
        ("GET", f"/api/v1/models/cnn/versions/{HUGE}", None, 404, f"no version {HUGE}"),
        ("GET", f"/api/v1/models/cnn/versions/{'9' * 5000}", None, 404, "no version 999"),  # past int()'s digits
        ("DELETE", f"/api/v1/models/cnn/versions/{HUGE}", None, 404, f"no version {HUGE}"),
        ("PUT", "/api/v1/models/cnn/aliases/production", {"version": int(HUGE)}, 400, "version number from 1"),
        ("PUT", "/api/v1/models/cnn/aliases/production", {"version": HUGE}, 400, "version number from 1"),
        ("PUT", "/api/v1/models/cnn/serving", {"versions": [1, int(HUGE)]}, 400, "version numbers go up to"),
        ("PATCH", "/api/v1/models/cnn/versions/1", {"preprocessing": {"input_mean": int(HUGE)}}, 400,
         "input_mean"),
        ("GET", f"/api/v1/models/cnn/versions?page_token={page_token(int(HUGE))}", None, 400, "page_token"),
        ("GET", f"/api/v1/models/cnn/versions?page_token={page_token(-int(HUGE))}", None, 400, "page_token"),
        ("GET", f"/api/v1/models?page_token={page_token(int(HUGE))}", None, 400, "page_token"),
        ("GET", f"/api/v1/models/cnn/versions?page_token={page_token([[[[]]]])}", None, 400, "page_token"),
        ("GET", "/api/v1/models/cnn/versions?page_token=" + base64.urlsafe_b64encode(
            b"[" * 5000 + b"]" * 5000).decode().rstrip("="), None, 400, "page_token"),
        ("GET", "/v1/models/cnn/versions/²", None, 400, "digits 0-9"),
        ("POST", "/v1/models/cnn/versions/²:label", None, 400, "digits 0-9"),
        ("GET", f"/v1/models/cnn/versions/{HUGE}", None, 404, f"no version {HUGE}"),
    ]
    for method, path, body, status, words in cases:
        answer = requests.request(method, url + path, json=body, timeout=30)
        assert answer.status_code == status, (method, path, answer.status_code, answer.text[:300])
        error = answer.json()["error"]
        message = error if isinstance(error, str) else error["message"]
        assert words in message, (method, path, message)
        assert_still_answers(url)
    assert _versions(server, "cnn") == [1] and _aliases(server, "cnn") == {}


def test_pages_answer_unicode_digits_and_huge_numbers_with_a_4xx(open_server, frozen_graph):
    server = open_server
    assert push(server.url, "cnn", frozen_graph).status_code == 202
    html = {"Accept": "text/html"}
    for path, status in (("/models/cnn/versions/²", 400), (f"/models/cnn/versions/{HUGE}", 404),
                         (f"/models/cnn?page_token={page_token(int(HUGE))}", 400),
                         (f"/?page_token={page_token(int(HUGE))}", 400)):
        answer = requests.get(server.url + path, headers=html, timeout=10)
        assert answer.status_code == status, (path, answer.status_code)
        assert "failed unexpectedly" not in answer.text
        assert_still_answers(server.url)
    # The alias form answers with the model page, naming the problem
    session = requests.Session()
    csrf = _csrf(session, server.url)
    for version, words in (("²", "choose the version"), (HUGE, f"no version {HUGE}")):
        answer = session.post(f"{server.url}/models/cnn/aliases", data={"alias": "production", "version": version,
                                                                         "csrf_token": csrf},
                              headers={"Origin": server.url}, allow_redirects=False, timeout=10)
        assert answer.status_code == 302, (version, answer.status_code)
        page = session.get(server.url + answer.headers["Location"], timeout=10).text
        assert words in page, version
    assert _aliases(server, "cnn") == {}


@BOTH_DATABASES
def test_deeply_nested_json_bodies_get_a_400(secured_server, frozen_graph):
    server, tokens = secured_server
    admin = {**bearer(tokens["admin"]), "Content-Type": "application/json"}
    assert push(server.url, "cnn", frozen_graph, bearer(tokens["write"])).status_code == 202
    for method, path in (("PUT", "/api/v1/models/cnn/aliases/production"), ("PATCH", "/api/v1/models/cnn/versions/1"),
                         ("PUT", "/api/v1/models/cnn/serving"), ("PUT", "/api/v1/models/cnn/allowed-ops"),
                         ("POST", "/api/v1/tokens")):
        for body in (DEEP_JSON, '{"version": ' + DEEP_JSON + "}"):
            answer = requests.request(method, server.url + path, data=body, headers=admin, timeout=30)
            assert answer.status_code == 400, (method, path, answer.status_code)
            assert answer.json()["error"]["code"] == "invalid_json"
            assert "nested too deeply" in answer.json()["error"]["message"]
            assert_still_answers(server.url, admin)


def test_json_bodies_past_a_mebibyte_get_a_413(open_server):
    answer = requests.put(f"{open_server.url}/api/v1/models/cnn/aliases/production",
                          data=json.dumps({"version": 1, "pad": "x" * (2 * 1024 * 1024)}),
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "payload_too_large"
    assert_still_answers(open_server.url)


@BOTH_DATABASES
def test_admin_inputs_get_a_4xx(secured_server):
    server, tokens = secured_server
    admin = bearer(tokens["admin"])
    for ref in ("²", HUGE, "9" * 5000):
        answer = requests.delete(f"{server.url}/api/v1/tokens/{ref}", headers=admin, timeout=10)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "token_not_found", ref
    answer = requests.get(f"{server.url}/api/v1/audit?page_token={page_token(int(HUGE))}", headers=admin, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_page_token"
    page = requests.get(f"{server.url}/audit?page_token={page_token(int(HUGE))}",
                        headers={**admin, "Accept": "text/html"}, timeout=10)
    assert page.status_code == 400
    assert_still_answers(server.url, admin)


def test_a_newline_in_next_never_fails_the_sign_in(secured_server):
    server, tokens = secured_server
    page = requests.get(f"{server.url}/sign-in?next=/%0d%0aSet-Cookie:%20x=1", timeout=10)
    assert page.status_code == 200
    anonymous = requests.get(f"{server.url}/models/cnn%0a", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302 and "\n" not in anonymous.headers["Location"]
    assert_still_answers(server.url, bearer(tokens["read"]))
