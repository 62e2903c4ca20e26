"""A SavedModel from a frozen graph, in the form TensorFlow Serving loads.

TF Serving cannot load a frozen ``.pb``; it loads ``saved_model.pb`` +
``variables/``.  A frozen graph has only constants, so the SavedModel is the
graph itself with one ``serving_default`` signature from the recorded input
nodes to the recorded output nodes (keys: node names with every character
other than letters, digits and ``_`` turned into ``_``, as the label service's
metadata reports them) and an empty ``variables/`` folder.

The archive is deterministic (sorted members, zero times, fixed owner), so the
same frozen graph always gives the same bytes and the same sha256.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import tempfile
from pathlib import Path

from registry.errors import ConversionError

SERVING_TAG = "serve"
SIGNATURE = "serving_default"


def signature_key(node: str) -> str:
    """``InceptionV3/Predictions/Reshape_1`` → ``InceptionV3_Predictions_Reshape_1``."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in node)


def _keys(names: list[str], what: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for name in names:
        key = signature_key(name)
        if key in keys:
            raise ConversionError(f"{what} nodes {keys[key]!r} and {name!r} give the same signature key {key!r}",
                                  code="signature_key_clash")
        keys[key] = name
    return keys


def build_saved_model(frozen_path: Path, input_nodes: list[dict], output_nodes: list[str], export_dir: Path) -> None:
    """Write a SavedModel of the frozen graph at ``frozen_path`` into ``export_dir`` (must not exist)."""
    import tensorflow as tf  # only here: write_archive (the CLI's push) needs no TensorFlow

    tf1 = tf.compat.v1
    graph_def = tf1.GraphDef()
    graph_def.ParseFromString(frozen_path.read_bytes())
    inputs = _keys([i["name"] for i in input_nodes if not i.get("optional")], "input")
    outputs = _keys(list(output_nodes), "output")
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        del graph_def
        # Optional inputs (PlaceholderWithDefault) stay out: a signature's inputs are all required.
        signature = tf1.saved_model.signature_def_utils.predict_signature_def(
            inputs={k: graph.get_tensor_by_name(f"{n}:0") for k, n in inputs.items()},
            outputs={k: graph.get_tensor_by_name(f"{n}:0") for k, n in outputs.items()},
        )
        with tf1.Session(graph=graph) as session:
            builder = tf1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(session, [SERVING_TAG], signature_def_map={SIGNATURE: signature},
                                                 strip_default_attrs=True)
            builder.save()
    (export_dir / "variables").mkdir(exist_ok=True)


def write_archive(directory: Path, archive: Path) -> None:
    """``directory``'s contents as a deterministic .tar.gz (paths relative to it)."""
    with open(archive, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = Path(root) / name
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(directory)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o755 if info.isdir() else 0o644
                if info.isdir():
                    tar.addfile(info)
                else:
                    with open(path, "rb") as f:
                        tar.addfile(info, f)


def build_archive(frozen_path: Path, input_nodes: list[dict], output_nodes: list[str], archive: Path) -> None:
    """Build the SavedModel of a frozen graph and pack it as ``archive`` (.tar.gz)."""
    with tempfile.TemporaryDirectory(prefix="saved-model-", dir=archive.parent) as tmp:
        export_dir = Path(tmp) / "saved_model"
        build_saved_model(frozen_path, input_nodes, output_nodes, export_dir)
        write_archive(export_dir, archive)
