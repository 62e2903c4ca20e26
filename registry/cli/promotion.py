"""Aliases and what guards them, through the registry's HTTP API: ``registry alias`` (move, remove,
history, as of a time), ``registry rollback``, ``registry alias-rule`` (protected aliases and their
promotion gates) and ``registry metrics`` (named metrics of a version, the evidence gates read)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from registry.cli.options import connect, split_ref, url_option
from registry.cli.output import table


def _gate(text: str | None) -> dict | None:
    if text is None:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {text[1:]}: {exc.strerror or exc}", param_hint="--gate") from None
    try:
        gate = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"the gate is not JSON ({exc})", param_hint="--gate") from None
    return gate if isinstance(gate, dict) and "conditions" in gate else {"conditions": gate}


@click.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int, required=False)
@click.option("--delete", is_flag=True, help="Remove the alias.")
@click.option("--reason", default="", help="Why it moves (kept in its history; needed for a protected alias).")
@click.option("--force", is_flag=True, help="Move past a failing promotion gate (admin token, with --reason).")
@click.option("--history", is_flag=True, help="Show every move of the alias: from, to, who, when, why.")
@click.option("--at", "at", default=None, metavar="TIME", help="Show which version it pointed at then, e.g. "
                                                               "2026-11-24T10:00Z.")
@url_option
def alias(name: str, alias: str, version: int | None, delete: bool, reason: str, force: bool, history: bool,
          at: str | None, url: str | None) -> None:
    """Point ALIAS of NAME at VERSION, remove it (--delete), or show its history (--history) or where it
    pointed at a time (--at)."""
    client = connect(url)
    if sum(bool(x) for x in (delete, history, at, version is not None)) > 1:
        raise click.UsageError("give one of: VERSION, --delete, --history, --at TIME")
    if history:
        rows = [(m["at"][:19], str(m["from_version"] or "-"), str(m["to_version"] or "-"), m["actor"],
                 ("forced: " if m["forced"] else "") + (m["reason"] or "-"))
                for m in client.alias_history(name, alias, limit=100)]
        table(("WHEN (UTC)", "FROM", "TO", "WHO", "WHY"), rows)
    elif at:
        state = client.get_alias(name, alias, at)
        held = f"version {state['version']}" if state["version"] else "no version (it did not exist, or was removed)"
        click.echo(f"{name}: {alias} held {held} at {state['at'][:19]} UTC")
    elif delete:
        client.delete_alias(name, alias, reason)
        click.echo(f"{name}: alias {alias} removed")
    elif version is None:
        raise click.UsageError("give the version number the alias should point at")
    else:
        client.set_alias(name, alias, version, reason, force)
        click.echo(f"{name}: {alias} -> version {version}" + (" (forced past its gate)" if force else ""))


@click.command()
@click.argument("name")
@click.argument("alias")
@click.option("--reason", default="", help="Why (kept in its history; needed for a protected alias).")
@click.option("--force", is_flag=True, help="Move past a failing promotion gate (admin token, with --reason).")
@url_option
def rollback(name: str, alias: str, reason: str, force: bool, url: str | None) -> None:
    """Move ALIAS of NAME back to the version it held before its last move."""
    answer = connect(url).rollback(name, alias, reason, force)
    click.echo(f"{name}: {alias} -> version {answer['version']} (rolled back)")


@click.command("alias-rule")
@click.argument("name")
@click.argument("alias", required=False)
@click.option("--protect/--unprotect", "protected", default=None,
              help="Protected: moving it needs the promote scope (or admin) and --reason.")
@click.option("--gate", default=None, metavar="JSON | @FILE",
              help='Conditions a version must meet first, e.g. \'[{"kind": "verified"}, {"kind": "metric", '
                   '"name": "accuracy@val", "min": 0.75}]\' (kinds: verified, not_flagged, metric, agreement, '
                   "latency_p50_ms).")
@click.option("--no-gate", is_flag=True, help="Remove the alias's gate.")
@url_option
def alias_rule(name: str, alias: str | None, protected: bool | None, gate: str | None, no_gate: bool,
               url: str | None) -> None:
    """Show NAME's protected aliases and gates, or set ALIAS's (admin token)."""
    client = connect(url)
    rules = {r["alias"]: r for r in client.alias_rules(name)}
    if alias is None or (protected is None and gate is None and not no_gate):
        shown = [r for a, r in rules.items() if alias in (None, a)]
        table(("ALIAS", "PROTECTED", "GATE"), [(r["alias"], "yes" if r["protected"] else "no", json.dumps(
            (r["gate"] or {}).get("conditions")) if r["gate"] else "-") for r in shown])
        return
    if gate is not None and no_gate:
        raise click.UsageError("give --gate or --no-gate, not both")
    current = rules.get(alias, {"protected": False, "gate": None})
    rule = client.set_alias_rule(name, alias, current["protected"] if protected is None else protected,
                                 None if no_gate else _gate(gate) if gate is not None else current["gate"])
    conditions = len((rule["gate"] or {}).get("conditions", []))
    click.echo(f"{name}: {alias} is {'protected' if rule['protected'] else 'not protected'}"
               + (f", gate of {conditions} condition(s)" if conditions else ", no gate"))


@click.command()
@click.argument("spec", metavar="NAME[:REF]")
@click.argument("pairs", nargs=-1, metavar="[NAME=VALUE]...")
@click.option("--eval-set", default=None, help="The evaluation set they were measured on.")
@click.option("--step", type=click.IntRange(min=0), default=None, help="The training step they belong to.")
@url_option
def metrics(spec: str, pairs: tuple[str, ...], eval_set: str | None, step: int | None, url: str | None) -> None:
    """Record metrics of a version (e.g. accuracy@val=0.78), or show them."""
    name, ref = split_ref(spec)
    client = connect(url)
    if pairs:
        values = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            try:
                values[key.strip()] = float(text) if sep else None
            except ValueError:
                values[key.strip()] = None
            if values[key.strip()] is None:
                raise click.BadParameter(f"{pair!r} is not NAME=NUMBER, e.g. accuracy@val=0.78",
                                         param_hint="NAME=VALUE")
        client.record_metrics(name, ref, values, eval_set, step)
    rows = client.list_metrics(name, ref)
    table(("METRIC", "VALUE", "SET", "STEP", "SOURCE", "WHEN (UTC)"),
          [(m["name"], f"{m['value']:g}", m["eval_set"] or "-", str(m["step"]) if m["step"] is not None else "-",
            m["source"], m["created_at"][:19]) for m in rows])
