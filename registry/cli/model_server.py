"""``registry model-server``, also installed as ``tensorflow_model_server``: TF Serving's command line.

A drop-in for a stock ``tensorflow_model_server`` in the scripts, Dockerfiles
and tests that start one: the same flags (``--port``, ``--rest_api_port``,
``--grpc_socket_path``, ``--model_name`` + ``--model_base_path`` or
``--model_config_file`` with its poll period, ``--monitoring_config_file``,
``--grpc_channel_arguments``, ...), the same version folders, the same REST
and gRPC APIs.  What it adds is the registry: every version folder is pushed
through the real push path with its folder's number, frozen, verified and
scanned before it serves (a flagged graph never runs), and answers from the
label service's isolated inference workers.

The registry it keeps is ``REGISTRY_HOME`` (or ``REGISTRY_DATABASE_URL``) when
set, so the versions and their conversions stay for ``registry serve`` to show;
otherwise a temporary one, removed when the server stops.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import click

from registry.tfserving import sources as tfs_sources  # TF Serving's config protos, no TensorFlow

SECONDS_BEFORE_GIVING_UP = 3600.0  # the first load of the configured models, as TF Serving waits for them

log = logging.getLogger("registry.model_server")

# TF Serving flags taken and left alone: what they tune is the label service's own business here
IGNORED = ("rest_api_num_threads", "rest_api_timeout_in_ms", "enable_batching", "batching_parameters_file",
           "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
           "tensorflow_session_config_file", "enable_model_warmup", "num_request_iterations_for_warmup",
           "saved_model_tags", "max_num_load_retries", "load_retry_interval_micros", "flush_filesystem_caches",
           "per_process_gpu_memory_fraction", "xla_cpu_compilation_enabled", "enable_signature_method_name_check",
           "rest_api_enable_cors_support", "grpc_max_threads", "enable_profiler",
           "remove_unused_fields_from_bundle_metagraph", "skip_initialize_tpu", "mixed_precision",
           "platform_config_file", "thread_pool_factory_config_file", "allow_version_labels_for_unavailable_models",
           "enable_grpc_healthcheck_service", "num_tflite_pools", "num_tflite_interpreters_per_pool")
BOOLEANS = {"enable_batching", "enable_model_warmup", "flush_filesystem_caches", "xla_cpu_compilation_enabled",
            "enable_signature_method_name_check", "rest_api_enable_cors_support", "enable_profiler",
            "remove_unused_fields_from_bundle_metagraph", "skip_initialize_tpu",
            "allow_version_labels_for_unavailable_models", "enable_grpc_healthcheck_service",
            "use_tflite_model", "prefer_tflite_model", "use_alts_credentials", "version"}


class Refused(Exception):
    """A flag or config this server cannot honour; the message says what to do."""


def _tf_bool(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "t"):
        return True
    if text in ("false", "0", "no", "f"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tensorflow_model_server",
        description="TensorFlow Serving's model server, served by the registry: the same flags, version folders "
                    "and REST and gRPC APIs, each version frozen, verified and scanned before it serves.",
        allow_abbrev=False)
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    p.add_argument("--grpc_socket_path", default="", help="also serve gRPC on this Unix socket")
    p.add_argument("--rest_api_port", type=int, default=0, help="REST port (default 0: no REST API)")
    p.add_argument("--model_name", default="default", help="the model's name (default 'default')")
    p.add_argument("--model_base_path", default="", help="folder of the model's numbered version folders")
    p.add_argument("--model_config_file", default="", help="a ModelServerConfig text proto listing the models")
    p.add_argument("--model_config_file_poll_wait_seconds", type=int, default=0,
                   help="read the config file again this often (0: never)")
    p.add_argument("--file_system_poll_wait_seconds", type=int, default=1,
                   help="look for new version folders this often (0: once at start)")
    p.add_argument("--monitoring_config_file", default="", help="a MonitoringConfig text proto (Prometheus path)")
    p.add_argument("--grpc_channel_arguments", default="", help="gRPC server arguments: name=value,...")
    p.add_argument("--ssl_config_file", default="", help="not supported: serve TLS from a proxy in front")
    p.add_argument("--host", default="0.0.0.0",
                   help="(the registry's) address to listen on; TF Serving listens on every interface")
    for name in IGNORED:
        if name in BOOLEANS:
            continue
        p.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    for name in sorted(BOOLEANS):
        p.add_argument(f"--{name}", type=_tf_bool, nargs="?", const=True, default=False,
                       help="print the version and exit" if name == "version" else argparse.SUPPRESS)
    return p


def _refusals(args: argparse.Namespace) -> None:
    if args.ssl_config_file or args.use_alts_credentials:
        raise Refused("TLS (--ssl_config_file, --use_alts_credentials) is not served here: put a TLS proxy in "
                      "front of the gRPC and REST ports")
    if args.model_config_file and args.model_base_path:
        raise Refused("give --model_config_file or --model_base_path, not both")
    if not args.model_config_file and not args.model_base_path:
        raise Refused("Both server_options.model_base_path and server_options.model_config_file are empty! "
                      "Give --model_name and --model_base_path, or --model_config_file")


def main(argv: list[str] | None = None) -> int:
    """``tensorflow_model_server``: exits 0 on SIGTERM or Ctrl-C, 1 on a refused flag or config."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.version:
        from importlib.metadata import version

        print(f"TensorFlow ModelServer: registry {version('tf-model-registry')}")
        return 0
    try:
        _refusals(args)
        sources = (tfs_sources.read_config(args.model_config_file) if args.model_config_file
                   else tfs_sources.from_flags(args.model_name, args.model_base_path))
        prometheus_path = tfs_sources.read_monitoring(args.monitoring_config_file) \
            if args.monitoring_config_file else None
        channel_arguments = tfs_sources.channel_arguments(args.grpc_channel_arguments)
    except (Refused, tfs_sources.ConfigError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if args.use_tflite_model or args.prefer_tflite_model:  # TF Serving's preference, not a requirement
        log.warning("TF Lite models are not served here; each version's SavedModel (saved_model.pb) is served "
                    "instead")
    ignored = [name for name in IGNORED if getattr(args, name) not in (None, False)]
    if ignored:
        log.info("taken and left alone (the label service batches and threads on its own): %s",
                 ", ".join(f"--{name}" for name in ignored))
    temporary = None
    if not os.environ.get("REGISTRY_HOME") and not os.environ.get("REGISTRY_DATABASE_URL"):
        _remove_stale_homes()
        temporary = tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-")
        os.environ["REGISTRY_HOME"] = temporary
    try:
        return _serve(args, sources, prometheus_path, channel_arguments, temporary=temporary is not None)
    except Exception as exc:  # what the registry can say in a line, said so; anything else is a bug
        from registry.cli import database_fault
        from registry.errors import RegistryError

        message = exc.message if isinstance(exc, RegistryError) else database_fault(exc)
        if message is None:
            raise
        print(f"Error: {message}", file=sys.stderr)
        return 1
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


TEMPORARY_PREFIX = "registry-model-server-"


def _remove_stale_homes() -> None:
    """The temporary registries of model servers that were killed (SIGKILL leaves them behind)."""
    from registry.cli.server import process_running

    for stale in Path(tempfile.gettempdir()).glob(f"{TEMPORARY_PREFIX}*-*"):
        pid = stale.name[len(TEMPORARY_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and stale.is_dir() and stale.stat().st_uid == os.geteuid() and not process_running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _serve(args, sources, prometheus_path: str | None, channel_arguments, *, temporary: bool) -> int:
    from werkzeug.serving import make_server

    from registry import cpus, heap
    from registry.app import create_app
    from registry.cli.server import grpc_api
    from registry.config import SettingError, Settings
    from registry.tfserving.folder_import import FolderImport

    for flag, port in (("--port", args.port), ("--rest_api_port", args.rest_api_port)):
        taken = _taken(args.host, port)
        if taken:  # said now, not after every version has converted
            print(f"Error: cannot listen on {args.host}:{port} ({flag}): {taken}; pick another {flag}",
                  file=sys.stderr)
            return 1
    start_grpc_server = grpc_api()
    heap.own_process()
    try:
        settings = Settings.from_env(demo=False).bound_to(args.host)
    except SettingError as exc:  # a REGISTRY_* variable it cannot use: its message names it
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    cpus.pin_process(settings.label_cpu)  # before the inference worker starts (registry.cpus)
    settings = replace(settings, embedded_workers=max(1, settings.embedded_workers))  # versions must convert
    app = create_app(settings, start_workers=True, serving_only=True)
    registry = app.extensions["registry"]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("registry: %s, blobs %s%s", settings.database_url, settings.storage_url,
             " (temporary: removed when this server stops)" if temporary else "")

    importer = FolderImport(registry, sources)
    for version in importer.wait(importer.sync(), SECONDS_BEFORE_GIVING_UP):
        log.info("model %r version %d: %s%s", version.model, version.version, version.status,
                 f" ({version.status_message})" if version.status != "ready" else "")
    importer.apply_labels()
    _warm(registry, importer.sources)
    if stop.is_set():
        return 0

    try:
        grpc_server, grpc_port = start_grpc_server(registry, args.host, args.port, unix_socket=args.grpc_socket_path
                                                   or None, options=channel_arguments)
    except RuntimeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    log.info("Running gRPC ModelServer at %s:%d%s", args.host, grpc_port,
             f" and unix:{args.grpc_socket_path}" if args.grpc_socket_path else "")
    http = None
    if args.rest_api_port:
        wsgi = _metrics_at(app.wsgi_app, prometheus_path) if prometheus_path else app.wsgi_app
        try:
            http = make_server(args.host, args.rest_api_port, wsgi, threaded=True)
        except OSError as exc:
            grpc_server.stop(None)
            print(f"Error: cannot serve REST on {args.host}:{args.rest_api_port}: {exc.strerror or exc} "
                  "(pick another --rest_api_port)", file=sys.stderr)
            return 1
        threading.Thread(target=http.serve_forever, name="rest-api", daemon=True).start()
        log.info("Exporting HTTP/REST API at %s:%d", args.host, http.port)
    sys.stderr.flush()
    _follow(args, importer, stop)
    if http is not None:
        http.shutdown()
    grpc_server.stop(grace=2)
    registry.stop_workers.set()
    return 0


def _warm(registry, sources) -> None:
    """Start the inference worker and load each model's newest ready version, so that the first request
    after the ports open does not wait for them (seconds), as TF Serving has loaded its models by then."""
    from registry.errors import RegistryError

    service = registry.label_service()
    for source in sources:
        try:
            service.graph(service.resolve(source.name, None))
        except RegistryError as exc:  # nothing of it to serve yet: answered as TF Serving answers
            log.debug("model %r not loaded ahead: %s", source.name, exc.message)


def _taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now (None: it can, or port 0)."""
    if not port:
        return None
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _follow(args, importer, stop: threading.Event) -> None:
    """Until stopped: new version folders every --file_system_poll_wait_seconds, the config file again every
    --model_config_file_poll_wait_seconds (a config that no longer parses is logged, and the last one kept)."""
    files_every = args.file_system_poll_wait_seconds
    config_every = args.model_config_file_poll_wait_seconds if args.model_config_file else 0
    next_files = time.monotonic() + files_every if files_every > 0 else float("inf")
    next_config = time.monotonic() + config_every if config_every > 0 else float("inf")
    while not stop.wait(0.2):
        now = time.monotonic()
        if now >= next_config:
            next_config = now + config_every
            try:
                sources = tfs_sources.read_config(args.model_config_file)
            except tfs_sources.ConfigError as exc:
                log.error("%s; still serving the last config", exc)
            else:
                if sources != importer.sources:
                    log.info("model config changed: serving %s", ", ".join(s.name for s in sources) or "no models")
                    importer.replace_sources(sources)
                    next_files = now  # look for the new models' folders now
        if now >= next_files:
            next_files = now + files_every if files_every > 0 else float("inf")
            importer.sync()
        if importer.labels_pending:
            importer.apply_labels()


def _metrics_at(wsgi, path: str):
    """``wsgi`` answering the monitoring config's Prometheus ``path`` with the metrics endpoint."""
    from registry import metrics

    def app(environ, start_response):
        if environ.get("PATH_INFO") == path:
            environ = dict(environ, PATH_INFO=metrics.PATH)
        return wsgi(environ, start_response)

    return app


def console() -> None:
    """The ``tensorflow_model_server`` console script."""
    sys.exit(main())


@click.command("model-server", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def model_server(ctx: click.Context) -> None:
    """TF Serving's tensorflow_model_server, served by the registry (its flags: --help)."""
    sys.exit(main(list(ctx.args)))
