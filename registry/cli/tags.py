"""``registry tag`` and ``registry search``: tags on models and versions, and search across every
model's versions with the filter grammar, through the registry's HTTP API."""

from __future__ import annotations

import click

from registry.cli.options import connect, url_option
from registry.cli.output import table


def parse_tag(value: str) -> tuple[str, str]:
    key, sep, text = value.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"{value!r} is not KEY=VALUE, e.g. team=vision", param_hint="KEY=VALUE")
    return key.strip(), text


@click.command()
@click.argument("spec", metavar="NAME[:REF]")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--delete", "deleted", multiple=True, metavar="KEY", help="Remove this tag (repeatable).")
@url_option
def tag(spec: str, pairs: tuple[str, ...], deleted: tuple[str, ...], url: str | None) -> None:
    """Set, change or remove tags of a model (NAME) or of a version (NAME:REF), or show them.

    Every change is audited; a key is letters, digits, '_', '-', '.', '/' or ':', a value up to
    5,000 characters.
    """
    name, _, ref = spec.partition(":")
    if not name.strip():
        raise click.UsageError(f"{spec!r} names no model: write NAME or NAME:REF")
    changes: dict[str, str | None] = dict(parse_tag(p) for p in pairs)
    both = sorted(set(changes) & set(deleted))
    if both:
        raise click.UsageError(f"tag {both[0]!r} is both set and deleted: give one")
    changes.update({key: None for key in deleted})
    client = connect(url)
    if changes:
        tags = client.set_tags(name, ref or None, changes)
    else:
        record = client.get_version(name, ref) if ref else client.get_model(name)
        tags = record.get("tags") or {}
    what = f"{name} version {ref}" if ref else name
    click.echo(f"{what}: " + (", ".join(f"{k}={v}" for k, v in tags.items()) if tags else "no tags"))


@click.command()
@click.argument("filter_text", metavar="FILTER", required=False, default="")
@click.option("--models", "models", is_flag=True, help="Search models (name, alias, created_at, tags.KEY) "
                                                      "instead of versions.")
@click.option("--order-by", default=None, metavar="FIELD [ASC|DESC]",
              help="Versions: created_at (default, newest first), version or name; models: name or created_at.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Results to show.")
@url_option
def search(filter_text: str, models: bool, order_by: str | None, limit: int, url: str | None) -> None:
    """Versions (or --models) matching FILTER, e.g. 'tags.team = "vision" AND status = "ready"'.

    Fields: name, version, status, source, alias, created_at, tags.KEY; operators = != < <= > >=
    LIKE ILIKE IN, NOT IN; AND, OR, NOT and parentheses.
    """
    client = connect(url)
    if models:
        rows = [(m["name"], str(m["version_count"]), ", ".join(f"{k}={v}" for k, v in m["aliases"].items()) or "-",
                 ", ".join(f"{k}={v}" for k, v in (m.get("tags") or {}).items()) or "-")
                for m in client.search_models(filter_text, order_by=order_by, limit=limit)]
        table(("MODEL", "VERSIONS", "ALIASES", "TAGS"), rows)
        return
    rows = [(v["model"], str(v["version"]), v["status"], v["source"], ", ".join(v["aliases"]) or "-",
             ", ".join(f"{k}={t}" for k, t in (v.get("tags") or {}).items()) or "-", v["created_at"][:19])
            for v in client.search_versions(filter_text, order_by=order_by, limit=limit)]
    table(("MODEL", "VERSION", "STATUS", "SOURCE", "ALIASES", "TAGS", "CREATED"), rows)
    if not rows:
        click.echo("no version matches", err=True)
