"""TF2 SavedModels whose lookup tables are filled from vocabulary files (issue 13, item 3): the
table's contents are read from the upload's assets/ and inlined as constants, so the frozen graph
reads no file and needs no table, and answers every lookup as the SavedModel does; a table that
reads a file which is no asset stays flagged and is never run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from registry.converter.saved_model import write_archive
from registry.errors import ConversionError

TFI = tf.lookup.TextFileIndex
COLORS = ["red", "green", "blue"]
# key column 1, value column 0, CRLF line ends; vocab_size=2 keeps the first two lines only
FRUITS = "7,apple,x\r\n3,banana,y\r\n9,cherry,z\r\n"
QUERIES = {"color": np.array([b"green", b"blue", b"pink", b"apple", b"cherry", b"red"], dtype=object),
           "index": np.array([0, 2, 5, -1, 1, 2], dtype=np.int64)}


class Colors(tf.Module):
    """Three tables from two vocabulary files (string → line number, line number → string, one
    column → another) and a variable, looked up in two signatures (one inside a tf.map_fn loop)."""

    def __init__(self, root: Path) -> None:
        colors, fruits = root / "colors.txt", root / "fruits.txt"
        colors.write_text("\n".join(COLORS) + "\n")
        fruits.write_bytes(FRUITS.encode())
        self.ids = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            str(colors), tf.string, TFI.WHOLE_LINE, tf.int64, TFI.LINE_NUMBER), default_value=-1)
        self.names = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            str(colors), tf.int64, TFI.LINE_NUMBER, tf.string, TFI.WHOLE_LINE), default_value="unknown")
        self.fruits = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            str(fruits), tf.string, 1, tf.int64, 0, vocab_size=2, delimiter=","), default_value=-5)
        self.weights = tf.Variable([1.0, 10.0, 100.0, 1000.0])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="color"),
                                  tf.TensorSpec([None], tf.int64, name="index")])
    def serve(self, color, index):
        ids = self.ids.lookup(color)
        return {"id": ids, "score": tf.gather(self.weights, ids + 1), "name": self.names.lookup(index),
                "fruit": self.fruits.lookup(color), "size": self.ids.size()}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="color")])
    def mapped(self, color):
        return {"ids": tf.map_fn(self.ids.lookup, color, fn_output_signature=tf.int64)}


def save(module: tf.Module, folder: Path, signatures: dict) -> Path:
    tf.saved_model.save(module, str(folder), signatures=signatures)
    return folder


def convert(folder: Path, work: Path) -> dict:
    """The converter on the pushed archive of ``folder``, in this process (as the worker's child runs it)."""
    from registry.converter.child import convert as run

    work.mkdir(parents=True)
    write_archive(folder, work / "upload.tar.gz")
    return run({"source": "saved_model", "files": {"saved_model_src": str(work / "upload.tar.gz")},
                "output_path": str(work / "frozen.pb"), "verify_tolerance": 1e-6, "signature": None})


def frozen_graph(work: Path) -> tf.compat.v1.GraphDef:
    return tf.compat.v1.GraphDef.FromString((work / "frozen.pb").read_bytes())


def all_ops(graph_def) -> set[str]:
    return {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}


def run_frozen(work: Path, signature: dict, feeds: dict) -> dict:
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen_graph(work), name="")
    with tf.compat.v1.Session(graph=graph) as session:  # no initialiser is run: there is none
        return session.run({k: o["name"] for k, o in signature["outputs"].items()},
                           {signature["inputs"][k]["name"]: v for k, v in feeds.items()})


def run_saved_model(folder: Path, name: str, feeds: dict) -> dict:
    """What TensorFlow's own loader answers (it reads the vocabulary files from assets/)."""
    loaded = tf.saved_model.load(str(folder))
    return {k: v.numpy() for k, v in loaded.signatures[name](**{k: tf.constant(v) for k, v in feeds.items()}).items()}


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf2_tables")
    module = Colors(root)
    folder = save(module, root / "colors", {"serving_default": module.serve, "mapped": module.mapped})
    (root / "colors.txt").unlink()  # only the SavedModel's own copies remain
    (root / "fruits.txt").unlink()
    return {"root": root, "folder": folder, "result": convert(folder, root / "work"), "work": root / "work"}


@pytest.fixture(scope="module")
def keras_lookup(tmp_path_factory):
    """A Keras model exported with model.export: StringLookup over a vocabulary file, an
    embedding, a dense softmax."""
    import keras

    root = tmp_path_factory.mktemp("keras_lookup")
    (root / "words.txt").write_text("apple\nbanana\ncherry\n")
    keras.utils.set_random_seed(4)
    words = keras.Input(shape=(1,), dtype="string", name="word")
    ids = keras.layers.StringLookup(vocabulary=str(root / "words.txt"))(words)
    embedded = keras.layers.Flatten()(keras.layers.Embedding(4, 3)(ids))
    model = keras.Model(words, keras.layers.Dense(3, activation="softmax")(embedded))
    model.export(str(root / "exported"))
    (root / "words.txt").unlink()
    return {"folder": root / "exported", "result": convert(root / "exported", root / "work"), "work": root / "work"}


def test_a_vocabulary_file_table_is_inlined_so_the_upload_is_not_flagged_and_every_signature_verifies(colors):
    conversion = colors["result"]["conversion"]
    assert conversion["safety"]["flags"] == [] and conversion["safety"]["upload_flags"] == []
    assert conversion["failed_signatures"] == {}
    assert conversion["verification"]["status"] == "passed", conversion["verification"]
    assert set(colors["result"]["signatures"]) == {"serving_default", "mapped"}
    # the three lookups and the size of serving_default, and the lookup inside mapped's loop
    assert conversion["lookups_inlined"] == 5


def test_the_frozen_graph_reads_no_file_and_its_main_signature_needs_no_table(colors):
    graph_def = frozen_graph(colors["work"])
    assert not {op for op in all_ops(graph_def) if "TextFile" in op or op.startswith(("LookupTable", "Initialize"))}
    outputs = [o["name"].split(":")[0] for o in colors["result"]["signatures"]["serving_default"]["outputs"].values()]
    needed = tf.compat.v1.graph_util.extract_sub_graph(graph_def, outputs)
    assert "HashTableV2" not in all_ops(needed)  # the handle argument went with the lookups


def test_every_lookup_answers_as_the_loaded_saved_model_does_in_and_out_of_vocabulary(colors):
    signatures = colors["result"]["signatures"]
    for name, feeds in (("serving_default", QUERIES), ("mapped", {"color": QUERIES["color"]})):
        expected = run_saved_model(colors["folder"], name, feeds)
        got = run_frozen(colors["work"], signatures[name], feeds)
        assert set(got) == set(expected)
        for key in expected:
            assert np.asarray(got[key]).tolist() == expected[key].tolist(), (name, key)
    answer = run_frozen(colors["work"], signatures["serving_default"], QUERIES)
    assert answer["id"].tolist() == [1, 2, -1, -1, -1, 0]  # pink, apple, cherry: out of vocabulary
    assert answer["name"].tolist() == [b"red", b"blue", b"unknown", b"unknown", b"green", b"blue"]
    assert answer["fruit"].tolist() == [-5, -5, -5, 7, -5, -5]  # cherry is past vocab_size=2
    assert answer["size"] == 3


def test_a_keras_string_lookup_with_a_vocabulary_file_is_inlined_and_predicts_as_the_saved_model(keras_lookup):
    result = keras_lookup["result"]
    assert result["conversion"]["safety"]["flags"] == []
    assert result["conversion"]["verification"]["status"] == "passed", result["conversion"]["verification"]
    assert not {op for op in all_ops(frozen_graph(keras_lookup["work"])) if "TextFile" in op or "Table" in op}
    words = {"word": np.array([[b"cherry"], [b"apple"], [b"durian"], [b"banana"]], dtype=object)}
    for name in ("serving_default", "serve"):
        expected = run_saved_model(keras_lookup["folder"], name, words)["output_0"]
        got = run_frozen(keras_lookup["work"], result["signatures"][name], words)["output_0"]
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(expected[2], expected[0])  # durian (out of vocabulary) is no cherry


def _edit(folder: Path, change) -> None:
    """Rewrite the SavedModel's saved_model.pb with ``change(meta_graph)``."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((folder / "saved_model.pb").read_bytes())
    change(proto.meta_graphs[0])
    (folder / "saved_model.pb").write_bytes(proto.SerializeToString())


def _initializer(meta):
    function = next(f for f in meta.graph_def.library.function
                    if any(n.op == "InitializeTableFromTextFileV2" for n in f.node_def))
    return function, next(n for n in function.node_def if n.op == "InitializeTableFromTextFileV2")


def _read_a_path_of_its_own(meta, secret: Path) -> None:
    """The initialiser reads a path written in the function, not the asset it is given."""
    function, init = _initializer(meta)
    path = function.node_def.add(name="own_path", op="Const")
    path.attr["dtype"].type = tf.string.as_datatype_enum
    path.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(str(secret)))
    init.input[1] = "own_path:output:0"


def _read_a_path_from_the_graph(meta, secret: Path) -> None:
    """The init op passes the initialiser a constant path instead of the asset's variable."""
    function, _ = _initializer(meta)
    call = next(n for n in meta.graph_def.node if n.attr["f"].func.name == function.signature.name)
    path = meta.graph_def.node.add(name="own_path", op="Const")
    path.attr["dtype"].type = tf.string.as_datatype_enum
    path.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(str(secret)))
    call.input[0] = "own_path"


class OneTable(tf.Module):
    def __init__(self, vocabulary: Path) -> None:
        self.table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            str(vocabulary), tf.string, TFI.WHOLE_LINE, tf.int64, TFI.LINE_NUMBER), default_value=-1)
        self.weights = tf.Variable([1.0, 2.0, 3.0, 4.0])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="color")])
    def serve(self, color):
        return {"score": tf.gather(self.weights, self.table.lookup(color) + 1)}


@pytest.fixture(scope="module")
def one_table(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_table")
    (root / "colors.txt").write_text("\n".join(COLORS) + "\n")
    module = OneTable(root / "colors.txt")
    return save(module, root / "saved", {"serving_default": module.serve})


@pytest.mark.parametrize("hostile", [_read_a_path_of_its_own, _read_a_path_from_the_graph],
                         ids=["path_in_the_initializer", "path_from_the_graph"])
def test_a_table_reading_a_file_that_is_no_asset_stays_flagged_and_is_never_run(one_table, tmp_path, hostile):
    secret = tmp_path / "secret.txt"
    secret.write_text("red\n")
    folder = Path(shutil.copytree(one_table, tmp_path / "saved"))
    _edit(folder, lambda meta: hostile(meta, secret))
    result = convert(folder, tmp_path / "work")
    safety = result["conversion"]["safety"]
    assert safety["flagged"] is True
    flag = next(f for f in safety["flags"] if f["op"] == "InitializeTableFromTextFileV2")
    assert flag["category"] == "reads_files"
    assert result["conversion"]["verification"]["status"] == "skipped"
    assert "flagged" in result["conversion"]["verification"]["reason"]


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / "assets" / "colors.txt").unlink(), "is not in the archive"),
    (lambda folder: _edit(folder, lambda meta: setattr(meta.asset_file_def[0], "filename", "../saved_model.pb")),
     "outside its assets/ folder"),
    (lambda folder: (folder / "assets" / "colors.txt").write_text("red\n\nblue\n"), "line 2 is empty"),
], ids=["missing", "outside_assets", "empty_line"])
def test_a_vocabulary_asset_that_cannot_be_read_as_tensorflow_would_fails_saying_which(
        one_table, tmp_path, damage, message):
    folder = Path(shutil.copytree(one_table, tmp_path / "saved"))
    damage(folder)
    with pytest.raises(ConversionError) as failure:
        convert(folder, tmp_path / "work")
    assert failure.value.code == "invalid_vocabulary"
    assert message in failure.value.message
