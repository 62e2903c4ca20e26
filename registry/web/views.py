"""Page handlers: parse the query, call a service, render a template."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlencode, urlsplit

from flask import abort, redirect, render_template, request, send_from_directory, url_for

from registry import auth, catalog, safety
from registry.auth import audit as audit_log
from registry.auth.access import current_actor, current_caller, sign_in as start_session, sign_out as end_session
from registry.catalog import aliases
from registry.context import get_registry
from registry.entities import READY, Page
from registry.errors import InvalidRequest, NotFound, RegistryError
from registry.evaluation import auto as auto_compare
from registry.evaluation import reports
from registry.evaluation import sets as eval_sets
from registry.pagination import checked_token
from registry.search import search_models, search_versions
from registry.web import bp
from registry.web.charts import metric_charts
from registry.webhooks import hooks
from registry.web.shadow import panels as shadow_panels

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


# a search that reads as a filter: a field, then an operator (tags.team = 'vision', name LIKE 'res%', ...)
FILTER_WORDS = re.compile(r"^\s*\(?\s*(?:NOT\s+)?[A-Za-z_][\w.\-/:\"]*\s*(?:[=<>!]|(?:NOT\s+)?(?:LIKE|ILIKE|IN)\b)",
                          re.IGNORECASE)
EMPTY_PAGE = Page([], None)


@bp.get("/")
def models():
    """Models by name; a search that reads as a filter (tags.team = 'vision') runs the filter grammar."""
    query = request.args.get("q", "").strip()
    error, is_filter = None, bool(query and FILTER_WORDS.search(query))
    token = _page_token()
    if is_filter:
        try:
            page = search_models(get_registry().db, query, page_size=_page_size(), page_token=token)
        except InvalidRequest as exc:
            page, error = EMPTY_PAGE, exc.message
    else:
        page = catalog.list_models(get_registry().db, page_size=_page_size(), page_token=token, query=query or None)
    return render_template("models.html", page=page, query=query, next_url=_next_url(page), search_error=error,
                           is_filter=is_filter)


@bp.get("/models/<name>")
def model(name: str):
    """The model, its versions (those a filter finds, with ?filter=), its aliases' rules and timelines."""
    registry = get_registry()
    info = catalog.get_model(registry.db, name)
    wanted = request.args.get("filter", "").strip()
    error, token = None, _page_token()
    if wanted:
        scoped = f"name = '{name}' AND ({wanted})"  # model names hold no quote (MODEL_NAME_RE)
        try:
            page = search_versions(registry.db, scoped, page_size=_page_size(), page_token=token)
        except InvalidRequest as exc:
            page, error = EMPTY_PAGE, _unscoped(exc.message, name)
    else:
        page = catalog.list_versions(registry.db, name, page_size=_page_size(), page_token=token, summary=True)
    rules = {r.alias: r for r in aliases.alias_rules(registry.db, name)}
    timelines = {a: moves for a in sorted(set(info.aliases) | set(rules))
                 if (moves := _recent_moves(registry.db, name, a))}
    latest: dict[str, object] = {}
    for report in reports.list_reports(registry.db, name, page_size=50).items:  # newest first
        if report.eval_set and report.status == reports.DONE:
            latest.setdefault(report.eval_set["name"], report)
    return render_template("model.html", model=info, page=page, next_url=_next_url(page),
                           alias_error=request.args.get("alias_error"), shadows=shadow_panels(registry.db, name),
                           rules=rules, timelines=timelines, version_filter=wanted, search_error=error,
                           latest_reports=latest, charts=metric_charts(registry.db, name, info.aliases),
                           may_write=_may_write(), tag_error=request.args.get("tag_error"))


def _recent_moves(db, name: str, alias: str) -> list:
    """The alias's last moves, newest first (none for a rule set on an alias never placed)."""
    try:
        return aliases.alias_history(db, name, alias, page_size=8).items
    except NotFound:
        return []


def _unscoped(message: str, name: str) -> str:
    """A filter error's column counted in what the visitor typed, not in the scoped filter."""
    offset = len(f"name = '{name}' AND (")
    match = re.search(r"at column (\d+)", message)
    if not match:
        return message
    column = max(1, int(match.group(1)) - offset)
    return message[:match.start(1)] + str(column) + message[match.end(1):]


@bp.post("/models/<name>/aliases")
def set_alias(name: str):
    alias = request.form.get("alias", "").strip()
    version = request.form.get("version", "").strip()
    reason = request.form.get("reason", "").strip()
    try:
        if request.form.get("action") == "delete":
            catalog.delete_alias(get_registry().db, name, alias, actor=current_actor(), reason=reason)
        else:
            if not (version.isascii() and version.isdecimal()):  # '²'.isdigit(), but int('²') fails
                raise RegistryError("choose the version the alias should point at", status=400)
            number = catalog.version_number(version)
            if number > catalog.MAX_VERSION:
                raise RegistryError(f"model {name!r} has no version {version}", status=404)
            catalog.set_alias(get_registry().db, name, alias, number, actor=current_actor(), reason=reason)
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
                           prediction_error=request.args.get("prediction_error"),
                           tag_error=request.args.get("tag_error"),
                           comparisons=auto_compare.verdicts(get_registry().db, record))


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


@bp.post("/models/<name>/versions/<ref>/tags")
def set_tags(name: str, ref: str):
    """Set a tag (key and value) or remove one (action=delete) from the version page."""
    return _tag_form(name, ref, url_for("web.version", name=name, ref=ref))


@bp.post("/models/<name>/tags")
def set_model_tags(name: str):
    """Set or remove one of the model's tags from the model page."""
    return _tag_form(name, None, url_for("web.model", name=name))


def _tag_form(name: str, ref: str | None, page: str):
    key = request.form.get("key", "").strip()
    value = None if request.form.get("action") == "delete" else request.form.get("value", "")
    try:
        catalog.set_tags(get_registry().db, name, {key: value}, ref=ref, actor=current_actor())
    except RegistryError as exc:
        if exc.status >= 500 or exc.status == 404:
            raise
        return redirect(f"{page}?{urlencode({'tag_error': exc.message, 'key': key})}#tags")
    return redirect(page + "#tags")


@bp.get("/models/<name>/comparisons/<int:report_id>")
def comparison(name: str, report_id: int):
    """A stored comparison report's permalink: what ran on what, and every figure."""
    registry = get_registry()
    report = reports.get(registry.db, name, report_id)
    set_format = None
    if report.eval_set and not report.eval_set.get("deleted"):
        try:
            set_format = eval_sets.get_eval_set(registry.db, name, report.eval_set["name"],
                                                report.eval_set["revision"]).format
        except NotFound:
            set_format = None
    return render_template("comparison.html", report=report, set_format=set_format)


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
    return render_template("compare.html", model=info, versions=ready, chosen=chosen, samples=samples,
                           eval_sets=eval_sets.list_eval_sets(registry.db, name))


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


@bp.get("/webhooks")
def webhooks():
    """Each hook's last deliveries, newest first, with a redeliver button (admin)."""
    db = get_registry().db
    listed = [(hook, hooks.list_deliveries(db, hook.id, page_size=20).items) for hook in hooks.list_hooks(db)]
    return render_template("webhooks.html", hooks=listed, error=request.args.get("error"))


@bp.post("/webhooks/<int:hook_id>/deliveries/<int:delivery_id>/redeliver")
def redeliver(hook_id: int, delivery_id: int):
    try:
        hooks.redeliver(get_registry().db, hook_id, delivery_id, actor=current_actor())
    except RegistryError as exc:
        if exc.status >= 500:
            raise
        return redirect(url_for("web.webhooks", error=exc.message))
    return redirect(url_for("web.webhooks") + f"#hook-{hook_id}")


@bp.get("/audit")
def audit():
    page = audit_log.list_events(get_registry().db, page_size=_page_size(), page_token=_page_token(),
                             action=request.args.get("action") or None)
    return render_template("audit.html", page=page, next_url=_next_url(page), action=request.args.get("action", ""))
