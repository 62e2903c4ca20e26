"""How the commands print: aligned tables, progress bars on a terminal, a version and its signatures, a
serving plan."""

from __future__ import annotations

import sys

import click
from tqdm import tqdm

from registry.cli.wording import for_cli


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    for row in (header, *rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def progress(total: int, description: str) -> tqdm:
    """A byte progress bar on stderr, shown only on a terminal."""
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
                disable=not sys.stderr.isatty(), file=sys.stderr)


def print_version(v: dict) -> None:
    """A version as the API answered it: status, inputs, outputs, the frozen graph, a refusal."""
    click.echo(f"{v['model']} version {v['version']}: {v['status']} - {for_cli(v['status_message'] or '')}")
    if v.get("output_nodes"):
        detected = " (detected)" if v.get("output_nodes_detected") else ""
        click.echo(f"  outputs{detected}: {', '.join(v['output_nodes'])}")
    for node in v.get("input_nodes") or []:
        click.echo(f"  input: {node['name']} {node['dtype']} {node['shape']}")
    if v.get("frozen"):
        click.echo(f"  frozen.pb: {v['frozen']['size']} bytes, sha256 {v['frozen']['sha256']}")
    if v.get("refusal"):
        click.echo(f"  refused: {for_cli(v['refusal'])}")


def _shape(dims: list | None) -> str:
    return "unknown" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _tensors(side: dict) -> str:
    return ", ".join(f"{key}={t['name']}" + (f" {t['dtype']}" if t.get("dtype") else "")
                     + (f" {_shape(t['shape'])}" if "shape" in t else "") for key, t in side.items()) or "-"


def _verification(check: dict | None) -> str:
    if not check:
        return "verification not recorded"
    why = check.get("reason") or check.get("note")
    if check["status"] == "passed" and check.get("max_abs_diff") is not None:
        return f"verified (largest difference {check['max_abs_diff']:.3g})"
    return f"verification {check['status']}" + (f": {why}" if why else "")


def print_signatures(v: dict) -> None:
    """A version's signatures (inputs -> outputs, verification), those not served, and its prediction output."""
    signatures = v.get("signatures") or {}
    if signatures:
        click.echo("  signatures:")
    for name, sig in signatures.items():
        default = ", default" if name == v.get("default_signature") else ""
        click.echo(f"    {name} ({sig['method'].rsplit('/', 1)[-1]}{default}): {_tensors(sig['inputs'])} -> "
                   f"{_tensors(sig['outputs'])}; {_verification(sig.get('verification'))}")
    failed = v.get("failed_signatures") or {}
    if failed:
        click.echo("  not served (could not be frozen or verified):")
        for name, why in failed.items():
            click.echo(f"    {name}: {for_cli(why)}")
    if v.get("prediction_output"):
        reason = f" ({v['prediction_output_reason']})" if v.get("prediction_output_reason") else ""
        click.echo(f"  prediction output: {v['prediction_output']}{reason}")


def print_predictions(title: str, predictions: list[dict]) -> None:
    click.echo(title)
    table(("RANK", "INDEX", "LABEL", "SCORE"),
          [(str(r), str(p["index"]), p["label"], f"{p['score']:.5f}") for r, p in enumerate(predictions, 1)])


def print_plan(models: list) -> None:
    """What a TF Serving export serves per model, and what it left out and why."""
    for m in models:
        if m.skipped and not m.exported:
            click.echo(f"  {m.name}: not served ({m.skipped})")
            continue
        labels = ", ".join(f"{k}={v}" for k, v in m.labels.items()) or "none"
        click.echo(f"  {m.name}: versions {', '.join(map(str, m.exported)) or 'none'}; labels {labels}")
        for s in m.skipped_versions:
            click.echo(f"    version {s['version']} left out: {s['reason']}")
        for s in m.skipped_aliases:
            click.echo(f"    alias {s['alias']} (version {s['version']}) is no label: {s['reason']}")
