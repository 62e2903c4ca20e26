"""Commands that talk to a registry through its HTTP API (``--url``, ``--token``): ``push``, ``pull``,
``ls``, ``delete``, ``allow-ops`` and ``serving-versions``.

Just over 400 lines, most of it ``push``: its options mirror the push form field for field, and its
hints (a missing file, a name one letter off) need the push's own arguments."""

from __future__ import annotations

import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click
import requests

from registry import signatures
from registry.cli import paths
from registry.cli.options import connect, preprocessing_options, split_ref, url_option
from registry.cli.paths import INPUT_KINDS
from registry.cli.tags import parse_tag
from registry.cli.output import print_version, progress, table
from registry.client import checkpoint_files
from registry.converter.saved_model import write_archive  # writes a .tar.gz: no TensorFlow


# The largest version number the registry keeps (registry.catalog.versions.MAX_VERSION_NUMBER: 32-bit columns),
# written out so that a client command does not load the database layer; a test keeps the two equal.
MAX_VERSION_NUMBER = 2**31 - 1


@click.command()
@click.argument("name")
@click.argument("checkpoint_prefix", required=False, type=click.Path(path_type=Path))
@click.option("--graph", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Inference GraphDef (.pb or .pbtxt) to freeze instead of the .meta graph.")
@click.option("--frozen", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Register an already-frozen GraphDef instead of a checkpoint.")
@click.option("--saved-model", type=click.Path(exists=True, path_type=Path),
              help="Push a TF2 SavedModel (its folder, or a .zip/.tar.gz of it) instead of a checkpoint.")
@click.option("--signature", "signature_args", multiple=True, metavar="NAME | NAME:inputs=a,b:outputs=c:method=M",
              help="With --saved-model: the signature input/output nodes describe (default serving_default; every "
                   "signature is kept). With a checkpoint or --frozen: a signature to add, e.g. "
                   "regress:inputs=tf_example:outputs=y:method=regress (repeatable).")
@click.option("--signatures", "signatures_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='Signatures to add, as a JSON file: [{"name", "method", "inputs": [...], "outputs": [...]}].')
@click.option("--keras", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Push a Keras model file (.keras or .h5) instead of a checkpoint.")
@click.option("--output-nodes", default="", help="Comma-separated output node names (detected when left out).")
@click.option("--input-nodes", default="", help="Comma-separated input node names (placeholders when left out).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Labels, one per line.")
@click.option("--description", default="", help="The version's description (registry edit changes it).")
@click.option("--tag", "tag_pairs", multiple=True, metavar="KEY=VALUE",
              help="A tag of the version (repeatable; registry tag changes them later).")
@click.option("--source-commit", default="", help="Lineage: the commit the model was trained from.")
@click.option("--run-url", default="", help="Lineage: the training run's URL.")
@click.option("--dataset", default="", help="Lineage: the dataset it was trained on.")
@click.option("--version-number", type=click.IntRange(1, MAX_VERSION_NUMBER), default=None, metavar="N",
              help="Register as version N (above every number the model had; TF Serving's folder number).")
@preprocessing_options
@click.option("--wait", is_flag=True, help="Wait until the version is ready or failed.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@url_option
def push(name, checkpoint_prefix, graph, frozen, saved_model, signature_args, signatures_file, keras, output_nodes,
         input_nodes, labels, description, tag_pairs, source_commit, run_url, dataset, version_number, input_height,
         input_width, input_mean, input_std, wait, timeout, url):
    """Push a checkpoint (CHECKPOINT_PREFIX, e.g. train/model.ckpt) as the next version of NAME."""
    signature, declared = _signature_options(signature_args, signatures_file)
    files: list[tuple[str, Path]] = []
    scratch = tempfile.TemporaryDirectory(prefix="registry-push-")
    if sum(bool(x) for x in (frozen, saved_model, keras, checkpoint_prefix)) > 1:
        raise click.UsageError("give one of: a checkpoint prefix, --frozen, --saved-model or --keras")
    if saved_model:
        if saved_model.is_dir():
            archive = Path(scratch.name) / f"{saved_model.name or 'saved_model'}.tar.gz"
            write_archive(saved_model, archive)
            saved_model = archive
        files.append(("saved_model", saved_model))
    elif keras:
        files.append(("keras", keras))
    elif frozen:
        if checkpoint_prefix:
            raise click.UsageError("give either a checkpoint prefix or --frozen, not both")
        files.append(("frozen", frozen))
    else:
        if not checkpoint_prefix:
            raise click.UsageError(INPUT_KINDS)
        checkpoint_prefix = paths.checkpoint_prefix(checkpoint_prefix)
        found = checkpoint_files(checkpoint_prefix)
        missing = [f"{checkpoint_prefix}.index" if k == "index" else f"{checkpoint_prefix}.data-*-of-* files"
                   for k in ("index", "data") if k not in found]
        if missing:
            there = [f"{checkpoint_prefix}.{k}" for k in ("index", "meta") if k in found]
            raise click.ClickException(
                f"no checkpoint at {checkpoint_prefix}: {' and '.join(missing)} missing"
                + (f" ({', '.join(there)} found): copy every file saver.save wrote for it" if there else ""))
        if "meta" not in found and not graph:
            raise click.ClickException(f"no {checkpoint_prefix}.meta: pass the inference graph with --graph")
        for role in ("meta", "index", "data"):
            files.extend((role, p) for p in found.get(role, []))
        if graph:
            files.append(("graph", graph))
    if labels:
        files.append(("labels", labels))
    fields = {k: v for k, v in {"output_nodes": output_nodes, "input_nodes": input_nodes,
                                "description": description, "signature": signature,
                                "signatures": json.dumps(declared) if declared else "",
                                "tags": json.dumps(dict(parse_tag(t) for t in tag_pairs)) if tag_pairs else "",
                                "source_commit": source_commit, "run_url": run_url, "dataset": dataset,
                                "version": "" if version_number is None else str(version_number),
                                **{k: "" if n is None else str(n) for k, n in (
                                    ("input_height", input_height), ("input_width", input_width),
                                    ("input_mean", input_mean), ("input_std", input_std))}}.items() if v}
    client = connect(url)
    total = sum(p.stat().st_size for _, p in files)
    try:
        with progress(total, f"push {name}") as bar:
            record = client.push(name, files, fields, progress=bar.update)
        click.echo(f"{name} version {record['version']}: {record['status']}")
        if record["version"] == 1 or (version_number is not None and client.get_model(name)["version_count"] == 1):
            _note_close_names(client, name)
        if wait:
            record = client.wait(name, record["version"], timeout=timeout)
            print_version(record)
            if record["status"] != "ready":
                sys.exit(1)
    finally:
        scratch.cleanup()


def _note_close_names(client, name: str) -> None:
    """A first push under a name close to an existing model's may be a typo: say so (the push stands)."""
    others = [m["name"] for m in client.list_models() if m["name"] != name]
    close = [m for m in others if _one_letter_off(m.lower(), name.lower())][:3]
    if close:
        click.echo(f"note: this push created a new model {name!r}; did you mean {' or '.join(map(repr, close))}? "
                   f"(if so: registry delete {name} --model, and push to {close[0]})", err=True)


def _one_letter_off(a: str, b: str) -> bool:
    """Equal but for one letter added, dropped or changed, or two neighbours swapped (a typo; not
    ``inception-v1`` beside ``inception``, which names a model of its own)."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    a, b = a[start:], b[start:]
    return a[1:] == b[1:] or a[1:] == b or a == b[1:] or (len(a) >= 2 and a[:2] == b[1::-1] and a[2:] == b[2:])


def _signature_options(args: tuple[str, ...], path: Path | None) -> tuple[str, list[dict]]:
    """(the SavedModel signature named, the signatures declared) from --signature and --signatures."""
    names = [a for a in args if ":" not in a]
    if len(names) > 1:
        raise click.UsageError(f"--signature names one SavedModel signature, not {len(names)}: "
                               f"{', '.join(names)}")
    declared: list[dict] = []
    if path is not None:
        try:
            loaded = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise click.BadParameter(f"{path} is not a JSON file ({exc})", param_hint="--signatures") from None
        declared += loaded if isinstance(loaded, list) else [loaded]
    for arg in args:
        if ":" in arg:
            try:
                declared.append(signatures.parse_declared(arg))
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--signature") from None
    try:
        signatures.validate_declared(declared)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--signature/--signatures") from None
    return (names[0] if names else ""), declared


@click.command()
@click.argument("spec", metavar="NAME[:REF]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it (default NAME-vN.pb, or NAME-vN-saved_model.tar).")
@click.option("--format", "fmt", type=click.Choice(["frozen", "saved_model"]), default="frozen", show_default=True,
              help="The frozen GraphDef, or the SavedModel built from it (a tar of the folder TF Serving loads).")
@click.option("--labels", "with_labels", is_flag=True,
              help="Also download the version's labels file, beside the graph: NAME-vN.labels.txt, or -o's name "
                   "with .labels.txt for its extension (a version without one is refused before any download).")
@url_option
def pull(spec: str, output: Path | None, fmt: str, with_labels: bool, url: str | None) -> None:
    """Download a version's frozen graph or SavedModel (REF: number, alias or latest) and check its sha256."""
    name, ref = split_ref(spec)
    if output is not None:
        _check_destination(output)
    client = connect(url)
    record = client.get_version(name, ref)
    labels_dest = _labels_destination(name, record, output) if with_labels else None
    if fmt == "saved_model":
        saved = next((f for f in record.get("files", []) if f["role"] == "saved_model"), None)
        suffix = ".tar.gz" if saved and saved["filename"].endswith(".gz") else ".tar"
        dest = output or Path(f"{name}-v{record['version']}-saved_model{suffix}")
        with _writing(dest):
            digest = client.pull_saved_model(name, record, dest)
        click.echo(f"{dest}: {name} version {record['version']} SavedModel, sha256 {digest} (verified)")
        _pull_labels(client, name, record, labels_dest)
        return
    dest = output or Path(f"{name}-v{record['version']}.pb")
    bar = None

    def start(total: int) -> None:
        nonlocal bar
        bar = progress(total, f"pull {name}:{record['version']}")

    with _writing(dest):
        client.pull(name, str(record["version"]), dest, progress=lambda n: bar.update(n), on_start=start)
    if bar is not None:
        bar.close()
    click.echo(f"{dest}: {name} version {record['version']}, sha256 {record['frozen']['sha256']} (verified)")
    if record.get("output_nodes"):
        click.echo(f"  outputs: {', '.join(record['output_nodes'])}")
    _pull_labels(client, name, record, labels_dest)


def _labels_destination(name: str, record: dict, output: Path | None) -> Path:
    """Where ``pull --labels`` writes the labels file; refused before any download when there is none."""
    if not any(f["role"] == "labels" for f in record.get("files") or []):
        raise click.ClickException(f"{name} version {record['version']} has no labels file (it labels with "
                                   "class indexes): pull without --labels")
    if output is None:
        return Path(f"{name}-v{record['version']}.labels.txt")
    stem = next((output.name[:-len(s)] for s in (".tar.gz", ".tar", ".pb", ".txt") if output.name.endswith(s)),
                output.name)
    return output.with_name(f"{stem}.labels.txt")


def _pull_labels(client, name: str, record: dict, dest: Path | None) -> None:
    if dest is None:
        return
    with _writing(dest):
        digest = client.pull_labels(name, record, dest)
    click.echo(f"{dest}: {name} version {record['version']} labels, sha256 {digest} (verified)")


def _check_destination(path: Path) -> None:
    """Refuse, before downloading anything, an ``-o`` whose folder does not exist."""
    folder = path.parent
    if not folder.exists():
        raise click.ClickException(f"the folder {folder} does not exist: create it (mkdir -p {folder}) "
                                   "or pick another -o")
    if not folder.is_dir():
        raise click.ClickException(f"{folder} is not a folder: pick another -o")


@contextmanager
def _writing(dest: Path):
    """A download's file errors (no permission, a full disk) as one line naming the file."""
    try:
        yield
    except requests.RequestException as exc:  # an OSError too
        raise click.ClickException(f"the download broke off ({exc}); nothing was written to {dest}: pull "
                                   "again") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {dest}: {exc.strerror or exc}; pick another -o "
                                   "(or free space there)") from None


@click.command("serving-versions")
@click.argument("name")
@click.argument("versions", required=False)
@click.option("--default", "use_default", is_flag=True, help="Back to the default: every aliased version and "
                                                              "the newest ready one.")
@url_option
def serving_versions(name: str, versions: str | None, use_default: bool, url: str | None) -> None:
    """Choose which versions of NAME a TF Serving export serves (VERSIONS: e.g. 1,3, or all), or show the
    setting (no VERSIONS)."""
    client = connect(url)
    if versions and use_default:
        raise click.UsageError("give the versions (e.g. 1,3) or --default, not both")
    if not versions and not use_default:
        chosen = client.get_model(name).get("served_versions")
        click.echo(f"{name}: {_serving_setting(chosen)} (change it with registry serving-versions {name} 1,3, "
                   "all or --default)")
        return
    try:
        numbers = None if use_default else "all" if versions == "all" else [
            int(v) for v in versions.split(",") if v.strip()]
    except ValueError:
        raise click.UsageError("versions are numbers separated by commas, e.g. 1,3") from None
    answer = client.set_served_versions(name, numbers)
    click.echo(f"{name}: {_serving_setting(answer['versions'])}")
    for number in numbers if isinstance(numbers, list) else []:
        status = client.get_version(name, str(number))["status"]
        if status != "ready":
            why = "it failed" if status == "failed" else f"it is {status}"
            click.echo(f"warning: version {number} is not served while {why}: an export serves ready versions "
                       "only" + ("" if status == "failed" else " (it will be, once ready)"), err=True)


def _serving_setting(chosen) -> str:
    return "serving " + ("every ready version" if chosen == "all" else ", ".join(map(str, chosen)) if chosen
                         else "every aliased version and the newest ready one (the default)")


@click.command("ls")
@click.argument("name", required=False)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Versions to show for NAME.")
@click.option("--search", default=None, metavar="TEXT",
              help="Only models whose name contains TEXT (any case; % and _ are plain characters).")
@url_option
def ls(name: str | None, limit: int, search: str | None, url: str | None) -> None:
    """List models, or the versions of NAME (newest first)."""
    if name is not None and search is not None:
        raise click.UsageError("--search filters the list of models: give it without NAME")
    client = connect(url)
    if name is None:
        rows = [(m["name"], str(m["version_count"]), str(m["latest_version"] or "-"),
                 ", ".join(f"{k}={v}" for k, v in m["aliases"].items()) or "-", _summary(m.get("description")))
                for m in client.list_models(search)]
        if search and not rows:
            click.echo(f"no model name contains {search!r}")
            return
        table(("MODEL", "VERSIONS", "LATEST", "ALIASES", "DESCRIPTION"), rows)
    else:
        rows = [(str(v["version"]), v["status"], v["source"], ", ".join(v["output_nodes"] or []) or "-",
                 ", ".join(v["aliases"]) or "-", v["created_at"][:19]) for v in client.list_versions(name, limit)]
        table(("VERSION", "STATUS", "SOURCE", "OUTPUTS", "ALIASES", "CREATED"), rows)


def _summary(description: str | None, width: int = 40) -> str:
    """A description's first line, cut to ``width`` characters with an ellipsis ("-": none)."""
    line = (description or "").strip().split("\n", 1)[0].strip()
    return "-" if not line else line if len(line) <= width else line[:width - 3].rstrip() + "..."


@click.command()
@click.argument("spec", metavar="NAME:VERSION | NAME --model")
@click.option("--model", "whole_model", is_flag=True, help="Delete the model NAME and every version of it.")
@click.option("--yes", is_flag=True, help="Do not ask before deleting a whole model.")
@url_option
def delete(spec: str, whole_model: bool, yes: bool, url: str | None) -> None:
    """Delete a version (NAME:VERSION) or, with --model, a model and all its versions.

    Version numbers are never reused; aliases pointing at a deleted version are
    removed; a conversion still queued or running is cancelled.  Storage is freed
    by 'registry gc'.
    """
    name, _, ref = spec.partition(":")
    client = connect(url)
    if whole_model:
        if ref:
            raise click.UsageError("--model deletes a whole model: give NAME without :VERSION")
        if not yes:
            count = client.get_model(name)["version_count"]
            click.confirm(f"delete model {name} and its {count} version(s)?", abort=True)
        answer = client.delete_model(name)
        aliases = f", aliases removed: {', '.join(answer['aliases_removed'])}" if answer["aliases_removed"] else ""
        click.echo(f"{name}: model deleted ({answer['versions_deleted']} version(s){aliases}); "
                   f"a new push of {name} starts at version {answer['last_version'] + 1}")
        return
    if not ref:
        raise click.UsageError("give NAME:VERSION (e.g. cnn:3), or NAME --model to delete the whole model")
    answer = client.delete_version(name, ref)
    extra = []
    if answer["aliases_removed"]:
        extra.append(f"aliases removed: {', '.join(answer['aliases_removed'])}")
    if answer["job_cancelled"]:
        extra.append("its conversion was cancelled")
    click.echo(f"{name}: version {answer['version']} deleted" + (f" ({'; '.join(extra)})" if extra else ""))


@click.command("allow-ops")
@click.argument("name")
@click.argument("ops", nargs=-1)
@click.option("--reason", default="", help="Why these ops are safe for this model (kept in the audit log).")
@click.option("--delete", is_flag=True, help="Remove OPS from the list (every op when none is given): versions "
                                             "flagged for them are refused again.")
@click.option("--clear", is_flag=True, hidden=True, help="The same as --delete with no OPS (older spelling).")
@url_option
def allow_ops(name: str, ops: tuple[str, ...], reason: str, delete: bool, clear: bool, url: str | None) -> None:
    """Allow OPS in NAME's graphs despite the converter's op scan (admin token), or show the list.

    The list replaces the previous one; the label service and the export serve a
    version once every op its scan flagged is on it, and refuse it again when one
    is removed (--delete).
    """
    client = connect(url)
    if clear:
        if ops:
            raise click.UsageError("--clear removes every op: to remove some, use --delete OPS")
        delete = True
    if delete:
        current = client.get_allowed_ops(name)["ops"]
        unknown = [op for op in ops if op not in current]
        if unknown:
            raise click.UsageError(f"not on {name}'s list: {', '.join(unknown)} (it holds: "
                                   f"{', '.join(current) or 'nothing'})")
        answer = client.set_allowed_ops(name, [op for op in current if ops and op not in ops], reason)
    elif ops:
        if not reason.strip():
            raise click.UsageError("say why with --reason (it is kept in the audit log)")
        answer = client.set_allowed_ops(name, list(ops), reason)
    else:
        answer = client.get_allowed_ops(name)
    click.echo(f"{name}: allowed ops: {', '.join(answer['ops']) or 'none'}")
    change = answer.get("last_change")
    if change:
        click.echo(f"  last changed by {change['actor']} at {change['at']}"
                   + (f": {change['reason']}" if change["reason"] else ""))
