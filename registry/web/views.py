"""Page handlers: parse the query, call a service, render a template."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from flask import abort, redirect, render_template, request, send_from_directory, url_for

from registry import auth, catalog, safety
from registry.auth import audit as audit_log
from registry.auth.access import current_actor, current_caller, sign_in as start_session, sign_out as end_session
from registry.context import get_registry
from registry.entities import READY
from registry.errors import RegistryError
from registry.pagination import checked_token
from registry.web import bp

PAGE_SIZE = 25


def _page_size() -> int:
    try:
        return max(1, min(200, int(request.args.get("page_size", PAGE_SIZE))))
    except ValueError:
        return PAGE_SIZE


def _page_token() -> str | None:
    return checked_token(request.args.get("page_token"))


def _next_url(page) -> str | None:
    """This page's URL with the next page's token."""
    if not page.next_page_token:
        return None
    args = {**request.args.to_dict(), "page_token": page.next_page_token}
    return url_for(request.endpoint, **(request.view_args or {}), **args)


@bp.get("/")
def models():
    query = request.args.get("q", "").strip()
    page = catalog.list_models(get_registry().db, page_size=_page_size(), page_token=_page_token(),
                               query=query or None)
    return render_template("models.html", page=page, query=query, next_url=_next_url(page))


@bp.get("/models/<name>")
def model(name: str):
    registry = get_registry()
    info = catalog.get_model(registry.db, name)
    page = catalog.list_versions(registry.db, name, page_size=_page_size(),
                                 page_token=_page_token(), summary=True)
    return render_template("model.html", model=info, page=page, next_url=_next_url(page),
                           alias_error=request.args.get("alias_error"))


@bp.post("/models/<name>/aliases")
def set_alias(name: str):
    alias = request.form.get("alias", "").strip()
    version = request.form.get("version", "").strip()
    try:
        if request.form.get("action") == "delete":
            catalog.delete_alias(get_registry().db, name, alias, actor=current_actor())
        else:
            if not (version.isascii() and version.isdecimal()):  # '²'.isdigit(), but int('²') fails
                raise RegistryError("choose the version the alias should point at", status=400)
            number = catalog.version_number(version)
            if number > catalog.MAX_VERSION:
                raise RegistryError(f"model {name!r} has no version {version}", status=404)
            catalog.set_alias(get_registry().db, name, alias, number, actor=current_actor())
    except RegistryError as exc:
        if exc.status >= 500:
            raise
        return redirect(url_for("web.model", name=name, alias_error=exc.message, alias=alias, version=version)
                        + "#aliases")
    get_registry().serving_changed()
    return redirect(url_for("web.model", name=name) + "#aliases")


def _may_write() -> bool:
    """Whether this visitor may change the catalog (forms are shown to those who may send them)."""
    registry = get_registry()
    caller = current_caller()
    granted = caller.token.scope if caller.token else None
    return auth.allows(granted, auth.WRITE) or auth.anonymous_allowed(registry.settings, registry.db, auth.WRITE)


@bp.get("/models/<name>/versions/<ref>")
def version(name: str, ref: str):
    record = catalog.get_version(get_registry().db, name, ref)
    return render_template("version.html", v=record, server_url=request.host_url.rstrip("/"),
                           safety=safety.summary(record.conversion, record.allowed_ops) or {},
                           report=catalog.signature_report(record), may_write=_may_write(),
                           prediction_error=request.args.get("prediction_error"))


@bp.post("/models/<name>/versions/<ref>/prediction-output")
def set_prediction_output(name: str, ref: str):
    try:
        record = catalog.set_prediction_output(get_registry().db, name, ref, request.form.get("node", ""),
                                               reason=request.form.get("reason", "").strip(), actor=current_actor())
    except RegistryError as exc:
        if exc.status >= 500 or exc.status == 404:
            raise
        return redirect(url_for("web.version", name=name, ref=ref, prediction_error=exc.message)
                        + "#prediction-output")
    return redirect(url_for("web.version", name=name, ref=record.version) + "#prediction-output")


@bp.get("/push")
def push():
    return render_template("push.html", name=request.args.get("model", ""))


@bp.get("/models/<name>/compare")
def compare(name: str):
    registry = get_registry()
    info = catalog.get_model(registry.db, name)
    ready = catalog.list_versions(registry.db, name, status=READY, page_size=50).items
    chosen = {v.version for v in ready[:2]} | set(info.aliases.values())
    samples = _demo_samples() if name == "digits" else []
    return render_template("compare.html", model=info, versions=ready, chosen=chosen, samples=samples)


def _demo_folder():
    return get_registry().settings.home / "demo"


def _demo_samples() -> list[dict]:
    folder = _demo_folder()
    expected_file = folder / "expected.txt"
    if not expected_file.is_file():
        return []
    expected = [line.strip() for line in expected_file.read_text().splitlines() if line.strip()]
    images = sorted(p.name for p in folder.glob("*.png"))
    return [{"name": n, "expected": e} for n, e in zip(images, expected)]


@bp.get("/demo/<path:filename>")
def demo_file(filename: str):
    if not filename.endswith(".png"):
        abort(404)
    return send_from_directory(_demo_folder(), filename)


# -- signing in ------------------------------------------------------------------------------

def _local_path(target: str | None) -> str:
    r"""``target`` if it is a plain path on this site, else the models page (no open redirects).

    Browsers drop tabs and newlines from a URL and read a backslash as a slash, so ``/\t/evil.example``
    and ``/\evil.example`` would lead to another site: any control character, backslash or leading
    ``//``, in the path as sent or percent-decoded, sends the visitor to the models page instead."""
    fallback = url_for("web.models")
    if not target or not target.startswith("/"):
        return fallback
    decoded = unquote(target)
    for text in (target, decoded):
        if text.startswith("//") or "\\" in text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            return fallback
    try:
        parts = urlsplit(target)
    except ValueError:
        return fallback
    if parts.scheme or parts.netloc:
        return fallback
    return target


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    next_url = request.values.get("next", "")
    if request.method == "GET":
        return render_template("sign_in.html", next_url=next_url, error=None,
                               signed_out=bool(request.args.get("signed_out")))
    token = request.form.get("token", "").strip()
    try:
        if not token:
            raise RegistryError("paste a token (an admin creates one with `registry token create`)", status=400)
        info = auth.verify(get_registry().db, token)
    except RegistryError as exc:
        return render_template("sign_in.html", next_url=next_url, error=exc.message, signed_out=False), 400
    start_session(info)
    return redirect(_local_path(next_url))


@bp.post("/sign-out")
def sign_out():
    end_session()
    return redirect(url_for("web.models"))


@bp.get("/audit")
def audit():
    page = audit_log.list_events(get_registry().db, page_size=_page_size(), page_token=_page_token(),
                             action=request.args.get("action") or None)
    return render_template("audit.html", page=page, next_url=_next_url(page), action=request.args.get("action", ""))
