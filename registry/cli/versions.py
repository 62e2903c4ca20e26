"""``registry version``: describe a version (signatures, prediction output) and change what may change
after a push, through the registry's HTTP API."""

from __future__ import annotations

import click

from registry.cli.inspect import show_version
from registry.cli.options import connect, split_ref, url_option


@click.group()
def version() -> None:
    """Describe a version, or change its prediction output."""


@version.command()
@click.argument("spec", metavar="NAME[:REF]")
@url_option
def show(spec: str, url: str | None) -> None:
    """Show a version (REF: number, alias or latest), as `registry show NAME:REF` does: status, inputs,
    outputs, verification, safety, preprocessing, signatures, the output :label ranks by, and files."""
    show_version(connect(url), *split_ref(spec))


@version.command("set")
@click.argument("spec", metavar="NAME[:REF]")
@click.option("--prediction-output", "node", default=None, metavar="NODE",
              help="The output :label and :compare rank classes by: one of the default signature's outputs.")
@click.option("--reason", default="", help="Why (kept in the audit log and shown with the version).")
@url_option
def set_(spec: str, node: str | None, reason: str, url: str | None) -> None:
    """Change a version (REF: number, alias or latest) after its push (write token)."""
    if not node:
        raise click.UsageError("say what to change: --prediction-output NODE")
    name, ref = split_ref(spec)
    record = connect(url).set_prediction_output(name, ref, node, reason)
    why = f" ({record['prediction_output_reason']})" if record.get("prediction_output_reason") else ""
    click.echo(f"{name} version {record['version']}: :label ranks by {record['prediction_output']}{why}")
