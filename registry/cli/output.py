"""How the commands print: aligned tables, progress bars on a terminal, a model, a version and its
signatures, safety, preprocessing and files, a serving plan."""

from __future__ import annotations

import sys

import click
from tqdm import tqdm

from registry.cli.wording import for_cli


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], indent: str = "") -> None:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    for row in (header, *rows):
        click.echo(indent + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


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


def when(stamp: str | None) -> str:
    """An API timestamp to the second, as ``2026-11-30 05:49:00``."""
    return (stamp or "-")[:19].replace("T", " ")


def version_rows(versions: list[dict]) -> list[tuple[str, ...]]:
    """Rows of ``VERSION_HEADER`` for ``ls NAME`` and ``show NAME``."""
    return [(str(v["version"]), v["status"], v["source"], ", ".join(v["output_nodes"] or []) or "-",
             ", ".join(v["aliases"]) or "-", when(v["created_at"])) for v in versions]


VERSION_HEADER = ("VERSION", "STATUS", "SOURCE", "OUTPUTS", "ALIASES", "CREATED")


def print_model(m: dict, versions: list[dict], more: bool) -> None:
    """A model: description, versions count, newest ready version, aliases, allowlist, newest versions."""
    click.echo(f"{m['name']}" + (f": {m['description']}" if m.get("description") else ""))
    latest = m["latest_version"]
    click.echo(f"  versions: {m['version_count']}; latest (newest ready): {latest if latest else 'none yet'}"
               + (f"; highest number: {m['last_version']}" if m["last_version"] != latest else ""))
    click.echo(f"  aliases: {', '.join(f'{k}={v}' for k, v in m['aliases'].items()) or 'none'}")
    if m.get("allowed_ops"):
        click.echo(f"  allowed ops: {', '.join(m['allowed_ops'])}")
    click.echo(f"  created: {when(m['created_at'])}, updated: {when(m['updated_at'])}")
    if not versions:
        return
    click.echo(f"  newest {len(versions)} version(s):" if more else "  versions:")
    table(VERSION_HEADER, version_rows(versions), indent="    ")


UPLOAD_FLAGS_SHOWN = 6  # flagged ops of the uploaded graph named by `registry show`


def _safety(v: dict) -> list[str]:
    """The op scan's verdict: nothing flagged, or each flagged op and whether the allowlist covers it."""
    s = v.get("safety")
    if not s:
        return ["not scanned yet" if v["status"] in ("queued", "running") else "not scanned"]
    ops = s.get("op_histogram") or {}
    scanned = f"{sum(ops.values())} nodes, {len(ops)} kinds of op scanned"
    flags = s.get("flags") or []
    if not flags:
        lines = [f"{scanned}; nothing flagged"]
    else:
        state = ("refused: the label service and the export never run it" if s.get("flagged")
                 else "every flagged op is on the model's allowlist: served")
        lines = [f"{scanned}; {state}"]
        lines += [f"  flagged {f['op']} ({f['category']}, {f.get('count', 0)} node(s)): "
                  + ("allowed" if f.get("allowed") else f"not allowed (registry allow-ops {v['model']} {f['op']} "
                                                         "--reason ... with an admin token)") for f in flags]
    frozen_ops = {f["op"] for f in flags}
    upload = [f for f in s.get("upload_flags") or [] if isinstance(f, dict) and f.get("op") not in frozen_ops]
    if upload:  # training and saving ops of the uploaded graph that freezing left behind
        named = [f"{f.get('op')} ({f.get('count', 0)}, {str(f.get('category', 'flagged')).replace('_', ' ')})"
                 for f in upload[:UPLOAD_FLAGS_SHOWN]]
        more = f" and {len(upload) - UPLOAD_FLAGS_SHOWN} more" if len(upload) > UPLOAD_FLAGS_SHOWN else ""
        lines.append(f"  only in the upload, not in the frozen graph (never run): {', '.join(named)}{more}")
    return lines


def _number(value) -> str:
    return "?" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _preprocessing(p: dict | None) -> str:
    """label_image.py's settings: resize to height x width, then (x - mean) / std."""
    p = p or {}
    if all(p.get(k) is None for k in ("input_height", "input_width", "input_mean", "input_std")):
        return "none recorded"
    size = (f"resize to {_number(p.get('input_height'))} x {_number(p.get('input_width'))}"
            if p.get("input_height") is not None and p.get("input_width") is not None
            else "input size not known until converted (read from the input's shape)")  # the API's null
    return f"{size}, mean {_number(p.get('input_mean'))}, std {_number(p.get('input_std'))}"


def print_version_detail(v: dict, labels: int | None) -> None:
    """Everything about a version: status, outputs and inputs, source, aliases, verification, safety,
    preprocessing, labels, signatures, SavedModel state and files (``labels``: the labels file's line count,
    None without one)."""
    print_version(v)
    click.echo(f"  source: {v['source']}" + (f", TensorFlow {v['tensorflow_version']}"
                                              if v.get("tensorflow_version") else ""))
    if v.get("description"):
        click.echo(f"  description: {v['description']}")
    click.echo(f"  aliases: {', '.join(v['aliases']) or 'none'}")
    click.echo(f"  created: {when(v['created_at'])}" + (f", ready: {when(v['ready_at'])}" if v.get("ready_at")
                                                         else ""))
    verification = _verification(v.get("verification"))
    click.echo(f"  verification: {verification.removeprefix('verification ')}")
    safety = _safety(v)
    click.echo(f"  safety: {safety[0]}")
    for line in safety[1:]:
        click.echo(f"  {line}")
    click.echo(f"  preprocessing: {_preprocessing(v.get('preprocessing'))}")
    labels_file = next((f.get("filename") for f in v.get("files") or [] if f.get("role") == "labels"), None)
    click.echo(f"  labels: {labels} ({labels_file or 'labels.txt'})" if labels is not None
               else "  labels: none (class indexes)")
    print_signatures(v)
    saved = v.get("saved_model") or {}
    if saved.get("state"):
        click.echo(f"  SavedModel: {saved['state']}" + (f" ({for_cli(saved['message'])})"
                                                          if saved.get("message") else ""))
    files = v.get("files") or []
    if files:
        click.echo("  files:")
        table(("ROLE", "FILENAME", "SIZE", "SHA256"),
              [(f["role"], f["filename"], str(f["size"]), f["sha256"]) for f in files], indent="    ")
