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
    return name, ref or "latest"
