"""Commands that run graphs through a label service: ``label`` and ``compare``."""

from __future__ import annotations

from pathlib import Path

import click

from registry.cli.options import connect, split_ref, url_option
from registry.cli.output import print_predictions, table
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
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--versions", default=None, help="Comma-separated refs (default: the newest ready versions).")
@click.option("--expected", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file with the expected label of each image, one per line, in order.")
@click.option("--top-k", default=5, show_default=True, help="Classes to show per image, best first.")
@url_option
def compare(name: str, images: tuple[Path, ...], versions: str | None, expected: Path | None, top_k: int,
            url: str | None) -> None:
    """Run several versions of NAME on the same images and show where they disagree."""
    labels = None
    if expected is not None:
        labels = [line.strip() for line in expected.read_text().splitlines() if line.strip()]
    client = connect(url)
    answer = client.compare(name, list(images), versions.split(",") if versions else None, labels, top_k)
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
