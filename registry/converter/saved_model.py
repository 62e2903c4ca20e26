"""A SavedModel from a frozen graph, in the form TensorFlow Serving loads.

TF Serving cannot load a frozen ``.pb``; it loads ``saved_model.pb`` +
``variables/``.  A frozen graph has only constants, so the SavedModel is the
graph itself with every signature of the version (registry.signatures: their
keys, tensors and method names, as the label service's metadata reports them)
and an empty ``variables/`` folder.

The archive is deterministic (sorted members, zero times, fixed owner), so the
same frozen graph always gives the same bytes and the same sha256.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tarfile
import tempfile
from pathlib import Path

from registry.errors import ConversionError

SERVING_TAG = "serve"


def build_saved_model(frozen_path: Path, signature_map: dict[str, dict], export_dir: Path) -> None:
    """Write a SavedModel of the frozen graph at ``frozen_path`` into ``export_dir`` (must not exist), with
    every signature of ``signature_map`` (registry.signatures) and its method name."""
    import tensorflow as tf  # only here: write_archive (the CLI's push) needs no TensorFlow

    tf1 = tf.compat.v1
    graph_def = tf1.GraphDef()
    graph_def.ParseFromString(frozen_path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        del graph_def
        info = tf1.saved_model.utils.build_tensor_info
        try:
            # Optional inputs (PlaceholderWithDefault) stay out: a signature's inputs are all required.
            defs = {name: tf1.saved_model.signature_def_utils.build_signature_def(
                inputs={k: info(graph.get_tensor_by_name(e["name"])) for k, e in sig["inputs"].items()
                        if not e.get("optional")},
                outputs={k: info(graph.get_tensor_by_name(e["name"])) for k, e in sig["outputs"].items()},
                method_name=sig["method"]) for name, sig in signature_map.items()}
        except (KeyError, ValueError) as exc:
            raise ConversionError(f"a signature names a tensor the frozen graph lacks ({exc})",
                                  code="invalid_signature") from exc
        with tf1.Session(graph=graph) as session:
            builder = tf1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(session, [SERVING_TAG], signature_def_map=defs,
                                                 strip_default_attrs=True)
            builder.save()
    (export_dir / "variables").mkdir(exist_ok=True)


def write_archive(directory: Path, archive: Path) -> None:
    """``directory``'s contents as a deterministic .tar.gz, or a plain .tar when ``archive`` is named so
    (paths relative to it).  The registry stores its SavedModels as plain tars: float weights do not
    compress, and gzip took longer than building the SavedModel."""
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(archive, "wb"))
        if archive.name.endswith((".gz", ".tgz")):
            raw = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=1))
        tar = stack.enter_context(tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT))
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


def build_archive(frozen_path: Path, signature_map: dict[str, dict], archive: Path) -> None:
    """Build the SavedModel of a frozen graph and pack it as ``archive`` (.tar.gz)."""
    with tempfile.TemporaryDirectory(prefix="saved-model-", dir=archive.parent) as tmp:
        export_dir = Path(tmp) / "saved_model"
        build_saved_model(frozen_path, signature_map, export_dir)
        write_archive(export_dir, archive)
