"""``registry edit``, through the registry's HTTP API: what may change after a push.  A version's
preprocessing (label_image.py's settings, which :label applies from the next request on) and
description, or a model's description.  It prints each change as old -> new."""

from __future__ import annotations

import json

import click

from registry.cli.options import connect, preprocessing_options, split_ref, url_option

SETTINGS = ("input_height", "input_width", "input_mean", "input_std")
OPTIONS = ("--input-height, --input-width, --input-mean, --input-std (a version's preprocessing; give NAME:REF) "
           "or --description (a version's with NAME:REF, the model's with NAME)")


@click.command()
@click.argument("spec", metavar="NAME[:REF]")
@preprocessing_options
@click.option("--description", default=None, metavar="TEXT",
              help="The new description: of version REF with NAME:REF, of the model with NAME alone "
                   "('' clears it).")
@url_option
def edit(spec: str, input_height: int | None, input_width: int | None, input_mean: float | None,
         input_std: float | None, description: str | None, url: str | None) -> None:
    """Change a version's preprocessing or description (NAME:REF, REF: a number, an alias or latest),
    or a model's description (NAME).

    Settings left out keep their value; :label uses the new ones from the next request on.  Every
    change is recorded in the audit log under the token that made it.
    """
    values = dict(zip(SETTINGS, (input_height, input_width, input_mean, input_std)))
    settings = {k: v for k, v in values.items() if v is not None}
    if not settings and description is None:
        raise click.UsageError(f"say what to change: {OPTIONS}")
    name, colon, _ = spec.partition(":")
    if not name:
        raise click.UsageError(f"give the model's name: NAME or NAME:REF, not {spec!r}")
    client = connect(url)
    if not colon:
        if settings:
            raise click.UsageError(f"preprocessing belongs to a version: give {name}:REF (e.g. {name}:latest or "
                                   f"{name}:3) to change {', '.join('--' + k.replace('_', '-') for k in settings)}")
        before = client.get_model(name)
        after = client.update_model(name, description)
        _print_changes(f"model {name}", {"description": (before["description"], after["description"])})
        return
    name, ref = split_ref(spec)
    before = client.get_version(name, ref)
    number = before["version"]  # the version shown, should an alias move meanwhile
    after = client.update_version(name, number, preprocessing=settings or None, description=description)
    changes = {k: ((before.get("preprocessing") or {}).get(k), (after.get("preprocessing") or {}).get(k))
               for k in settings}
    if description is not None:
        changes["description"] = (before["description"], after["description"])
    _print_changes(f"{name} version {number}", changes)


def _shown(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _print_changes(what: str, changes: dict[str, tuple[object, object]]) -> None:
    """``what``, then each setting that changed as ``key: old -> new`` (those already so, said so)."""
    changed = {k: (old, new) for k, (old, new) in changes.items() if old != new}
    same = [k for k in changes if k not in changed]
    if not changed:
        click.echo(f"{what}: nothing changed ({', '.join(f'{k} is already {_shown(changes[k][1])}' for k in same)})")
        return
    click.echo(f"{what}:")
    for key, (old, new) in changed.items():
        click.echo(f"  {key}: {_shown(old)} -> {_shown(new)}")
    for key in same:
        click.echo(f"  {key}: {_shown(changes[key][1])} (unchanged)")
