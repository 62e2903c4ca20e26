"""Everyday looks through the registry's HTTP API (``--url``, ``--token``): ``show`` (a model or a version),
``predict`` (TF Serving's REST ``:predict`` on the label service) and ``audit`` (the audit log)."""

from __future__ import annotations

import json
import sys

import click

from registry.cli.options import connect, split_ref, url_option
from registry.cli.output import print_model, print_version_detail, table, when
from registry.cli.wording import for_cli
from registry.client import ClientError, RegistryClient
from registry.entities import label_lines


@click.command()
@click.argument("spec", metavar="NAME[:REF]")
@click.option("--limit", default=5, show_default=True, type=click.IntRange(min=0),
              help="Newest versions to list when showing a model (NAME without :REF).")
@url_option
def show(spec: str, limit: int, url: str | None) -> None:
    """Show a model (NAME), or a version (NAME:REF; REF: number, vN, alias or latest).

    A model: description, versions, latest, aliases and its newest versions.  A version: status,
    outputs and inputs, source, aliases, verification, safety (the op scan's flags and the model's
    allowlist), preprocessing, labels, signatures and files (role, filename, size, sha256).
    """
    client = connect(url)
    if ":" not in spec:
        model = client.get_model(spec)
        versions = list(client.list_versions(spec, limit)) if limit else []
        print_model(model, versions, more=model["version_count"] > len(versions))
        return
    show_version(client, *split_ref(spec))


def show_version(client: RegistryClient, name: str, ref: str) -> None:
    """A version in full (``show NAME:REF`` and ``version show``)."""
    record = client.get_version(name, ref)
    has_labels = any(f["role"] == "labels" for f in record.get("files") or [])
    labels = len(label_lines(client.get_labels(name, record["version"]))) if has_labels else None
    print_version_detail(record, labels)


@click.command()
@click.argument("spec", metavar="NAME[:REF]")
@click.option("--json", "body", required=True, metavar="JSON | @FILE | -",
              help='The request body, as TF Serving\'s REST API takes it: {"instances": [...]} (rows) or '
                   '{"inputs": ...} (columns); @FILE reads it from a file, - from standard input.')
@click.option("--signature", default=None, metavar="NAME",
              help="The signature to run (TF Serving's signature_name; default serving_default).")
@url_option
def predict(spec: str, body: str, signature: str | None, url: str | None) -> None:
    """Run a version (REF: number, vN, alias or latest) on inputs through the label service's TF Serving
    REST :predict (POST /v1/models/NAME[/versions/N | /labels/ALIAS]:predict), and print its JSON answer.

    The label service is the registry's own URL in the embedded default (--url / REGISTRY_URL);
    a label service run alone (registry label-serve) answers the same paths on its own port.
    """
    name, ref = split_ref(spec)
    request = _request_body(body, signature)
    try:
        answer = connect(url).predict(name, ref, json.dumps(request).encode())
    except ClientError as exc:  # TF Serving's {"error": "..."}, often several lines of TensorFlow's
        raise click.ClickException(" ".join(for_cli(exc.message).split())) from None
    click.echo(json.dumps(answer, indent=2))


def _request_body(text: str, signature: str | None) -> dict:
    """The --json argument (text, @FILE or - for stdin) as a JSON object, with --signature in it."""
    where = "the body"
    if text == "-":
        text, where = sys.stdin.read(), "standard input"
    elif text.startswith("@"):
        where = text[1:]
        try:
            with open(where, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise click.BadParameter(f"cannot read {where}: {reason}", param_hint="--json") from None
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{where} is not valid JSON ({exc})", param_hint="--json") from None
    if not isinstance(request, dict):
        raise click.BadParameter(f'{where} must be a JSON object such as {{"instances": [...]}}, not a '
                                 f"{type(request).__name__}", param_hint="--json")
    if not {"instances", "inputs"} & request.keys():
        raise click.BadParameter(f'{where} has neither "instances" (rows) nor "inputs" (columns): e.g. '
                                 '{"instances": [[1.0, 2.0]]}', param_hint="--json")
    if signature:
        given = request.get("signature_name")
        if given not in (None, signature):
            raise click.BadParameter(f'{where} names signature_name "{given}" and --signature {signature}: give '
                                     "one of them", param_hint="--signature")
        request["signature_name"] = signature
    return request


@click.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Events to list.")
@click.option("--action", default=None, metavar="ACTION",
              help="Only events of this action, e.g. alias.set, version.push, version.delete, token.create.")
@url_option
def audit(limit: int, action: str | None, url: str | None) -> None:
    """List the audit log, newest first: when (UTC), who, what, on what and why (admin token)."""
    try:
        events = list(connect(url).list_audit(action=action, limit=limit))
    except ClientError as exc:
        if exc.status != 401 and exc.code != "insufficient_scope":
            raise
        scope = f" ({exc.message.split(';')[0]})" if exc.code == "insufficient_scope" else ""
        raise click.ClickException(
            f"the audit log needs an admin token{scope}: pass one with --token or REGISTRY_TOKEN (an admin "
            "creates it with `registry token create --name NAME --scope admin`)") from None
    if not events:
        click.echo(f"no {action} events" if action else "no events yet")
        return
    table(("WHEN (UTC)", "ACTOR", "ACTION", "TARGET", "REASON", "DETAILS"),
          [(when(e["created_at"]), e["actor"], e["action"], e["target"] or "-",
            _one_line((e.get("details") or {}).get("reason")) or "-", _details(e.get("details"))) for e in events])


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) if text else ""


def _details(details: dict | None, width: int = 60) -> str:
    """The event's other details, as key=value on one line, cut at ``width`` characters."""
    text = ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else 'none' if v is None else v}"
                     for k, v in (details or {}).items() if k != "reason")
    text = _one_line(text)
    return (text[:width - 1] + "…" if len(text) > width else text) or "-"
