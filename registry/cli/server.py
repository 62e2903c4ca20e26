"""The server roles: ``serve``, ``label-serve``, ``worker``, ``migrate``, ``init`` and ``check``."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

import click
from werkzeug import serving as werkzeug_serving
from werkzeug.serving import make_server

from registry import cpus, heap
from registry.app import create_app
from registry.cli import local
from registry.native_logs import held_back as native_logs_hidden
from registry.config import DEFAULT_PORT, Settings
from registry.db import Database
from registry.demo.seed import start_seeding
from registry.gunicorn_conf import PRIVATE_DIR_PREFIX, is_private_dir
from registry.health import readiness
from registry.jobs.worker import Worker, remove_stale_workdirs
from registry.metrics import MULTIPROC_ENV
from registry.storage import open_storage
from registry.tfserving import ExportSyncer
from registry.webhooks.delivery import Sender

try:
    from gunicorn.config import KNOWN_SETTINGS
except ImportError:  # only serve --gunicorn needs it, and says so
    KNOWN_SETTINGS = ()


def grpc_api():
    """The gRPC server's starter.  Its TF Serving protos load TensorFlow, whose native start-up lines are
    kept off the output (see registry.native_logs): call it first, before any thread or child process starts,
    so that nothing else writes while they are held back."""
    with native_logs_hidden():
        from registry.serving.grpc_server import start_grpc_server  # TensorFlow: only with a gRPC port
    return start_grpc_server


def _serve_http(app, host: str, port: int, title: str, lines: list[str], grpc_port: int | None = None) -> None:
    """Run ``app`` on a threaded HTTP server (and the gRPC API beside it) until stopped."""
    registry = app.extensions["registry"]
    if os.environ.get(MULTIPROC_ENV):  # the operator's metrics folder: a new server counts from 0
        metrics_folder(os.environ[MULTIPROC_ENV])
    grpc_server = None
    if grpc_port is not None:
        start_grpc_server = grpc_api()
        try:
            grpc_server, grpc_port = start_grpc_server(registry, host, grpc_port)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
    # werkzeug colours its access-log lines for a terminal; in a log file they would carry escape codes
    werkzeug_serving._log_add_style = sys.stderr.isatty()  # noqa: SLF001 - no public switch for it
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


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int,
              help="HTTP port (the web UI, the API and TF Serving's REST API).")
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
    overrides = {"embedded_workers": workers} if workers is not None else {}
    if no_demo:
        overrides["demo"] = False
    if use_gunicorn:
        _serve_gunicorn(host, port, workers, grpc_port, processes, threads, no_demo)
        return
    settings = Settings.from_env(**overrides).bound_to(host)
    if grpc_port is not None:
        grpc_api()
    cpus.pin_process(settings.label_cpu)  # before its workers and servers start (registry.cpus)
    heap.own_process()
    app = create_app(settings, start_workers=True)
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
    if workers:
        raise click.UsageError("--workers does not go with --gunicorn: run 'registry worker' beside it")
    if grpc_port is not None:
        raise click.UsageError("--grpc-port does not go with --gunicorn: run 'registry label-serve' for gRPC")
    if processes < 1 or threads < 1:
        raise click.UsageError("--processes and --threads must be at least 1")
    if not KNOWN_SETTINGS:
        raise click.ClickException("gunicorn is not installed: pip install 'gunicorn>=22'")
    settings = Settings.from_env(embedded_workers=0)
    # Migrate (and check the database and blob storage) once here, so the
    # gunicorn processes do not race each other through the migrations.
    create_app(settings)
    click.echo(f"Registry (gunicorn, {processes} processes x {threads} threads) on http://{host}:{port}")
    click.echo(f"  data: {settings.database_url}  blobs: {settings.storage_url}")
    click.echo("  no embedded converter workers: run 'registry worker' (any number) to freeze pushed versions")
    if settings.demo and not no_demo:
        click.echo("  demo model: not seeded under --gunicorn (run 'registry serve' once without it to seed it)")
    sys.stdout.flush()
    # the gunicorn processes build their settings from the environment: they answer to --host too
    env = dict(os.environ, REGISTRY_EMBEDDED_WORKERS="0",
               REGISTRY_ALLOWED_HOSTS=",".join(settings.bound_to(host).allowed_hosts))
    # every process counts into files there, and a scrape of any one sums them (registry.metrics)
    env[MULTIPROC_ENV] = metrics_folder(os.environ.get(MULTIPROC_ENV))
    argv = [sys.executable, "-m", "gunicorn", "-b", f"{host}:{port}", "-w", str(processes),
            "--threads", str(threads), "-k", "gthread",
            "--timeout", "0",  # uploads and label requests can take long; no worker watchdog kill
            "--access-logfile", "-",
            "-c", "python:registry.gunicorn_conf"]  # hooks: a dead worker's live gauges leave the sums
    if _gunicorn_has_setting("control_socket_disable"):
        # newer gunicorn (27 here) opens a control socket under $HOME by default: one path shared by
        # every instance, and $HOME may not be writable (containers).
        argv.append("--no-control-socket")
    argv.append("registry.wsgi:app")
    os.execvpe(sys.executable, argv, env)


def metrics_folder(named: str | None) -> str:
    """The PROMETHEUS_MULTIPROC_DIR the gunicorn processes share: the operator's (``named``), else
    a private temporary one (removed when gunicorn exits; those of servers that died are removed
    here).  Files of processes that no longer run are removed first: a new server counts from 0."""
    if named:
        folder = Path(named)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    else:
        for stale in Path(tempfile.gettempdir()).glob(f"{PRIVATE_DIR_PREFIX}*-*"):
            pid = stale.name[len(PRIVATE_DIR_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and is_private_dir(stale, int(pid)) and not process_running(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{PRIVATE_DIR_PREFIX}{os.getpid()}-"))  # gunicorn keeps this pid
    for path in folder.glob("*.db"):  # prometheus_client's files: {kind}_{pid}.db
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not process_running(int(pid)):
            path.unlink(missing_ok=True)
    return str(folder)


def process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _gunicorn_has_setting(name: str) -> bool:
    return any(setting.name == name for setting in KNOWN_SETTINGS)


@click.command("label-serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8501, show_default=True, type=int, help="REST port (TF Serving's is 8501).")
@click.option("--grpc-port", default=8500, show_default=True, type=int, help="gRPC port (TF Serving's is 8500).")
@click.option("--no-grpc", is_flag=True, help="Serve REST only.")
def label_serve(host: str, port: int, grpc_port: int, no_grpc: bool) -> None:
    """Run a label service alone (any number of them): TF Serving's REST and gRPC APIs, :label, :compare."""
    if not no_grpc:
        grpc_api()
    with native_logs_hidden():  # what its first request would load (TensorFlow's tensor helpers), loaded now
        import registry.serving.examples  # noqa: F401
        import registry.serving.service  # noqa: F401
        import registry.serving.signature  # noqa: F401
        import registry.serving.tensors  # noqa: F401
    settings = Settings.from_env().bound_to(host)
    cpus.pin_process(settings.label_cpu)  # before its workers and servers start (registry.cpus)
    heap.own_process()
    app = create_app(settings, serving_only=True)
    _serve_http(app, host, port, "Label service", [], None if no_grpc else grpc_port)


@click.command()
def migrate() -> None:
    """Apply database migrations up to the newest (creating the registry when there is none)."""
    settings = local.settings(create=True)
    local.database(settings, create=True)
    click.echo(f"database at head: {settings.database_url}")


@click.command()
def init() -> None:
    """Create a registry where REGISTRY_HOME (or REGISTRY_DATABASE_URL, REGISTRY_STORAGE) points:
    its folder, its database at the newest schema and its blob storage; an existing one is left as it is."""
    settings = local.settings()
    if local.registry_exists(settings):
        click.echo(f"a registry already exists at {local.where(settings)}; nothing changed")
        return
    settings.ensure_home()
    local.database(settings, create=True).dispose()
    open_storage(settings.storage_url)  # the local default makes its blob folder
    click.echo(f"created a registry: database {local.where(settings)}, blobs {settings.storage_url}")
    if settings.embedded:
        click.echo(f"  commands run elsewhere find it with REGISTRY_HOME={settings.home}")


@click.command()
@click.option("--once", is_flag=True, help="Process the jobs waiting now, then exit.")
def worker(once: bool) -> None:
    """Run a converter worker (any number of them, anywhere)."""
    settings, db, storage = local.services()
    exporter = None
    if settings.serving_export_root:
        exporter = ExportSyncer(settings, db, storage)
    stop = threading.Event()
    labels = []

    def label_service():
        """The label service comparison jobs run on, made with the first one (it starts inference workers)."""
        if not labels:
            from registry.serving.service import LabelService  # numpy and TensorFlow's helpers: when needed

            labels.append(LabelService(settings, db, storage, stop=stop))
        return labels[0]

    w = Worker(settings, db, storage, on_ready=exporter.request if exporter else None, labels=label_service)
    sender = Sender(settings, db)  # webhook deliveries: beside the jobs, in a thread of their own
    if once:
        remove_stale_workdirs()
        while w.run_once():
            pass
        while sender.run_once():
            pass
        if labels:
            labels[0].close()
        if exporter is not None:
            exporter.wait_idle(timeout=settings.convert_timeout_seconds)
        return
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"worker {w.owner} waiting for jobs")
    threading.Thread(target=sender.run_forever, args=(stop,), name="registry-webhooks", daemon=True).start()
    try:
        w.run_forever(stop)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()


@click.command()
def check() -> None:
    """Exit 0 when the database and blob storage answer (a health check for workers), else 1."""
    settings = Settings.from_env()
    local.require_registry(settings)
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
