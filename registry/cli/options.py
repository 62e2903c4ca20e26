"""What the commands that talk to a registry over HTTP share: ``--url``, ``--token`` and the client."""

from __future__ import annotations

import click

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
    token = click.get_current_context().meta.get("registry.token")
    return RegistryClient(url or Settings.from_env().server_url, token=token)


def split_ref(spec: str) -> tuple[str, str]:
    """``NAME[:REF]`` -> (NAME, REF), REF defaulting to ``latest``."""
    name, _, ref = spec.partition(":")
    return name, ref or "latest"
