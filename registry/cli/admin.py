"""Commands that run against the registry's database and blob storage directly (where they are
reachable, with the same REGISTRY_* settings): ``token``, ``gc``, ``export-serving``,
``saved-models``; and ``serving-reload``, which sends an export's models.config to a TF Serving."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click
import grpc
from click.core import ParameterSource
from google.protobuf import text_format

from registry import auth, catalog
from registry.cli import local
from registry.cli.options import connect, url_option
from registry.cli.output import print_plan, table
from registry.native_logs import held_back as native_logs_hidden
from registry.client import RegistryClient
from registry.config import Settings
from registry.jobs.gc import collect_garbage
from registry.jobs.worker import build_saved_model
from registry.tfserving import WouldEmptyConfig, open_target, sync


@click.group()
def token() -> None:
    """Create, list and revoke API tokens: in the database (run it where the registry's database is
    reachable, with the same REGISTRY_* settings; the first admin token comes from here), or with --url
    (or REGISTRY_URL) and an admin --token (or REGISTRY_TOKEN) through the registry's HTTP API."""


def _token_client() -> RegistryClient | None:
    """The HTTP client when the command was given a registry URL and a token; None: use the database.

    REGISTRY_URL alone (set for the HTTP commands) keeps the database, so the first admin token can
    still be made where the database is; an explicit --url without a token is refused."""
    ctx = click.get_current_context()
    url = ctx.params.get("url")
    if not url:
        return None
    if not ctx.meta.get("registry.token"):
        if ctx.get_parameter_source("url") == ParameterSource.ENVIRONMENT:
            return None
        raise click.UsageError("managing tokens over HTTP needs an admin token: add --token rgt_... (or set "
                               "REGISTRY_TOKEN); the first admin token is made where the database is, with "
                               "registry token create --name NAME --scope admin (no --url)")
    return connect(url)


@token.command("create")
@click.option("--name", required=True, help="What the token is for (unique among active tokens), e.g. ci.")
@click.option("--scope", type=click.Choice(["read", "write", "promote", "admin"]), default="read", show_default=True,
              help="read: pull, list, label; write: also push, alias, edit; promote: also move protected aliases; "
                   "admin: also tokens, audit log, alias rules.")
@url_option
def token_create(name: str, scope: str, url: str | None) -> None:
    """Create a token; it is printed once, alone on the last line, and never stored."""
    client = _token_client()
    if client is not None:
        made = client.create_token(name, scope)
        click.echo(f"token {made['name']!r} (id {made['id']}, {made['scope']} scope) created on {client.url}; "
                   "it is shown only now:", err=True)
        click.echo(made["token"])
        return
    settings = local.settings()
    db = local.database(settings)
    # REGISTRY_AUTH=auto on the embedded default: writes are open until the first token exists
    closes_writes = settings.auth == "auto" and settings.embedded and not auth.any_token_created(db)
    info, secret = auth.create_token(db, name, scope, local.actor())
    click.echo(f"token {info.name!r} (id {info.id}, {info.scope} scope) created; it is shown only now:", err=True)
    if closes_writes:
        click.echo("this is the registry's first token, so writes without a token are now closed: push, alias, "
                   "edit and delete need a write token (--token or REGISTRY_TOKEN)"
                   + ("; reading stays open" if settings.public_read else ""), err=True)
    click.echo(secret)


@token.command("revoke")
@click.argument("name_or_id")
@url_option
def token_revoke(name_or_id: str, url: str | None) -> None:
    """Revoke a token by name (the active one) or id; requests with it fail at once."""
    client = _token_client()
    if client is not None:
        revoked = client.revoke_token(name_or_id)
        click.echo(f"token {revoked['name']!r} (id {revoked['id']}) revoked")
        return
    info = auth.revoke_token(local.database(local.settings()), name_or_id, local.actor())
    click.echo(f"token {info.name!r} (id {info.id}) revoked")


@token.command("ls")
@url_option
def token_ls(url: str | None) -> None:
    """List tokens (never the tokens themselves)."""

    def when(value) -> str:
        if value is None:
            return "-"
        return (value if isinstance(value, datetime) else datetime.fromisoformat(value)).strftime("%Y-%m-%d %H:%M")

    client = _token_client()
    rows = client.list_tokens() if client is not None else [
        {**{k: getattr(t, k) for k in ("id", "name", "scope", "created_at", "last_used_at", "revoked_at")},
         "prefix": f"{auth.TOKEN_PREFIX}{t.prefix}"} for t in auth.list_tokens(local.database(local.settings()))]
    table(("ID", "NAME", "SCOPE", "PREFIX", "CREATED", "LAST USED", "REVOKED"),
          [(str(t["id"]), t["name"], t["scope"], t["prefix"], when(t["created_at"]), when(t["last_used_at"]),
            when(t["revoked_at"])) for t in rows])


@click.command()
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option("--grace", type=float, default=None,
              help="Seconds an unreferenced blob or temporary upload must be old to go "
                   "(REGISTRY_GC_GRACE_SECONDS, default 3600).")
def gc(dry_run: bool, grace: float | None) -> None:
    """Remove blobs no version refers to and stale temporary uploads; report what was freed."""
    settings, db, storage = local.services()
    report = collect_garbage(db, storage, dry_run=dry_run,
                             grace_seconds=settings.gc_grace_seconds if grace is None else grace)
    click.echo(report.summary())
    if report.missing:
        sys.exit(1)


def _serving_root(root: str | None) -> str:
    """``--root``, else REGISTRY_SERVING_EXPORT_ROOT; a usage error when neither is set."""
    root = root or Settings.from_env().serving_export_root
    if not root:
        raise click.UsageError("give --root PATH (a folder or s3://bucket/prefix) or set REGISTRY_SERVING_EXPORT_ROOT")
    return root


@click.command("export-serving")
@click.option("--root", default=None, help="TF Serving model base path: a folder or s3://bucket/prefix "
                                           "(default REGISTRY_SERVING_EXPORT_ROOT).")
@click.option("--base-path", default=None,
              help="The root as TF Serving sees it, for base_path in models.config (default REGISTRY_SERVING_BASE_PATH, "
                   "else the root itself), e.g. /models inside a container.")
@click.option("--allow-empty", is_flag=True,
              help="Replace a models.config that lists models with one that lists none (TF Serving then "
                   "unloads every model); without it such an export is refused and changes nothing.")
def export_serving(root: str | None, base_path: str | None, allow_empty: bool) -> None:
    """Export every served version as a SavedModel in TF Serving's layout, and write models.config.

    Layout: ROOT/MODEL/VERSION/saved_model.pb + variables/, each version folder appearing only when
    complete; versions no longer served are removed.  Runs against the database and blob storage
    (like 'registry worker').
    """
    root = _serving_root(root)
    settings, db, storage = local.services()
    try:
        report = sync(settings, db, storage, root, base_path, allow_empty=allow_empty)
    except WouldEmptyConfig as exc:
        raise click.ClickException(
            f"{exc.config_path} lists {exc.listed} model(s), but the registry at {local.where(settings)} serves "
            "none: not replacing it with an empty config (TF Serving would unload every model). Wrong registry? "
            "Set REGISTRY_HOME or REGISTRY_DATABASE_URL; to empty it, run 'registry export-serving "
            "--allow-empty'") from None
    click.echo(f"exported to {report.root}: {len(report.published)} version(s) published, "
               f"{len(report.removed)} removed; config {report.config_path}")
    for item in report.published:
        click.echo(f"  + {item}")
    for item in report.removed:
        click.echo(f"  - {item}")
    for item in report.pending:
        click.echo(f"  … {item}: its SavedModel is still being built by a worker; run this again in a moment "
                   "(a running registry exports it by itself)")
    print_plan(report.models)
    for failure in report.failed:
        click.echo(f"  FAILED {failure['version']}: {failure['error']}", err=True)
    if report.failed:
        sys.exit(1)


@click.command("saved-models")
@click.argument("name", required=False)
def saved_models(name: str | None) -> None:
    """Build the SavedModel of every ready version (of NAME) frozen before SavedModels were built."""
    settings, db, storage = local.services()
    names = [name] if name else [m.name for m in _all(lambda token: catalog.list_models(
        db, page_size=catalog.MAX_PAGE_SIZE, page_token=token))]
    built = failed = 0
    for model in names:
        for version in _all(lambda token: catalog.list_versions(db, model, page_size=100, page_token=token,
                                                                  status="ready")):
            if version.file("saved_model"):
                continue
            try:
                build_saved_model(settings, db, storage, version)
                built += 1
                click.echo(f"  {model} v{version.version}: SavedModel built")
            except Exception as exc:
                failed += 1
                click.echo(f"  {model} v{version.version}: FAILED: {exc}", err=True)
    click.echo(f"{built} SavedModel(s) built, {failed} failed")
    if failed:
        sys.exit(1)


def _all(fetch):
    """Every item of a paged listing: ``fetch(page_token)`` returns one page."""
    token = None
    while True:
        page = fetch(token)
        yield from page.items
        token = page.next_page_token
        if not token:
            return


def _reload_failure(target: str, timeout: float, exc: grpc.RpcError) -> str:
    """Why a reload did not happen: TF Serving unreachable, another kind of server there, or a refusal."""
    code, details = exc.code(), exc.details() or ""
    grpc_port = "its gRPC port (tensorflow_model_server --port, 8500 by default; not --rest_api_port)"
    if code == grpc.StatusCode.UNAVAILABLE and "HTTP/2" in details:
        return f"{target} answered, but not as a gRPC server (an HTTP port?): give --target {grpc_port}"
    if code == grpc.StatusCode.UNAVAILABLE:
        cause = "connection refused" if "refused" in details.lower() else details.rsplit(": ", 1)[-1]
        return f"could not reach TF Serving at {target} ({cause}): is it running, and is that {grpc_port}?"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"TF Serving at {target} did not answer within {timeout:g} s: retry with a longer --timeout"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{target} speaks gRPC but has no TF Serving ModelService: give --target {grpc_port}"
    return f"TF Serving at {target} refused the config: {code.name}: {details}"


@click.command("serving-reload")
@click.option("--target", required=True, help="TF Serving's gRPC address, host:8500.")
@click.option("--root", default=None, help="Export root whose models.config to send (default "
                                           "REGISTRY_SERVING_EXPORT_ROOT).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Send this models.config instead.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for TF Serving's answer.")
@click.option("--token", envvar="REGISTRY_TOKEN", default=None, metavar="TOKEN",
              help="API token with write scope, sent as gRPC metadata authorization: Bearer (REGISTRY_TOKEN); "
                   "for the registry's own gRPC server (TF Serving ignores it).")
def serving_reload(target: str, root: str | None, config_file: Path | None, timeout: float,
                   token: str | None) -> None:
    """Send the complete models.config to a running TF Serving (ModelService.HandleReloadConfigRequest)."""
    # TF Serving's API protos import TensorFlow's (status_pb2): only this command loads them
    with native_logs_hidden():
        from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    if config_file is not None:
        text = config_file.read_text()
    else:
        text = open_target(_serving_root(root)).read_config()
        if text is None:
            raise click.ClickException("the export root has no models.config yet: run 'registry export-serving'")
    request = model_management_pb2.ReloadConfigRequest()
    try:
        text_format.Parse(text, request.config)
    except text_format.ParseError as exc:
        raise click.ClickException(f"models.config does not parse: {exc}") from None
    with grpc.insecure_channel(target) as channel:
        try:
            response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, timeout=timeout, metadata=[("authorization", f"Bearer {token}")] if token else None)
        except grpc.RpcError as exc:
            raise click.ClickException(_reload_failure(target, timeout, exc)) from None
    if response.status.error_code:
        raise click.ClickException(f"TF Serving at {target} refused the config: {response.status.error_message}")
    models = request.config.model_config_list.config
    click.echo(f"TF Serving at {target} reloaded its config: {len(models)} model(s)")
    for m in models:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(m.version_labels.items())) or "none"
        click.echo(f"  {m.name}: versions {', '.join(map(str, m.model_version_policy.specific.versions))}; "
                   f"labels {labels}")
