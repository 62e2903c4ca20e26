"""``shadow`` through the registry's HTTP API: which version gets a copy of an alias's traffic, and how
it agreed with the alias's version."""

from __future__ import annotations

import click

from registry.cli.options import connect, url_option
from registry.cli.output import table, when

HEADER = ("WINDOW (UTC)", "VERSIONS", "REQUESTS", "COMPARED", "AGREEMENT", "MEAN |DIFF|", "MAX |DIFF|", "DROPPED",
          "ERRORS")


def _version(value: str | None) -> int | None:
    """VERSION as a number: 3 or v3."""
    if value is None:
        return None
    digits = value[1:] if value[:1] in ("v", "V") else value
    if not (digits.isascii() and digits.isdecimal()) or int(digits) < 1:
        raise click.BadParameter(f"{value!r} is not a version number: write it as 3 or v3", param_hint="VERSION")
    return int(digits)


def _rate(figures: dict) -> str:
    return "-" if figures["agreement"] is None else f"{figures['agreement']:.1%}"


def _diff(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


@click.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version", required=False)
@click.option("--delete", is_flag=True, help="Stop shadowing the alias (what was measured stays readable).")
@click.option("--since", default=None, metavar="TIME",
              help="Show windows from this ISO 8601 time on, e.g. 2026-11-30T06:00:00Z (default: 24 hours ago).")
@click.option("--until", default=None, metavar="TIME", help="Show windows before this ISO 8601 time (default: now).")
@click.option("--windows", "limit", default=10, show_default=True, type=click.IntRange(min=0),
              help="How many of the newest windows to list (0: totals only).")
@url_option
def shadow(name: str, alias: str, version: str | None, delete: bool, since: str | None, until: str | None,
           limit: int, url: str | None) -> None:
    """Show ALIAS's shadow version of NAME and how it agreed with the alias's version; with VERSION, let
    that version get a copy of every request the alias answers; --delete stops shadowing.

    The alias's version answers as before; a copy of each request runs on the shadow in the background,
    and agreement (the same top-1 class; numbers within REGISTRY_SHADOW_TOLERANCE) and output differences
    are counted per time window.  Setting and stopping need a write token.
    """
    number = _version(version)
    client = connect(url)
    if delete and number is not None:
        raise click.UsageError("give either VERSION (to set the shadow) or --delete (to stop it), not both")
    if delete:
        answer = client.delete_shadow(name, alias)
        click.echo(f"{name}:{alias}: no shadow any more (version {answer['version']} answers alone)")
        return
    if number is not None:
        answer = client.set_shadow(name, alias, number)
        click.echo(f"{name}:{alias} -> version {answer['version']}; shadow: version {answer['shadow_version']} "
                   "gets a copy of each request")
        return
    report = client.get_shadow(name, alias, since=since, until=until)
    shadow_version = report["shadow_version"]
    click.echo(f"{name}:{alias} -> version {report['version']}; shadow: "
               + (f"version {shadow_version}" if shadow_version is not None else "none (set one: registry shadow "
                  f"{name} {alias} VERSION)"))
    totals = report["totals"]
    click.echo(f"from {when(report['since'])} to {when(report['until'])} UTC (windows of "
               f"{report['window_seconds']:g} s): {totals['requests']} requests, {totals['compared']} inputs "
               f"compared, {totals['agreed']} agreed ({_rate(totals)}), mean |diff| {_diff(totals['mean_abs_diff'])}, "
               f"max |diff| {_diff(totals['max_abs_diff'])}, {totals['dropped']} dropped, {totals['errors']} errors")
    windows = report["windows"][-limit:] if limit else []
    if windows:
        table(HEADER, [(when(w["window_start"]), f"{w['primary_version']} vs {w['shadow_version']}",
                        str(w["requests"]), str(w["compared"]), _rate(w), _diff(w["mean_abs_diff"]),
                        _diff(w["max_abs_diff"]), str(w["dropped"]), str(w["errors"])) for w in windows])
    if report["samples"]:
        click.echo(f"{len(report['samples'])} disagreeing inputs kept: "
                   f"GET /api/v1/models/{name}/aliases/{alias}/shadow shows them")
