"""The ``registry`` command: run the server and worker, push, pull and list."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import click

from registry.config import DEFAULT_PORT, Settings


def _client(url: str | None):
    from registry.client import RegistryClient

    token = click.get_current_context().meta.get("registry.token")
    return RegistryClient(url or Settings.from_env().server_url, token=token)


def _fail(exc: Exception) -> None:
    raise click.ClickException(getattr(exc, "message", str(exc)))


def _remember_token(ctx: click.Context, _param, value: str | None) -> None:
    if value:
        ctx.meta["registry.token"] = value


def url_option(command):
    """``--url`` (REGISTRY_URL) and ``--token`` (REGISTRY_TOKEN) for commands that talk to a registry."""
    command = click.option("--token", envvar="REGISTRY_TOKEN", default=None, expose_value=False,
                           callback=_remember_token, metavar="TOKEN",
                           help="API token, sent as Authorization: Bearer (REGISTRY_TOKEN).")(command)
    return click.option("--url", envvar="REGISTRY_URL", default=None,
                        help=f"Registry URL (REGISTRY_URL; default http://127.0.0.1:{DEFAULT_PORT}).")(command)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """A model registry for TensorFlow checkpoints and frozen graphs."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _serve_http(app, host: str, port: int, title: str, lines: list[str], grpc_port: int | None = None) -> None:
    """Run ``app`` on a threaded HTTP server (and the gRPC API beside it) until stopped."""
    from werkzeug.serving import make_server

    registry = app.extensions["registry"]
    grpc_server = None
    if grpc_port is not None:
        from registry.serving.grpc_server import start_grpc_server

        try:
            grpc_server, grpc_port = start_grpc_server(registry, host, grpc_port)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
    server = make_server(host, port, app, threaded=True)
    url = f"http://{host}:{server.port}"
    click.echo(f"{title} listening on {url}")
    if grpc_server is not None:
        click.echo(f"  TensorFlow Serving gRPC API on {host}:{grpc_port}")
    for line in lines:
        click.echo(line.format(url=url))
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        registry.stop_workers.set()
        if grpc_server is not None:
            grpc_server.stop(grace=2)


def _create_app(settings: Settings, **options):
    """The app, or a one-line error (a missing bucket, an unreachable database) instead of a traceback."""
    from registry.app import create_app
    from registry.errors import RegistryError

    try:
        return create_app(settings, **options)
    except RegistryError as exc:
        raise click.ClickException(exc.message) from None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@click.option("--workers", type=int, default=None,
              help="Converter threads inside the server (REGISTRY_EMBEDDED_WORKERS, default 1; 0 for none).")
@click.option("--grpc-port", type=int, default=None,
              help="Also serve TensorFlow Serving's gRPC API on this port (off by default).")
@click.option("--no-demo", is_flag=True,
              help="Do not seed the demo model 'digits' on first start (REGISTRY_DEMO=0).")
@click.option("--gunicorn", "use_gunicorn", is_flag=True,
              help="Serve with gunicorn (several processes, registry.wsgi:app); converter workers then run "
                   "separately as 'registry worker'.")
@click.option("--processes", type=int, default=2, show_default=True, help="gunicorn worker processes (--gunicorn).")
@click.option("--threads", type=int, default=8, show_default=True, help="Threads per gunicorn process (--gunicorn).")
def serve(host: str, port: int, workers: int | None, grpc_port: int | None, no_demo: bool,
          use_gunicorn: bool, processes: int, threads: int) -> None:
    """Run the registry: API, label service and embedded converter workers, in one process.

    With --gunicorn: the API and label service in several gunicorn processes, and
    converter workers as a separate 'registry worker' service.
    """
    from registry.demo import start_seeding

    overrides = {"embedded_workers": workers} if workers is not None else {}
    if no_demo:
        overrides["demo"] = False
    if use_gunicorn:
        _serve_gunicorn(host, port, workers, grpc_port, processes, threads, no_demo)
        return
    settings = Settings.from_env(**overrides).bound_to(host)
    app = _create_app(settings, start_workers=True)
    lines = [
        f"  data: {settings.database_url}  blobs: {settings.storage_url}",
        "  label service (TF Serving REST): {url}/v1/models/NAME",
        "  try:  REGISTRY_URL={url} registry push NAME path/to/model.ckpt --wait",
    ]
    if start_seeding(app.extensions["registry"]) is not None:
        lines.append("  demo: preparing model 'digits' in the background (trained now on scikit-learn's 8x8 "
                     "digits; --no-demo or REGISTRY_DEMO=0 turns it off)")
    _serve_http(app, host, port, "Registry", lines, grpc_port)


def _serve_gunicorn(host: str, port: int, workers: int | None, grpc_port: int | None,
                    processes: int, threads: int, no_demo: bool) -> None:
    """Replace this process with gunicorn serving ``registry.wsgi:app`` (no embedded converters, no demo)."""
    import os

    if workers:
        raise click.UsageError("--workers does not go with --gunicorn: run 'registry worker' beside it")
    if grpc_port is not None:
        raise click.UsageError("--grpc-port does not go with --gunicorn: run 'registry label-serve' for gRPC")
    if processes < 1 or threads < 1:
        raise click.UsageError("--processes and --threads must be at least 1")
    if not _has_module("gunicorn"):
        raise click.ClickException("gunicorn is not installed: pip install 'gunicorn>=22'")
    settings = Settings.from_env(embedded_workers=0)
    # Migrate (and check the database and blob storage) once here, so the
    # gunicorn processes do not race each other through the migrations.
    _create_app(settings)
    click.echo(f"Registry (gunicorn, {processes} processes x {threads} threads) on http://{host}:{port}")
    click.echo(f"  data: {settings.database_url}  blobs: {settings.storage_url}")
    click.echo("  no embedded converter workers: run 'registry worker' (any number) to freeze pushed versions")
    if settings.demo and not no_demo:
        click.echo("  demo model: not seeded under --gunicorn (run 'registry serve' once without it to seed it)")
    sys.stdout.flush()
    # the gunicorn processes build their settings from the environment: they answer to --host too
    env = dict(os.environ, REGISTRY_EMBEDDED_WORKERS="0",
               REGISTRY_ALLOWED_HOSTS=",".join(settings.bound_to(host).allowed_hosts))
    argv = [sys.executable, "-m", "gunicorn", "-b", f"{host}:{port}", "-w", str(processes),
            "--threads", str(threads), "-k", "gthread",
            "--timeout", "0",  # uploads and label requests can take long; no worker watchdog kill
            "--access-logfile", "-"]
    if _gunicorn_has_setting("control_socket_disable"):
        # newer gunicorn (27 here) opens a control socket under $HOME by default: one path shared by
        # every instance, and $HOME may not be writable (containers).
        argv.append("--no-control-socket")
    argv.append("registry.wsgi:app")
    os.execvpe(sys.executable, argv, env)


def _gunicorn_has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(setting.name == name for setting in KNOWN_SETTINGS)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@main.command("label-serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8501, show_default=True, type=int, help="REST port (TF Serving's is 8501).")
@click.option("--grpc-port", default=8500, show_default=True, type=int, help="gRPC port (TF Serving's is 8500).")
@click.option("--no-grpc", is_flag=True, help="Serve REST only.")
def label_serve(host: str, port: int, grpc_port: int, no_grpc: bool) -> None:
    """Run a label service alone (any number of them): TF Serving's REST and gRPC APIs, :label, :compare."""
    app = _create_app(Settings.from_env().bound_to(host), serving_only=True)
    _serve_http(app, host, port, "Label service", [], None if no_grpc else grpc_port)


@main.command()
def migrate() -> None:
    """Apply database migrations up to the newest."""
    from registry.db import Database

    settings = Settings.from_env()
    settings.ensure_home()
    Database(settings.database_url).upgrade()
    click.echo(f"database at head: {settings.database_url}")


@main.group()
def token() -> None:
    """Create, list and revoke API tokens, straight in the database (run it where the registry's
    database is reachable, with the same REGISTRY_* settings; the first admin token comes from here)."""


def _local_db():
    from registry.db import Database

    settings = Settings.from_env()
    settings.ensure_home()
    db = Database(settings.database_url)
    db.upgrade()
    return db


def _local_actor():
    import getpass

    from registry.audit import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", None, "local")


@token.command("create")
@click.option("--name", required=True, help="What the token is for (unique among active tokens), e.g. ci.")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True,
              help="read: pull, list, label; write: also push, alias, edit; admin: also tokens and audit log.")
def token_create(name: str, scope: str) -> None:
    """Create a token; it is printed once, alone on the last line, and never stored."""
    from registry import auth
    from registry.errors import RegistryError

    try:
        info, secret = auth.create_token(_local_db(), name, scope, _local_actor())
    except RegistryError as exc:
        _fail(exc)
    click.echo(f"token {info.name!r} (id {info.id}, {info.scope} scope) created; it is shown only now:", err=True)
    click.echo(secret)


@token.command("revoke")
@click.argument("name_or_id")
def token_revoke(name_or_id: str) -> None:
    """Revoke a token by name (the active one) or id; requests with it fail at once."""
    from registry import auth
    from registry.errors import RegistryError

    try:
        info = auth.revoke_token(_local_db(), name_or_id, _local_actor())
    except RegistryError as exc:
        _fail(exc)
    click.echo(f"token {info.name!r} (id {info.id}) revoked")


@token.command("ls")
def token_ls() -> None:
    """List tokens (never the tokens themselves)."""
    from registry import auth

    def when(dt):
        return dt.strftime("%Y-%m-%d %H:%M") if dt else "-"

    _table(("ID", "NAME", "SCOPE", "PREFIX", "CREATED", "LAST USED", "REVOKED"),
           [(str(t.id), t.name, t.scope, f"rgt_{t.prefix}", when(t.created_at), when(t.last_used_at),
             when(t.revoked_at)) for t in auth.list_tokens(_local_db())])


@main.command()
@click.option("--once", is_flag=True, help="Process the jobs waiting now, then exit.")
def worker(once: bool) -> None:
    """Run a converter worker (any number of them, anywhere)."""
    from registry.db import Database
    from registry.storage import open_storage
    from registry.worker import Worker

    from registry.errors import RegistryError

    settings = Settings.from_env()
    settings.ensure_home()
    db = Database(settings.database_url)
    db.upgrade()
    try:
        storage = open_storage(settings.storage_url)
    except RegistryError as exc:
        raise click.ClickException(exc.message) from None
    exporter = None
    if settings.serving_export_root:
        from registry.serving_export import ExportSyncer

        exporter = ExportSyncer(settings, db, storage)
    w = Worker(settings, db, storage, on_ready=exporter.request if exporter else None)
    if once:
        from registry.worker import remove_stale_workdirs

        remove_stale_workdirs()
        while w.run_once():
            pass
        if exporter is not None:
            exporter.wait_idle(timeout=settings.convert_timeout_seconds)
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"worker {w.owner} waiting for jobs")
    try:
        w.run_forever(stop)
    except KeyboardInterrupt:
        pass


@main.command()
def check() -> None:
    """Exit 0 when the database and blob storage answer (a health check for workers), else 1."""
    from registry.db import Database
    from registry.health import readiness
    from registry.storage import open_storage

    settings = Settings.from_env()
    db = Database(settings.database_url)
    try:
        storage = open_storage(settings.storage_url)
    except Exception as exc:
        click.echo(f"storage: error: {getattr(exc, 'message', exc)}")
        sys.exit(1)
    checks = readiness(db, storage)
    for name, value in checks.items():
        click.echo(f"{name}: {value}")
    if any(value != "ok" for value in checks.values()):
        sys.exit(1)


@main.command()
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option("--grace", type=float, default=None,
              help="Seconds an unreferenced blob or temporary upload must be old to go "
                   "(REGISTRY_GC_GRACE_SECONDS, default 3600).")
def gc(dry_run: bool, grace: float | None) -> None:
    """Remove blobs no version refers to and stale temporary uploads; report what was freed."""
    from registry.db import Database
    from registry.errors import RegistryError
    from registry.gc import collect_garbage
    from registry.storage import open_storage

    settings = Settings.from_env()
    settings.ensure_home()
    db = Database(settings.database_url)
    db.upgrade()
    try:
        report = collect_garbage(db, open_storage(settings.storage_url), dry_run=dry_run,
                                 grace_seconds=settings.gc_grace_seconds if grace is None else grace)
    except RegistryError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(report.summary())
    if report.missing:
        sys.exit(1)


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
                disable=not sys.stderr.isatty(), file=sys.stderr)


@main.command()
@click.argument("name")
@click.argument("checkpoint_prefix", required=False, type=click.Path(path_type=Path))
@click.option("--graph", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Inference GraphDef (.pb or .pbtxt) to freeze instead of the .meta graph.")
@click.option("--frozen", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Register an already-frozen GraphDef instead of a checkpoint.")
@click.option("--saved-model", type=click.Path(exists=True, path_type=Path),
              help="Push a TF2 SavedModel (its folder, or a .zip/.tar.gz of it) instead of a checkpoint.")
@click.option("--signature", default="", help="The SavedModel signature to freeze (default serving_default).")
@click.option("--keras", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Push a Keras model file (.keras or .h5) instead of a checkpoint.")
@click.option("--output-nodes", default="", help="Comma-separated output node names (detected when left out).")
@click.option("--input-nodes", default="", help="Comma-separated input node names (placeholders when left out).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Labels, one per line.")
@click.option("--description", default="")
@click.option("--wait", is_flag=True, help="Wait until the version is ready or failed.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@url_option
def push(name, checkpoint_prefix, graph, frozen, saved_model, signature, keras, output_nodes, input_nodes, labels,
         description, wait, timeout, url):
    """Push a checkpoint (CHECKPOINT_PREFIX, e.g. train/model.ckpt) as the next version of NAME."""
    import tempfile

    from registry.client import ClientError, checkpoint_files

    files: list[tuple[str, Path]] = []
    scratch = tempfile.TemporaryDirectory(prefix="registry-push-")
    if sum(bool(x) for x in (frozen, saved_model, keras, checkpoint_prefix)) > 1:
        raise click.UsageError("give one of: a checkpoint prefix, --frozen, --saved-model or --keras")
    if saved_model:
        if saved_model.is_dir():
            from registry.converter.saved_model import write_archive

            archive = Path(scratch.name) / f"{saved_model.name or 'saved_model'}.tar.gz"
            write_archive(saved_model, archive)
            saved_model = archive
        files.append(("saved_model", saved_model))
    elif keras:
        files.append(("keras", keras))
    elif frozen:
        if checkpoint_prefix:
            raise click.UsageError("give either a checkpoint prefix or --frozen, not both")
        files.append(("frozen", frozen))
    else:
        if not checkpoint_prefix:
            raise click.UsageError("give a checkpoint prefix (e.g. train/model.ckpt) or --frozen FILE")
        found = checkpoint_files(checkpoint_prefix)
        missing = [k for k in ("index", "data") if k not in found]
        if missing:
            raise click.ClickException(
                f"no checkpoint at {checkpoint_prefix}: missing {checkpoint_prefix}.index / .data-*-of-* files"
            )
        if "meta" not in found and not graph:
            raise click.ClickException(f"no {checkpoint_prefix}.meta: pass the inference graph with --graph")
        for role in ("meta", "index", "data"):
            files.extend((role, p) for p in found.get(role, []))
        if graph:
            files.append(("graph", graph))
    if labels:
        files.append(("labels", labels))
    fields = {k: v for k, v in {"output_nodes": output_nodes, "input_nodes": input_nodes,
                                "description": description, "signature": signature}.items() if v}
    client = _client(url)
    total = sum(p.stat().st_size for _, p in files)
    try:
        with _progress(total, f"push {name}") as bar:
            record = client.push(name, files, fields, progress=bar.update)
        click.echo(f"{name} version {record['version']}: {record['status']}")
        if wait:
            record = client.wait(name, record["version"], timeout=timeout)
            _print_version(record)
            if record["status"] != "ready":
                sys.exit(1)
    except ClientError as exc:
        _fail(exc)
    finally:
        scratch.cleanup()


def _print_version(v: dict) -> None:
    click.echo(f"{v['model']} version {v['version']}: {v['status']} - {v['status_message']}")
    if v.get("output_nodes"):
        detected = " (detected)" if v.get("output_nodes_detected") else ""
        click.echo(f"  outputs{detected}: {', '.join(v['output_nodes'])}")
    for node in v.get("input_nodes") or []:
        click.echo(f"  input: {node['name']} {node['dtype']} {node['shape']}")
    if v.get("frozen"):
        click.echo(f"  frozen.pb: {v['frozen']['size']} bytes, sha256 {v['frozen']['sha256']}")
    if v.get("refusal"):
        click.echo(f"  refused: {v['refusal']}")


def _split_ref(spec: str) -> tuple[str, str]:
    name, _, ref = spec.partition(":")
    return name, ref or "latest"


@main.command()
@click.argument("spec", metavar="NAME[:REF]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it (default NAME-vN.pb, or NAME-vN-saved_model.tar.gz).")
@click.option("--format", "fmt", type=click.Choice(["frozen", "saved_model"]), default="frozen", show_default=True,
              help="The frozen GraphDef, or the SavedModel built from it (.tar.gz of the folder TF Serving loads).")
@url_option
def pull(spec: str, output: Path | None, fmt: str, url: str | None) -> None:
    """Download a version's frozen graph or SavedModel (REF: number, alias or latest) and check its sha256."""
    from registry.client import ClientError

    name, ref = _split_ref(spec)
    client = _client(url)
    try:
        record = client.get_version(name, ref)
        if fmt == "saved_model":
            dest = output or Path(f"{name}-v{record['version']}-saved_model.tar.gz")
            digest = client.pull_saved_model(name, record, dest)
            click.echo(f"{dest}: {name} version {record['version']} SavedModel, sha256 {digest} (verified)")
            return
        dest = output or Path(f"{name}-v{record['version']}.pb")
        bar = None

        def start(total: int) -> None:
            nonlocal bar
            bar = _progress(total, f"pull {name}:{record['version']}")

        client.pull(name, str(record["version"]), dest, progress=lambda n: bar.update(n), on_start=start)
        if bar is not None:
            bar.close()
        click.echo(f"{dest}: {name} version {record['version']}, sha256 {record['frozen']['sha256']} (verified)")
        if record.get("output_nodes"):
            click.echo(f"  outputs: {', '.join(record['output_nodes'])}")
    except ClientError as exc:
        _fail(exc)


def _serving_root(root: str | None) -> str:
    root = root or Settings.from_env().serving_export_root
    if not root:
        raise click.UsageError("give --root PATH (a folder or s3://bucket/prefix) or set REGISTRY_SERVING_EXPORT_ROOT")
    return root


def _print_plan(models: list) -> None:
    for m in models:
        if m.skipped and not m.exported:
            click.echo(f"  {m.name}: not served ({m.skipped})")
            continue
        labels = ", ".join(f"{k}={v}" for k, v in m.labels.items()) or "none"
        click.echo(f"  {m.name}: versions {', '.join(map(str, m.exported)) or 'none'}; labels {labels}")
        for s in m.skipped_versions:
            click.echo(f"    version {s['version']} left out: {s['reason']}")
        for s in m.skipped_aliases:
            click.echo(f"    alias {s['alias']} (version {s['version']}) is no label: {s['reason']}")


@main.command("export-serving")
@click.option("--root", default=None, help="TF Serving model base path: a folder or s3://bucket/prefix "
                                           "(default REGISTRY_SERVING_EXPORT_ROOT).")
@click.option("--base-path", default=None,
              help="The root as TF Serving sees it, for base_path in models.config (default REGISTRY_SERVING_BASE_PATH, "
                   "else the root itself), e.g. /models inside a container.")
def export_serving(root: str | None, base_path: str | None) -> None:
    """Export every served version as a SavedModel in TF Serving's layout, and write models.config.

    Layout: ROOT/MODEL/VERSION/saved_model.pb + variables/, each version folder appearing only when
    complete; versions no longer served are removed.  Runs against the database and blob storage
    (like 'registry worker').
    """
    from registry.db import Database
    from registry.errors import RegistryError
    from registry.serving_export import sync
    from registry.storage import open_storage

    settings = Settings.from_env()
    settings.ensure_home()
    db = Database(settings.database_url)
    db.upgrade()
    try:
        report = sync(settings, db, open_storage(settings.storage_url), _serving_root(root), base_path)
    except RegistryError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"exported to {report.root}: {len(report.published)} version(s) published, "
               f"{len(report.removed)} removed; config {report.config_path}")
    for item in report.published:
        click.echo(f"  + {item}")
    for item in report.removed:
        click.echo(f"  - {item}")
    _print_plan(report.models)
    for failure in report.failed:
        click.echo(f"  FAILED {failure['version']}: {failure['error']}", err=True)
    if report.failed:
        sys.exit(1)


@main.command("saved-models")
@click.argument("name", required=False)
def saved_models(name: str | None) -> None:
    """Build the SavedModel of every ready version (of NAME) frozen before SavedModels were built."""
    from registry import catalog
    from registry.db import Database
    from registry.storage import open_storage
    from registry.worker import build_saved_model

    settings = Settings.from_env()
    settings.ensure_home()
    db = Database(settings.database_url)
    db.upgrade()
    storage = open_storage(settings.storage_url)
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
    token = None
    while True:
        page = fetch(token)
        yield from page.items
        token = page.next_page_token
        if not token:
            return


@main.command("serving-reload")
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
    import grpc
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    if config_file is not None:
        text = config_file.read_text()
    else:
        from registry.errors import RegistryError
        from registry.serving_export import open_target

        try:
            text = open_target(_serving_root(root)).read_config()
        except RegistryError as exc:
            raise click.ClickException(exc.message) from None
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
            raise click.ClickException(f"TF Serving at {target} refused the config: {exc.code().name}: "
                                       f"{exc.details()}") from None
    if response.status.error_code:
        raise click.ClickException(f"TF Serving at {target} refused the config: {response.status.error_message}")
    models = request.config.model_config_list.config
    click.echo(f"TF Serving at {target} reloaded its config: {len(models)} model(s)")
    for m in models:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(m.version_labels.items())) or "none"
        click.echo(f"  {m.name}: versions {', '.join(map(str, m.model_version_policy.specific.versions))}; "
                   f"labels {labels}")


@main.command("serving-versions")
@click.argument("name")
@click.argument("versions", required=False)
@click.option("--default", "use_default", is_flag=True, help="Back to the default: every aliased version and "
                                                              "the newest ready one.")
@url_option
def serving_versions(name: str, versions: str | None, use_default: bool, url: str | None) -> None:
    """Choose which versions of NAME a TF Serving export serves (VERSIONS: e.g. 1,3, or all)."""
    from registry.client import ClientError

    if bool(versions) == use_default:
        raise click.UsageError("give the versions (e.g. 1,3) or --default")
    try:
        numbers = None if use_default else "all" if versions == "all" else [
            int(v) for v in versions.split(",") if v.strip()]
    except ValueError:
        raise click.UsageError("versions are numbers separated by commas, e.g. 1,3") from None
    try:
        answer = _client(url).set_served_versions(name, numbers)
    except ClientError as exc:
        _fail(exc)
    chosen = answer["versions"]
    click.echo(f"{name}: serving " + ("every ready version" if chosen == "all" else ", ".join(map(str, chosen))
                                      if chosen else "every aliased version and the newest ready one"))


@main.command("ls")
@click.argument("name", required=False)
@click.option("--limit", default=50, show_default=True, help="Versions to show for NAME.")
@url_option
def ls(name: str | None, limit: int, url: str | None) -> None:
    """List models, or the versions of NAME (newest first)."""
    from registry.client import ClientError

    client = _client(url)
    try:
        if name is None:
            rows = [(m["name"], str(m["version_count"]), str(m["latest_version"] or "-"),
                     ", ".join(f"{k}={v}" for k, v in m["aliases"].items()) or "-") for m in client.list_models()]
            _table(("MODEL", "VERSIONS", "LATEST", "ALIASES"), rows)
        else:
            rows = [(str(v["version"]), v["status"], v["source"], ", ".join(v["output_nodes"] or []) or "-",
                     ", ".join(v["aliases"]) or "-", v["created_at"][:19]) for v in client.list_versions(name, limit)]
            _table(("VERSION", "STATUS", "SOURCE", "OUTPUTS", "ALIASES", "CREATED"), rows)
    except ClientError as exc:
        _fail(exc)


@main.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int, required=False)
@click.option("--delete", is_flag=True, help="Remove the alias.")
@url_option
def alias(name: str, alias: str, version: int | None, delete: bool, url: str | None) -> None:
    """Point ALIAS of NAME at VERSION (or remove it with --delete)."""
    from registry.client import ClientError

    client = _client(url)
    try:
        if delete:
            client.delete_alias(name, alias)
            click.echo(f"{name}: alias {alias} removed")
        elif version is None:
            raise click.UsageError("give the version number the alias should point at")
        else:
            client.set_alias(name, alias, version)
            click.echo(f"{name}: {alias} -> version {version}")
    except ClientError as exc:
        _fail(exc)


@main.command()
@click.argument("spec", metavar="NAME:VERSION | NAME --model")
@click.option("--model", "whole_model", is_flag=True, help="Delete the model NAME and every version of it.")
@click.option("--yes", is_flag=True, help="Do not ask before deleting a whole model.")
@url_option
def delete(spec: str, whole_model: bool, yes: bool, url: str | None) -> None:
    """Delete a version (NAME:VERSION) or, with --model, a model and all its versions.

    Version numbers are never reused; aliases pointing at a deleted version are
    removed; a conversion still queued or running is cancelled.  Storage is freed
    by 'registry gc'.
    """
    from registry.client import ClientError

    name, _, ref = spec.partition(":")
    client = _client(url)
    try:
        if whole_model:
            if ref:
                raise click.UsageError("--model deletes a whole model: give NAME without :VERSION")
            if not yes:
                count = client.get_model(name)["version_count"]
                click.confirm(f"delete model {name} and its {count} version(s)?", abort=True)
            answer = client.delete_model(name)
            aliases = f", aliases removed: {', '.join(answer['aliases_removed'])}" if answer["aliases_removed"] else ""
            click.echo(f"{name}: model deleted ({answer['versions_deleted']} version(s){aliases}); "
                       f"a new push of {name} starts at version {answer['last_version'] + 1}")
            return
        if not ref:
            raise click.UsageError("give NAME:VERSION (e.g. cnn:3), or NAME --model to delete the whole model")
        answer = client.delete_version(name, ref)
        extra = []
        if answer["aliases_removed"]:
            extra.append(f"aliases removed: {', '.join(answer['aliases_removed'])}")
        if answer["job_cancelled"]:
            extra.append("its conversion was cancelled")
        click.echo(f"{name}: version {answer['version']} deleted" + (f" ({'; '.join(extra)})" if extra else ""))
    except ClientError as exc:
        _fail(exc)


@main.command("allow-ops")
@click.argument("name")
@click.argument("ops", nargs=-1)
@click.option("--reason", default="", help="Why these ops are safe for this model (kept in the audit log).")
@click.option("--clear", is_flag=True, help="Remove every allowed op: flagged versions are refused again.")
@url_option
def allow_ops(name: str, ops: tuple[str, ...], reason: str, clear: bool, url: str | None) -> None:
    """Allow OPS in NAME's graphs despite the converter's op scan (admin token), or show the list.

    The list replaces the previous one; the label service and the export serve a
    version once every op its scan flagged is on it, and refuse it again when one
    is removed.
    """
    from registry.client import ClientError

    client = _client(url)
    try:
        if clear:
            if ops:
                raise click.UsageError("give either ops or --clear, not both")
            answer = client.set_allowed_ops(name, [], reason)
        elif ops:
            if not reason.strip():
                raise click.UsageError("say why with --reason (it is kept in the audit log)")
            answer = client.set_allowed_ops(name, list(ops), reason)
        else:
            answer = client.get_allowed_ops(name)
    except ClientError as exc:
        _fail(exc)
    click.echo(f"{name}: allowed ops: {', '.join(answer['ops']) or 'none'}")
    change = answer.get("last_change")
    if change:
        click.echo(f"  last changed by {change['actor']} at {change['at']}"
                   + (f": {change['reason']}" if change["reason"] else ""))


def _print_predictions(title: str, predictions: list[dict]) -> None:
    click.echo(title)
    _table(("RANK", "INDEX", "LABEL", "SCORE"),
           [(str(r), str(p["index"]), p["label"], f"{p['score']:.5f}") for r, p in enumerate(predictions, 1)])


@main.command()
@click.argument("spec", metavar="NAME[:REF]")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--top-k", default=5, show_default=True)
@url_option
def label(spec: str, images: tuple[Path, ...], top_k: int, url: str | None) -> None:
    """Label images with a version (REF: number, alias or latest), like label_image.py."""
    from registry.client import ClientError

    name, ref = _split_ref(spec)
    client = _client(url)
    try:
        for image in images:
            answer = client.label(name, ref, image, top_k)
            timing = answer["timing_ms"]
            _print_predictions(f"{image}: {name} version {answer['version']} "
                               f"({timing['inference']:.1f} ms inference, {timing['total']:.1f} ms total)",
                               answer["predictions"])
    except ClientError as exc:
        _fail(exc)


@main.command()
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--versions", default=None, help="Comma-separated refs (default: the newest ready versions).")
@click.option("--expected", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file with the expected label of each image, one per line, in order.")
@click.option("--top-k", default=5, show_default=True)
@url_option
def compare(name: str, images: tuple[Path, ...], versions: str | None, expected: Path | None, top_k: int,
            url: str | None) -> None:
    """Run several versions of NAME on the same images and show where they disagree."""
    from registry.client import ClientError

    labels = None
    if expected is not None:
        labels = [line.strip() for line in expected.read_text().splitlines() if line.strip()]
    client = _client(url)
    try:
        answer = client.compare(name, list(images), versions.split(",") if versions else None, labels, top_k)
    except ClientError as exc:
        _fail(exc)
    report = answer["versions"]
    header = ("IMAGE", *(f"v{v['version']}" + (f" ({','.join(v['aliases'])})" if v["aliases"] else "")
                         for v in report), *(("EXPECTED",) if labels else ()), "AGREE")
    rows = []
    for i, image in enumerate(answer["images"]):
        cells = [f"{v['results'][i]['predictions'][0]['label']} {v['results'][i]['predictions'][0]['score']:.3f}"
                 for v in report]
        rows.append((image["image"], *cells, *((image["expected"],) if labels else ()),
                     "yes" if image["agree"] else "NO"))
    _table(header, rows)
    click.echo("")
    _table(("VERSION", "LATENCY MS", "PER IMAGE MS", "TOP-1", "TOP-5"),
           [(str(v["version"]), f"{v['latency_ms']:.1f}", f"{v['latency_per_image_ms']:.1f}",
             f"{v['accuracy']['top1']:.1%}" if v["accuracy"] else "-",
             f"{v['accuracy']['top5']:.1%}" if v["accuracy"] else "-") for v in report])
    for pair in answer["agreement"]["pairs"]:
        diff = pair["mean_abs_score_diff"]
        click.echo(f"v{pair['a']} vs v{pair['b']}: top-1 agreement {pair['top1_agreement']:.1%}"
                   + (f", mean |score difference| {diff:.4f}" if diff is not None else ""))
    if answer["agreement"]["disagreements"]:
        click.echo("disagree on: " + ", ".join(answer["agreement"]["disagreements"]))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    for row in (header, *rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
