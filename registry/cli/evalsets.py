"""``registry eval-set``: a model's evaluation sets through the registry's HTTP API (``--url``, ``--token``):
``add`` a revision, ``ls`` sets or a set's revisions, ``pull`` one, ``delete`` one or a whole set."""

from __future__ import annotations

from pathlib import Path

import click

from registry.cli.options import connect, url_option
from registry.cli.output import progress, table

SUFFIXES = (".tar.gz", ".zip", ".tar", ".tgz", ".jsonl", ".ndjson", ".json", ".npz", ".tfrecords", ".tfrecord")


def _split(spec: str) -> tuple[str, int | None]:
    """``SET`` or ``SET@REVISION`` -> (set, revision or None for the latest)."""
    name, at, revision = spec.partition("@")
    if not name.strip():
        raise click.UsageError(f"{spec!r} names no set: write SET or SET@REVISION, e.g. holdout@2")
    if at and not (revision.isascii() and revision.isdecimal() and int(revision) >= 1):
        raise click.UsageError(f"{spec!r}: the revision after '@' is a number, e.g. {name}@2")
    return name, int(revision) if at else None


def _what(record: dict) -> str:
    """What a revision holds, in a few words: inputs, formats, expected values."""
    summary = record.get("summary") or {}
    count = f"{record['count']:,}"
    if record["format"] == "images":
        kinds = ", ".join(f"{k} {v:,}" for k, v in (summary.get("images") or {}).items())
        text = f"{count} images ({kinds})"
    elif record["format"] == "tfrecord":
        text = f"{count} tf.Examples"
    else:
        inputs = ", ".join(f"{k or '(single input)'} {v.get('dtype')} {v.get('shape')}"
                           for k, v in (summary.get("inputs") or {}).items())
        text = f"{count} inputs ({inputs})"
    if summary.get("expected"):
        labels = summary.get("labels")
        text += "; expected " + (f"labels ({len(labels)}{'+' if summary.get('labels_truncated') else ''} distinct)"
                                 if labels else "values")
        if summary.get("label_feature"):
            text += f" from feature {summary['label_feature']}"
        elif summary.get("expected_file"):
            text += f" from {summary['expected_file']}"
    return text


def _when(record: dict) -> str:
    """When a revision was uploaded, to the second (UTC)."""
    return record["created_at"][:19].replace("T", " ")


@click.group("eval-set")
def eval_set() -> None:
    """Add, list, download and delete a model's evaluation sets (what :compare runs versions on)."""


@eval_set.command()
@click.argument("name")
@click.argument("set_name", metavar="SET")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--label-feature", default=None, metavar="FEATURE",
              help="For a TFRecord set: the tf.Example feature holding each record's expected label or value.")
@click.option("--description", default="", help="What the set is (shown with its revisions).")
@url_option
def add(name: str, set_name: str, file: Path, label_feature: str | None, description: str, url: str | None) -> None:
    """Upload FILE as the next revision of evaluation set SET of model NAME (write token).

    FILE: a .zip/.tar/.tar.gz of images (optional expected.txt, one label per image in sorted path order,
    or a file,label CSV), JSON Lines (.jsonl: {"instances": [...]} or one input object per line, optional
    "expected"), a .npz of arrays keyed by input name (optional "expected" array), or a .tfrecord of
    tf.Examples (with --label-feature)."""
    client = connect(url)
    with progress(file.stat().st_size, file.name) as bar:
        record = client.add_eval_set(name, set_name, file, label_feature, description, progress=bar.update)
    click.echo(f"{name}: evaluation set {record['ref']} stored: {_what(record)}")
    click.echo(f"  {record['format']}, {record['size']:,} bytes, sha256 {record['sha256']}")


@eval_set.command()
@click.argument("name")
@click.argument("set_name", metavar="[SET]", required=False)
@url_option
def ls(name: str, set_name: str | None, url: str | None) -> None:
    """List the evaluation sets of NAME (each one's latest revision), or the revisions of SET."""
    client = connect(url)
    if set_name is None:
        found = client.list_eval_sets(name)
        if not found:
            click.echo(f"{name} has no evaluation sets: add one with registry eval-set add {name} SET FILE")
            return
        table(("SET", "LATEST", "REVISIONS", "FORMAT", "WHAT", "CREATED"),
              [(s["name"], str(s["revision"]), str(s["revisions"]), s["format"], _what(s), _when(s)) for s in found])
        return
    revisions = client.list_eval_set_revisions(name, _split(set_name)[0])
    table(("REVISION", "FORMAT", "WHAT", "SIZE", "SHA256", "CREATED", "BY", "DESCRIPTION"),
          [(str(r["revision"]), r["format"], _what(r), f"{r['size']:,}", r["sha256"][:12], _when(r), r["created_by"],
            r["description"]) for r in revisions])


@eval_set.command()
@click.argument("name")
@click.argument("spec", metavar="SET[@REV]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the file (default: SET-REV with the uploaded file's extension, here).")
@url_option
def pull(name: str, spec: str, output: Path | None, url: str | None) -> None:
    """Download a revision of an evaluation set (the latest without @REV), its sha256 checked."""
    set_name, revision = _split(spec)
    client = connect(url)
    records = client.list_eval_set_revisions(name, set_name)
    record = records[0] if revision is None else next((r for r in records if r["revision"] == revision), None)
    rev = record["revision"] if record else revision
    if output is None:
        filename = (record or {}).get("filename", "").lower()
        suffix = next((s for s in SUFFIXES if filename.endswith(s)), "")
        output = Path(f"{set_name}-{rev}{suffix}")
    record = client.pull_eval_set(name, set_name, rev, output)
    click.echo(f"{name}: evaluation set {record['ref']} -> {output} ({record['size']:,} bytes, sha256 "
               f"{record['sha256']})")


@eval_set.command()
@click.argument("name")
@click.argument("spec", metavar="SET[@REV]")
@click.option("--yes", is_flag=True, help="Do not ask before deleting every revision of a set.")
@url_option
def delete(name: str, spec: str, yes: bool, url: str | None) -> None:
    """Delete one revision of an evaluation set (SET@REV) or all of them (SET) (write token, audited).

    Reports that name a deleted revision stay readable; registry gc frees its file once nothing else
    refers to it."""
    set_name, revision = _split(spec)
    client = connect(url)
    if revision is None and not yes:
        count = len(client.list_eval_set_revisions(name, set_name))
        click.confirm(f"delete evaluation set {set_name} of {name} and its {count} revision(s)?", abort=True)
    answer = client.delete_eval_set(name, set_name, revision)
    click.echo(f"{name}: evaluation set {set_name} revision(s) {', '.join(map(str, answer['revisions_deleted']))} "
               "deleted")
