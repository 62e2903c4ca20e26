"""Whole-model scans of SavedModel and Keras uploads, before anything of them runs.

Loading a SavedModel runs the model's own ops: a TF1 ``main_op`` or legacy
init op, the saver's restore op, a TF2 resource's ``_initialize`` function.
Loading a Keras file builds its layers, and a ``Lambda`` layer is Python.  So
the converter reads these uploads as data first (protobufs, JSON, HDF5
attributes) and scans all of it: every MetaGraphDef, every node, every function
in every library (TF2 objects' functions included), the init and main ops and
asset initialisers.  A flagged op anywhere flags the version, and then nothing
of the upload is run.

The one part left out of the scan is the standard saver (the ``saver_def``'s
save and restore subgraphs): the converter never runs it (variables are read
with a checkpoint reader), and every SavedModel has one.  It is left out only
when it looks like what TensorFlow writes: checkpoint ops whose file name comes
from the saver's file-name tensor and nothing else of concern.  A restore op
that reads a path of its own is scanned, and flagged, like any other op.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from registry.converter import ops
from registry.converter.graphs import ancestors, node_name
from registry.errors import ConversionError

CALL_OPS = {"StatefulPartitionedCall", "PartitionedCall", "If", "StatelessIf", "While", "StatelessWhile", "Case",
            "StatelessCase"}
# Ops a checkpoint saver is made of; anything else inside the saver is scanned like any node.
SAVER_OPS = {"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec", "Save", "SaveSlices",
             "Restore", "RestoreSlice", "StringJoin", "StaticRegexFullMatch", "Select", "SelectV2", "Const", "Identity",
             "IdentityN", "NoOp", "Pack", "Assign", "AssignVariableOp", "ReadVariableOp", "DisableCopyOnRead",
             "VarHandleOp", "VariableV2", "Variable", "Placeholder", "PlaceholderWithDefault",
             "StatefulPartitionedCall", "PartitionedCall"}
# Checkpoint ops and the inputs that name the files they touch.
FILE_INPUTS = {"SaveV2": (0,), "Save": (0,), "SaveSlices": (0,), "RestoreV2": (0,), "Restore": (0,),
               "RestoreSlice": (0,), "MergeV2Checkpoints": (0, 1), "ShardedFilename": (0,), "ShardedFilespec": (0,)}
# Ops that only carry a file name along (the first input is the name, the rest suffixes or shard numbers).
NAME_CARRIERS = {"Identity", "StringJoin", "ShardedFilename", "ShardedFilespec"}
# Variable creation and initialisation: state only, no file, network or Python access.  They are
# not in a frozen inference graph, but every SavedModel holds them outside its signatures.
STATE_OPS = frozenset("""
    Assign AssignAdd AssignSub AssignVariableOp AssignAddVariableOp AssignSubVariableOp DisableCopyOnRead
    DestroyResourceOp IsVariableInitialized VarIsInitializedOp VariableShape ReadVariableOp VarHandleOp
    VariableV2 Variable RandomUniform RandomStandardNormal TruncatedNormal RandomUniformInt
    StatelessRandomUniformV2 StatelessRandomNormalV2 StatelessTruncatedNormalV2 StatelessRandomGetKeyCounter
    StatelessRandomGetKeyCounterAlg StatelessRandomUniformIntV2 StatelessRandomGetAlg StatelessTruncatedNormal
    StaticRegexFullMatch Assert Print PrintV2 ReportUninitializedVariables
    """.split())
LAMBDA_CLASSES = {"Lambda": ops.CALLS_PYTHON, "TFSMLayer": ops.READS_FILES, "__lambda__": ops.CALLS_PYTHON}
MAX_KERAS_CONFIG_BYTES = 16 * 1024 * 1024
# Values Keras serialises as tagged objects (tensors, arrays, slices): data, not classes.
KERAS_DATA_TAGS = {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__",
                   "__typespec__"}


@dataclass
class UploadScan:
    """Every op of an upload outside its standard saver, and what the scan flags."""

    histogram: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)
    custom_objects: list[str] = field(default_factory=list)

    def add(self, where: str, op: str, category: str | None) -> None:
        self.histogram[op] += 1
        if category is not None:
            self.categories[op] = category
            names = self.examples.setdefault(op, [])
            if len(names) < 5 and where not in names:
                names.append(where)

    @property
    def flags(self) -> list[dict]:
        return [{"op": op, "category": self.categories[op], "count": self.histogram[op], "nodes": nodes}
                for op, nodes in sorted(self.examples.items())]

    def blocking(self, allowed_ops: Iterable[str]) -> list[dict]:
        allowed = set(allowed_ops)
        return [f for f in self.flags if f["op"] not in allowed]


def classify_any(op: str) -> str | None:
    """The scan's category for an op anywhere in an upload (initialisation state ops pass)."""
    category = ops.classify(op)
    if category == ops.NOT_ALLOWLISTED and op in STATE_OPS:
        return None
    return category


# SavedModel ------------------------------------------------------------------------------------------


def read_saved_model(folder: Path):
    """The ``SavedModel`` proto of an unpacked upload (parsed, nothing loaded)."""
    path = folder / "saved_model.pb"
    if not path.is_file():
        raise ConversionError("the archive has no saved_model.pb at its top", code="invalid_saved_model")
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise ConversionError(f"saved_model.pb is not a SavedModel ({exc}): archive the folder written by "
                              "tf.saved_model.save or model.export", code="invalid_saved_model") from exc
    if not proto.meta_graphs:
        raise ConversionError("saved_model.pb holds no MetaGraphDef: archive the folder written by "
                              "tf.saved_model.save or model.export", code="invalid_saved_model")
    return proto


def scan_saved_model(proto) -> UploadScan:
    """Scan every MetaGraphDef, node and function of a parsed SavedModel."""
    scan = UploadScan()
    for index, meta in enumerate(proto.meta_graphs):
        label = f"meta_graph[{index}]" if len(proto.meta_graphs) > 1 else ""
        exempt_nodes, exempt_functions = standard_saver(meta)
        library = {f.signature.name: f for f in meta.graph_def.library.function}
        for node in meta.graph_def.node:
            if node.name not in exempt_nodes:
                scan.add(_where(label, node.name), node.op, _category(node.op, library))
            _check_called_functions(node, library, scan, label)
        for function in meta.graph_def.library.function:
            if function.signature.name in exempt_functions:
                continue
            for node in function.node_def:
                scan.add(_where(label, f"{function.signature.name}/{node.name}"), node.op,
                         _category(node.op, library))
                _check_called_functions(node, library, scan, label)
        for name in _named_init_ops(meta):
            if name not in {n.name for n in meta.graph_def.node}:
                scan.add(_where(label, name), "MissingInitOp", ops.NOT_ALLOWLISTED)
    return scan


def _category(op: str, library: dict) -> str | None:
    """A node whose op is a library function calls it (the function's own nodes are scanned)."""
    return None if op in library else classify_any(op)


def _where(label: str, name: str) -> str:
    return f"{label}/{name}" if label else name


def _check_called_functions(node, library: dict, scan: UploadScan, label: str) -> None:
    """A node calling a function the library does not define could be anything."""
    for value in node.attr.values():
        called = [value.func.name] if value.HasField("func") else [f.name for f in value.list.func]
        for name in called:
            if name and name not in library:
                scan.add(_where(label, node.name), f"UndefinedFunction:{name}"[:120], ops.NOT_ALLOWLISTED)


def _named_init_ops(meta) -> list[str]:
    """Init, main and legacy-init ops and table initialisers the MetaGraphDef names."""
    names = []
    for key in ("saved_model_main_op", "legacy_init_op", "table_initializer", "init_op"):
        if key in meta.collection_def:
            names.extend(node_name(n) for n in meta.collection_def[key].node_list.value)
    if "__saved_model_init_op" in meta.signature_def:
        names.extend(node_name(t.name) for t in meta.signature_def["__saved_model_init_op"].outputs.values())
    return names


def standard_saver(meta) -> tuple[set[str], set[str]]:
    """Nodes and functions of the ``saver_def``'s save and restore subgraphs, when they are the
    standard kind; otherwise two empty sets (and the saver is scanned like everything else)."""
    saver = meta.saver_def
    if not saver.filename_tensor_name or not (saver.restore_op_name or saver.save_tensor_name):
        return set(), set()
    nodes = {n.name: n for n in meta.graph_def.node}
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    filename = node_name(saver.filename_tensor_name)
    roots = [node_name(r) for r in (saver.save_tensor_name, saver.restore_op_name) if r]
    if filename not in nodes or any(r not in nodes for r in roots):
        return set(), set()
    closure = ancestors(nodes, roots)
    # The signatures' and init ops' own nodes are never exempt, even when the saver shares them.
    closure -= ancestors(nodes, _signature_and_init_roots(meta)) - {filename}
    functions: set[str] = set()
    for name in closure:
        node = nodes[name]
        if node.op not in SAVER_OPS:
            return set(), set()
        if node.op in FILE_INPUTS and not all(
                _names_file(nodes, node.input[i], {filename}) for i in FILE_INPUTS[node.op] if i < len(node.input)):
            return set(), set()
        if node.op in CALL_OPS:
            fname = node.attr["f"].func.name
            if fname not in library:
                return set(), set()
            derived = {i for i, ref in enumerate(node.input) if _names_file(nodes, ref, {filename})}
            if not _standard_saver_function(library, fname, derived, functions):
                return set(), set()
    return closure, functions


def _signature_and_init_roots(meta) -> list[str]:
    roots = [node_name(t.name) for s in meta.signature_def.values()
             for t in list(s.outputs.values()) + list(s.inputs.values())]
    return roots + _named_init_ops(meta)


def _standard_saver_function(library: dict, name: str, filename_args: set[int], seen: set[str]) -> bool:
    """Whether a saver function only does checkpoint work on the file name it is given."""
    if name in seen:
        return True
    seen.add(name)
    function = library[name]
    args = [a.name for a in function.signature.input_arg]
    nodes = {n.name: n for n in function.node_def}
    sources = {args[i] for i in filename_args if i < len(args)}
    for node in function.node_def:
        if node.op not in SAVER_OPS:
            return False
        if node.op in FILE_INPUTS and not all(
                _names_file(nodes, node.input[i], sources) for i in FILE_INPUTS[node.op] if i < len(node.input)):
            return False
        if node.op in CALL_OPS:
            called = node.attr["f"].func.name
            if called not in library:
                return False
            derived = {i for i, ref in enumerate(node.input) if _names_file(nodes, ref, sources)}
            if not _standard_saver_function(library, called, derived, seen):
                return False
    return True


def _names_file(nodes: dict, ref: str, sources: set[str]) -> bool:
    """Whether tensor ``ref`` is a file name made from ``sources`` (the saver's file-name tensor or
    the function arguments it was passed as), with at most suffixes or shard numbers added."""
    seen: set[str] = set()
    name = node_name(ref)
    while name not in sources:
        if name in seen or name not in nodes:
            return False
        seen.add(name)
        node = nodes[name]
        data = [i for i in node.input if not i.startswith("^")]
        if node.op == "Pack":
            return bool(data) and all(_names_file(nodes, i, sources) for i in data)
        if node.op not in NAME_CARRIERS or not data:
            return False
        name = node_name(data[0])
    return True


# Keras ------------------------------------------------------------------------------------------------


def keras_config(path: Path) -> dict:
    """The model configuration of a ``.keras`` zip or a legacy ``.h5`` file, read as data."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                with archive.open("config.json") as handle:
                    text = handle.read(MAX_KERAS_CONFIG_BYTES + 1)
                if len(text) > MAX_KERAS_CONFIG_BYTES:
                    raise ConversionError(f"the Keras model's config.json is over {MAX_KERAS_CONFIG_BYTES >> 20} MB: "
                                          "that is no model Keras wrote", code="invalid_keras")
                return json.loads(text)
        import h5py  # a legacy .h5 Keras file only (h5py comes with Keras)

        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
            if raw is None:
                raise ConversionError("the .h5 file holds only weights, no model: save the whole model "
                                      "(model.save('model.keras'))", code="invalid_keras")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ConversionError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ConversionError(f"the Keras file could not be read: {type(exc).__name__}: {str(exc)[:200]}: upload "
                              "the file written by model.save('model.keras') or model.save('model.h5')",
                              code="invalid_keras") from exc


def scan_keras(config: dict) -> UploadScan:
    """Every object the configuration would build: built-in Keras classes pass; ``Lambda`` (Python),
    ``TFSMLayer`` (loads files) and Python functions are flagged; other classes are custom objects."""
    import keras  # Keras loads only for a Keras upload

    scan = UploadScan()
    for where, obj in _keras_objects(config, "model"):
        class_name = str(obj.get("class_name"))
        module = obj.get("module")
        registered = obj.get("registered_name")
        if class_name in KERAS_DATA_TAGS:
            continue
        if class_name in LAMBDA_CLASSES:
            scan.add(where, class_name if class_name != "__lambda__" else "Lambda", LAMBDA_CLASSES[class_name])
        elif class_name == "function":
            target = f"{module}.{obj.get('config')}" if module else str(obj.get("config"))
            if module is not None and not _keras_module(module):
                scan.add(where, f"PythonFunction:{target}"[:120], ops.CALLS_PYTHON)
            else:
                scan.add(where, "KerasFunction", None)
        elif (module is not None and not _keras_module(module)) or (
                registered and registered != class_name and not str(registered).startswith("keras")) or (
                module is None and not _known_keras_class(keras, class_name)):
            scan.custom_objects.append(registered or class_name)
            scan.add(where, f"CustomObject:{registered or class_name}"[:120], ops.NOT_ALLOWLISTED)
        else:
            scan.add(where, class_name, None)
    return scan


def _keras_module(module: str) -> bool:
    return module == "keras" or module.startswith("keras.") or module == "builtins"


def _known_keras_class(keras, class_name: str) -> bool:
    """Legacy ``.h5`` configs name classes without a module: they must be Keras's own."""
    namespaces = (keras.layers, keras.models, keras.initializers, keras.regularizers, keras.constraints,
                  keras.activations, keras.optimizers, keras.losses, keras.metrics)
    return class_name in ("Functional", "Sequential", "Model") or any(
        isinstance(getattr(ns, class_name, None), type) for ns in namespaces)


def _keras_objects(value, where: str) -> Iterator[tuple[str, dict]]:
    """Every serialised object (a dict with a ``class_name``) in a Keras configuration."""
    stack = [(where, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if depth > 200:
            raise ConversionError("the Keras configuration is nested too deeply", code="invalid_keras")
        if isinstance(item, dict):
            if "class_name" in item:
                name = item.get("config", {}).get("name") if isinstance(item.get("config"), dict) else None
                path = f"{path}/{name}" if isinstance(name, str) else path
                yield path, item
            # compile_config (optimizer, loss, metrics) is never built: models load with compile=False.
            stack.extend((path, v, depth + 1) for k, v in item.items() if k != "compile_config")
        elif isinstance(item, list):
            stack.extend((path, v, depth + 1) for v in item)
