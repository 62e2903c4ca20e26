"""What ``registry push`` was pointed at, read the way TensorFlow's own tools read it.

A checkpoint is named by its prefix (``train/model.ckpt``), never by one of its
files; a folder means the checkpoint its ``checkpoint`` state file names as the
latest (what ``tf.train.latest_checkpoint`` returns).  A path that is neither
gets a hint: the prefix it probably meant, or the checkpoints that are there.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

CHECKPOINT_FILE = re.compile(r"^(?P<prefix>.+?)\.(?:meta|index|data-\d{5}-of-\d{5})$")
STATE_LINE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"(?P<path>(?:[^"\\]|\\.)*)"\s*$', re.MULTILINE)

INPUT_KINDS = """give what to push, one of:
  registry push NAME train/model.ckpt              a checkpoint prefix (its .meta, .index and .data-* files)
  registry push NAME train/                        a training folder: its latest checkpoint
  registry push NAME train/model.ckpt --graph inference_graph.pb
                                                   a checkpoint frozen with an exported inference graph
  registry push NAME --frozen frozen_graph.pb      an already-frozen GraphDef
  registry push NAME --saved-model export/1        a SavedModel folder (or a .zip/.tar.gz of it)
  registry push NAME --keras model.keras           a Keras model file (.keras or .h5)"""


def checkpoint_prefix(given: Path) -> Path:
    """The checkpoint prefix ``given`` names: itself, or a folder's latest checkpoint.  A file of a
    checkpoint (``model.ckpt.meta``) or a prefix with no files gets a one-line hint instead."""
    if given.is_dir():
        return _latest_in(given)
    if _has_checkpoint(given):
        return given
    match = CHECKPOINT_FILE.match(given.name)
    if match and _has_checkpoint(given.with_name(match["prefix"])):
        prefix = given.with_name(match["prefix"])
        raise click.UsageError(f"{given} is one file of a checkpoint: name the checkpoint by its prefix, "
                               f"did you mean {prefix}?")
    folder = given.parent if str(given.parent) else Path(".")
    found = _prefixes(folder) if folder.is_dir() else []
    if found:
        raise click.UsageError(f"no checkpoint at {given} (no {given.name}.index): checkpoints in {folder}: "
                               + ", ".join(str(folder / p) for p in found[:5]) + (" ..." if len(found) > 5 else ""))
    if given.is_file():
        raise click.UsageError(f"{given} is a file, not a checkpoint prefix: a frozen graph is pushed with "
                               f"--frozen {given}, a Keras file with --keras {given}")
    data = sorted(folder.glob(f"{given.name}.data-*-of-*")) if folder.is_dir() else []
    if data:
        raise click.UsageError(f"no checkpoint at {given}: {given}.index is missing ({len(data)} .data file(s) "
                               "found): copy the .index file saver.save wrote with them")
    raise click.UsageError(f"no checkpoint at {given}: {given}.index and {given}.data-*-of-* are missing "
                           "(give the path training passed to saver.save)")


def _has_checkpoint(prefix: Path) -> bool:
    return Path(f"{prefix}.index").is_file()


def _prefixes(folder: Path) -> list[str]:
    """The checkpoint prefixes in ``folder``, newest first."""
    try:
        indexes = sorted(folder.glob("*.index"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    return [p.name[: -len(".index")] for p in indexes]


def _latest_in(folder: Path) -> Path:
    """The checkpoint a training folder's ``checkpoint`` file names as latest (else its only one)."""
    state = folder / "checkpoint"
    if state.is_file():
        try:
            match = STATE_LINE.search(state.read_text(errors="replace"))
        except OSError as exc:
            raise click.UsageError(f"cannot read {state}: {exc.strerror or exc}") from None
        if match:
            named = Path(match["path"].encode().decode("unicode_escape"))
            prefix = named if named.is_absolute() else folder / named
            if _has_checkpoint(prefix):
                return prefix
            if _has_checkpoint(folder / named.name):  # a folder copied from elsewhere: the state file's path moved
                return folder / named.name
            raise click.UsageError(f"{state} names {match['path']} as the latest checkpoint, but there is no "
                                   f"{prefix}.index: push a checkpoint prefix instead, e.g. registry push NAME "
                                   f"{folder / (_prefixes(folder) or ['model.ckpt'])[0]}")
    found = _prefixes(folder)
    if len(found) == 1:
        return folder / found[0]
    if found:
        raise click.UsageError(f"{folder} holds {len(found)} checkpoints and no 'checkpoint' file naming the "
                               f"latest: push one by its prefix, e.g. registry push NAME {folder / found[0]}")
    raise click.UsageError(f"{folder} holds no checkpoint (no *.index file): push a checkpoint prefix, or "
                           "another kind of model with --frozen, --saved-model or --keras (see registry push --help)")
