"""Commands that run graphs through a label service: ``label`` and ``compare``; ``comparisons`` lists and
shows the reports comparisons leave."""

from __future__ import annotations

import time
from pathlib import Path

import click

from registry.cli.options import connect, split_ref, url_option
from registry.cli.output import print_predictions, table, when
from registry.cli.wording import for_cli
from registry.client import ClientError


IMAGE_FAULTS = (400, 413)  # the image's fault (not an image, damaged, too many pixels): the next may do


@click.command()
@click.argument("spec", metavar="NAME[:REF]")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--top-k", default=5, show_default=True, help="Classes to show per image, best first.")
@url_option
def label(spec: str, images: tuple[Path, ...], top_k: int, url: str | None) -> None:
    """Label images with a version (REF: number, alias or latest), like label_image.py."""
    name, ref = split_ref(spec)
    client = connect(url)
    failed: list[Path] = []
    for image in images:
        try:
            answer = client.label(name, ref, image, top_k)
        except ClientError as exc:
            if exc.status not in IMAGE_FAULTS:
                raise  # the model, the server or the URL: the next image would fail alike
            if len(images) == 1:
                raise click.ClickException(f"{image}: {for_cli(exc.message)}") from None
            click.echo(f"Error: {image}: {for_cli(exc.message)}", err=True)
            failed.append(image)
            continue
        timing = answer["timing_ms"]
        print_predictions(f"{image}: {name} version {answer['version']} "
                          f"({timing['inference']:.1f} ms inference, {timing['total']:.1f} ms total)",
                          answer["predictions"])
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(images)} images could not be labelled: "
                                   f"{', '.join(map(str, failed))}")



@click.command()
@click.argument("name")
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--versions", default=None, help="Comma-separated refs: numbers, aliases, latest (default: the newest "
                                               "ready versions).")
@click.option("--eval-set", "eval_set", default=None, metavar="SET[@REV]",
              help="Compare on a stored evaluation set (its newest revision, or revision REV) instead of images.")
@click.option("--signature", default=None, help="The signature to run (default: each version's default signature).")
@click.option("--tolerance", type=float, default=None,
              help="Numeric outputs: a difference up to this counts as the same value (default 1e-6).")
@click.option("--wait", is_flag=True, help="When the comparison runs as a job (a large set), wait for it with a "
                                           "progress bar and print its report.")
@click.option("--expected", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file with the expected label of each image, one per line, in order.")
@click.option("--top-k", default=5, show_default=True, help="Classes to show per image, best first.")
@url_option
def compare(name: str, images: tuple[Path, ...], versions: str | None, eval_set: str | None, signature: str | None,
            tolerance: float | None, wait: bool, expected: Path | None, top_k: int, url: str | None) -> None:
    """Run several versions of NAME on the same images, or on a stored evaluation set (--eval-set), and
    show where they agree and differ.  Every comparison is kept as a report (see `registry comparisons`)."""
    refs = [v.strip() for v in versions.split(",")] if versions else None
    if refs is not None and not all(refs):
        raise click.ClickException(f"--versions {versions!r} has an empty entry: write e.g. --versions 1,2,production")
    if eval_set is not None:
        if images or expected is not None:
            raise click.ClickException("give either --eval-set or images (with --expected), not both")
        body: dict = {"eval_set": eval_set, "top_k": top_k}
        if refs:
            body["versions"] = refs
        if signature:
            body["signature_name"] = signature
        if tolerance is not None:
            body["tolerance"] = tolerance
        client = connect(url)
        answer = client.compare_json(name, body)
        if answer.get("status") != "done":
            if not wait:
                click.echo(f"comparison report {answer['report']} runs as a job ({answer.get('total', '?')} inputs): "
                           f"registry comparisons {name} {answer['report']}, or add --wait")
                return
            stored = _follow(client, name, answer["report"])
            answer = {**stored["report"], "report": stored["id"], "url": stored["url"]}
        print_report(answer)
        return
    if not images:
        raise click.ClickException("give images to compare on, or --eval-set SET[@REV] for a stored evaluation set")
    if signature or tolerance is not None or wait:
        raise click.ClickException("--signature, --tolerance and --wait go with --eval-set; images run through "
                                   "each version's default signature")
    labels = None
    if expected is not None:
        labels = [line.strip() for line in expected.read_text().splitlines() if line.strip()]
    client = connect(url)
    answer = client.compare(name, list(images), refs, labels, top_k)
    report = answer["versions"]
    header = ("IMAGE", *(f"v{v['version']}" + (f" ({','.join(v['aliases'])})" if v["aliases"] else "")
                         for v in report), *(("EXPECTED",) if labels else ()), "AGREE")
    rows = []
    for i, image in enumerate(answer["images"]):
        cells = [f"{v['results'][i]['predictions'][0]['label']} {v['results'][i]['predictions'][0]['score']:.3f}"
                 for v in report]
        rows.append((image["image"], *cells, *((image["expected"],) if labels else ()),
                     "yes" if image["agree"] else "NO"))
    table(header, rows)
    click.echo("")
    table(("VERSION", "LATENCY MS", "PER IMAGE MS", "TOP-1", "TOP-5"),
          [(str(v["version"]), f"{v['latency_ms']:.1f}", f"{v['latency_per_image_ms']:.1f}",
            f"{v['accuracy']['top1']:.1%}" if v["accuracy"] else "-",
            f"{v['accuracy']['top5']:.1%}" if v["accuracy"] else "-") for v in report])
    for pair in answer["agreement"]["pairs"]:
        diff = pair["mean_abs_score_diff"]
        click.echo(f"v{pair['a']} vs v{pair['b']}: top-1 agreement {pair['top1_agreement']:.1%}"
                   + (f", mean |score difference| {diff:.4f}" if diff is not None else ""))
    if answer["agreement"]["disagreements"]:
        click.echo("disagree on: " + ", ".join(answer["agreement"]["disagreements"]))
    if answer.get("url"):
        click.echo(_kept(client_url(), name, answer["report"]))


def _follow(client, name: str, report_id: int, poll: float = 0.5) -> dict:
    """A report's progress as a bar until it is done (or failed: one line saying why)."""
    from tqdm import tqdm

    stored = client.get_comparison(name, report_id)
    with tqdm(total=stored["total"] or None, unit="input", desc=f"report {report_id}", leave=False) as bar:
        while stored["status"] in ("queued", "running"):
            time.sleep(poll)
            stored = client.get_comparison(name, report_id)
            if stored["total"] and bar.total != stored["total"]:
                bar.total = stored["total"]
            bar.update(max(0, stored["done"] - bar.n))
    if stored["status"] == "failed":
        raise click.ClickException(f"comparison report {report_id} failed: {for_cli(stored['error'] or '')}")
    return stored


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_report(report: dict) -> None:
    """A comparison report's figures as tables: per version, then per pair."""
    versions = report["versions"]
    where = f"evaluation set {report['eval_set']}" if report.get("eval_set") else "uploaded inputs"
    click.echo(f"{report['model']}: {report['kind']} comparison of {len(versions)} versions on {report['inputs']} "
               f"inputs ({where}, signature {report.get('signature') or 'default'})")
    rows = []
    for v in versions:
        latency = v.get("latency") or {}
        accuracy = v.get("accuracy") or {}
        k = accuracy.get("k", report.get("top_k", 5))
        errors = v.get("errors") or {}
        error = next(iter(errors.values()), None)
        rows.append((f"v{v['version']}" + (f" ({','.join(v['aliases'])})" if v.get("aliases") else ""),
                     f"{latency.get('p50_ms', 0):.1f}", f"{latency.get('p95_ms', 0):.1f}",
                     f"{v.get('inputs_per_second', 0):.1f}", _percent(accuracy.get("top1")),
                     _percent(accuracy.get(f"top{k}")), f"{error['mae']:.4g}" if error else "-",
                     f"{error['rmse']:.4g}" if error else "-"))
    table(("VERSION", "P50 MS", "P95 MS", "INPUTS/S", "TOP-1", f"TOP-{report.get('top_k', 5)}", "MAE", "RMSE"), rows)
    click.echo("")
    if report["kind"] == "classifier":
        agreement = report["agreement"]
        for pair in agreement["pairs"]:
            k = pair.get("topk", 5)
            click.echo(f"v{pair['a']} vs v{pair['b']}: top-1 agreement {_percent(pair['top1_agreement'])}, "
                       f"top-{k} agreement {_percent(pair.get(f'top{k}_agreement'))}")
        if agreement["disagreement_count"]:
            shown = agreement["disagreements"][:10]
            more = agreement["disagreement_count"] - len(shown)
            click.echo(f"disagree on {agreement['disagreement_count']} inputs: " + ", ".join(shown)
                       + (f" and {more} more" if more > 0 else ""))
    else:
        differences = report.get("differences") or {"pairs": []}
        table(("PAIR", "OUTPUT", "MAX |DIFF|", "MEAN |DIFF|", f"WITHIN {differences.get('tolerance', 0):g}"),
              [(f"v{p['a']} vs v{p['b']}", key, f"{o['max_abs_diff']:.4g}", f"{o['mean_abs_diff']:.4g}",
                _percent(o["within_tolerance"])) for p in differences["pairs"] for key, o in p["outputs"].items()])
    if report.get("url"):
        click.echo(_kept(client_url(), report.get("model") or "", report["report"]))


@click.command()
@click.argument("name")
@click.argument("report_id", required=False, type=int, metavar="[ID]")
@click.option("--limit", default=20, show_default=True, help="Reports to list, newest first.")
@url_option
def comparisons(name: str, report_id: int | None, limit: int, url: str | None) -> None:
    """List NAME's stored comparison reports, or show report ID."""
    client = connect(url)
    if report_id is not None:
        stored = client.get_comparison(name, report_id)
        gone = [f"v{v['version']}" for v in stored["versions"] if v.get("deleted")]
        if gone:
            click.echo(f"note: {', '.join(gone)} {'was' if len(gone) == 1 else 'were'} deleted since this comparison")
        if stored["eval_set"] and stored["eval_set"].get("deleted"):
            click.echo(f"note: evaluation set {stored['eval_set']['name']}@{stored['eval_set']['revision']} was "
                       "deleted since this comparison")
        if stored["status"] != "done":
            detail = f": {stored['error']}" if stored.get("error") else ""
            click.echo(f"report {stored['id']} is {stored['status']} ({stored['done']} of {stored['total']} "
                       f"inputs){detail}")
            return
        print_report({**stored["report"], "report": stored["id"], "url": stored["url"]})
        return
    rows = []
    for item in client.list_comparisons(name, limit):
        eval_set = item["eval_set"]
        rows.append((str(item["id"]), item["status"], when(item["created_at"]),
                     ",".join(f"v{v['version']}" + (" (deleted)" if v.get("deleted") else "") for v in item["versions"]),
                     f"{eval_set['name']}@{eval_set['revision']}" if eval_set else "uploaded",
                     item["signature"] or "default", f"{item['done']}/{item['total']}"))
    if not rows:
        click.echo(f"{name} has no comparison reports yet: run `registry compare {name} --eval-set SET`")
        return
    table(("ID", "STATUS", "CREATED", "VERSIONS", "SET", "SIGNATURE", "PROGRESS"), rows)


@click.command("auto-compare")
@click.argument("name")
@click.option("--set", "sets", multiple=True, metavar="SET",
              help="An evaluation set each newly ready version is compared on (repeatable).")
@click.option("--reference", default=None, metavar="ALIAS",
              help="The alias whose version it is compared with (default production).")
@click.option("--off", is_flag=True, help="Stop comparing new versions automatically.")
@url_option
def auto_compare(name: str, sets: tuple[str, ...], reference: str | None, off: bool, url: str | None) -> None:
    """Compare each newly ready version of NAME with an alias's version on evaluation sets, or show the
    setting (no option)."""
    client = connect(url)
    if off and (sets or reference):
        raise click.UsageError("give --off alone, or --set SET (and --reference ALIAS)")
    if off:
        answer = client.set_auto_compare(name, None, None)
    elif sets:
        answer = client.set_auto_compare(name, list(sets), reference)
    else:
        if reference:
            raise click.UsageError("give the sets to compare on: --set SET (repeatable)")
        answer = client.get_auto_compare(name)
    if answer.get("sets"):
        click.echo(f"{name}: each newly ready version is compared with {answer['reference']} on "
                   f"{', '.join(answer['sets'])}")
    else:
        click.echo(f"{name}: no automatic comparison (turn it on with --set SET)")


def client_url() -> str:
    """The registry URL the current command talks to (for the report's page)."""
    ctx = click.get_current_context()
    return connect(ctx.params.get("url")).url


def _kept(base: str, name: str, report_id: int) -> str:
    """Where a stored report is: the command that shows it, and its page."""
    return (f"report {report_id} kept: registry comparisons {name} {report_id} "
            f"(page: {base}/models/{name}/comparisons/{report_id})")
