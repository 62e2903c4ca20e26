"""What the commands that talk to a registry over HTTP share: ``--url``, ``--token`` and the client."""

from __future__ import annotations

from urllib.parse import urlsplit

import click
from click.core import ParameterSource

from registry.client import RegistryClient
from registry.config import DEFAULT_PORT, Settings


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


def connect(url: str | None) -> RegistryClient:
    """The HTTP client for ``--url`` (else REGISTRY_URL, else the local default), with ``--token``."""
    ctx = click.get_current_context()
    token = ctx.meta.get("registry.token")
    if url:
        _check_url(url, "REGISTRY_URL" if ctx.get_parameter_source("url") == ParameterSource.ENVIRONMENT
                   else "--url")
    return RegistryClient(url or Settings.from_env().server_url, token=token)


def _check_url(url: str, where: str) -> None:
    """A registry URL the client can use: http(s)://HOST[:PORT][/PATH], else one line saying what to type."""
    parts = urlsplit(url.strip())
    if "://" not in url:
        raise click.ClickException(f"{where} needs a scheme: http://{url.strip().lstrip('/')}")
    if parts.scheme.lower() not in ("http", "https"):
        raise click.ClickException(f"{where} must start with http:// or https://, not {url!r}")
    if not parts.hostname:
        raise click.ClickException(f"{where} {url!r} names no host: e.g. http://127.0.0.1:{DEFAULT_PORT}")


def split_ref(spec: str) -> tuple[str, str]:
    """``NAME[:REF]`` -> (NAME, REF), REF defaulting to ``latest``."""
    name, _, ref = spec.partition(":")
    if not name.strip():
        raise click.UsageError(f"{spec!r} names no model: write NAME or NAME:REF, e.g. cnn:3, cnn:production")
    return name, ref or "latest"


def _not_zero(_ctx, param: click.Parameter, value: float | None) -> float | None:
    if value == 0:
        raise click.BadParameter("must not be 0 (pixels are divided by it)", param=param)
    return value


PREPROCESSING_OPTIONS = (  # label_image.py's settings, as `push` sets them and `edit` changes them
    click.option("--input-height", type=click.IntRange(1, 8192), default=None, metavar="PIXELS",
                 help="Height :label resizes images to (default: the image input's height, else 299)."),
    click.option("--input-width", type=click.IntRange(1, 8192), default=None, metavar="PIXELS",
                 help="Width :label resizes images to (default: the image input's width, else 299)."),
    click.option("--input-mean", type=float, default=None, metavar="MEAN",
                 help="Subtracted from every pixel (0-255) before dividing by --input-std (default 0)."),
    click.option("--input-std", type=float, default=None, metavar="STD", callback=_not_zero,
                 help="Pixels are divided by it after subtracting --input-mean (default 255; e.g. 127.5 with "
                      "--input-mean 127.5 for [-1, 1])."),
)


def preprocessing_options(command):
    """``--input-height``, ``--input-width``, ``--input-mean`` and ``--input-std`` (None when not given)."""
    for option in reversed(PREPROCESSING_OPTIONS):
        command = option(command)
    return command
