"""TF2 inputs: a SavedModel folder (.zip or .tar.gz) or a Keras file (.keras, .h5) is
frozen into the same kind of version as a checkpoint; unsafe archives are refused
at upload with a 400 and leave nothing behind."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from registry.uploads.archives import ArchiveLimits, check_archive, safe_extract
from registry.converter.saved_model import write_archive
from registry.errors import InvalidUpload
from registry.jobs.worker import Worker
from tests import tfmodels
from tests.helpers import blob_files, push

pytestmark = pytest.mark.slow
LIMITS = {"max_archive_bytes": 4 * 1024 * 1024, "max_archive_files": 50}


class Scorer(tf.Module):
    """Two outputs from one input, with variables, and a second signature."""

    def __init__(self) -> None:
        self.w = tf.Variable(tf.random.stateless_normal([6, 3], seed=[1, 2]))
        self.b = tf.Variable(tf.random.stateless_normal([3], seed=[3, 4]))

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="features")])
    def serve(self, features):
        logits = features @ self.w + self.b
        return {"probabilities": tf.nn.softmax(logits), "logits": logits}

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="features")])
    def embed(self, features):
        return {"embedding": tf.nn.relu(features @ self.w)}


@pytest.fixture(scope="module")
def tf2(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("tf2")
    scorer = Scorer()
    tf.saved_model.save(scorer, str(root / "scorer"), signatures={"serving_default": scorer.serve,
                                                                  "embed": scorer.embed})
    write_archive(root / "scorer", root / "scorer.tar.gz")
    with zipfile.ZipFile(root / "scorer.zip", "w") as z:  # zipped with its top folder, as people do
        for path in sorted((root / "scorer").rglob("*")):
            z.write(path, Path("scorer") / path.relative_to(root / "scorer"))
    features = np.random.default_rng(5).random((4, 6), dtype=np.float32)
    expected = {k: v.numpy() for k, v in scorer.serve(tf.constant(features)).items()}

    keras.utils.set_random_seed(3)
    pixels = keras.Input((5,), name="pixels")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(pixels)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    model = keras.Model(pixels, probs)
    model.save(root / "model.keras")
    model.save(root / "model.h5")
    keras_input = np.random.default_rng(6).random((3, 5), dtype=np.float32)
    sequential = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"),
                                   keras.layers.Dense(3, activation="softmax", name="class_probs")])
    sequential.save(root / "sequential.keras")

    @keras.saving.register_keras_serializable(package="only_in_the_training_code")
    class Doubling(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    custom = keras.Sequential([keras.Input((2,)), Doubling()])
    custom.save(root / "custom.keras")
    keras.saving.get_custom_objects().clear()  # the registry does not have the class
    # Keras 3 through tf.saved_model.save (as TF Serving's own test saves one): its serving function reads
    # variable handles that its restore function never assigns; only the object graph ties them to keys
    dense = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="dense")])
    tf.saved_model.save(dense, str(root / "keras3_saved"))
    write_archive(root / "keras3_saved", root / "keras3_saved.tar.gz")
    dense_signature = tf.saved_model.load(str(root / "keras3_saved")).signatures["serving_default"]
    dense_input = np.random.default_rng(7).random((2, 3), dtype=np.float32)
    dense_expected = {k: v.numpy() for k, v in dense_signature(tf.constant(dense_input)).items()}
    return {"root": root, "features": features, "expected": expected, "keras_input": keras_input,
            "keras_expected": model.predict(keras_input, verbose=0),
            "sequential_expected": sequential.predict(keras_input, verbose=0),
            "dense_input": dense_input, "dense_expected": dense_expected}


def convert(app) -> None:
    """Run the queued jobs: the conversion, then its SavedModel."""
    registry = app.extensions["registry"]
    worker = Worker(registry.settings, registry.db, registry.storage)
    while worker.run_once():
        pass


def file_form(field: str, path: Path, **fields) -> dict:
    return {field: (io.BytesIO(path.read_bytes()), path.name), **fields}


def pushed_and_converted(app, name: str, field: str, path: Path) -> dict:
    """Push ``path`` as ``field``, run its conversion, and return version 1's record, checked ready."""
    client = app.test_client()
    assert push(client, name, file_form(field, path)).status_code == 202
    convert(app)
    version = client.get(f"/api/v1/models/{name}/versions/1").get_json()
    assert version["status"] == "ready", version["status_message"]
    return version


@pytest.fixture
def limited(settings):
    """An app whose archive limits are small enough to test."""
    from dataclasses import replace

    from registry.app import create_app

    app = create_app(replace(settings, **LIMITS))
    yield app
    app.extensions["registry"].db.dispose()


@pytest.mark.parametrize("archive", ["scorer.tar.gz", "scorer.zip"])
def test_saved_model_push_freezes_its_signature(limited, tf2, archive, tmp_path):
    client = limited.test_client()
    answer = push(client, "scorer", file_form("saved_model", tf2["root"] / archive))
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["source"] == "saved_model"
    convert(limited)
    version = client.get("/api/v1/models/scorer/versions/1").get_json()
    assert version["status"] == "ready", version["status_message"]
    assert sorted(version["output_nodes"]) == ["logits", "probabilities"]
    assert version["input_nodes"] == [{"name": "features", "dtype": "float32", "shape": [None, 6],
                                       "optional": False}]
    assert version["verification"]["status"] == "passed"
    frozen = tmp_path / "frozen.pb"
    frozen.write_bytes(client.get("/api/v1/models/scorer/versions/1/frozen.pb").get_data())
    for key in ("probabilities", "logits"):
        got = tfmodels.run_frozen(frozen, key, tf2["features"], input_name="features")
        np.testing.assert_allclose(got, tf2["expected"][key], atol=1e-6)
    # and back out as a SavedModel for TF Serving, with the same signature keys
    tarball = client.get("/api/v1/models/scorer/versions/1/saved_model.tar.gz").get_data()
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        tar.extractall(tmp_path / "sm", filter="data")
    outputs = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"](
        features=tf.constant(tf2["features"]))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), tf2["expected"]["probabilities"], atol=1e-6)


def test_a_keras_3_model_saved_with_tf_saved_model_save_freezes_with_its_weights(limited, tf2, tmp_path):
    version = pushed_and_converted(limited, "dense", "saved_model", tf2["root"] / "keras3_saved.tar.gz")
    assert version["verification"]["status"] == "passed"
    frozen = tmp_path / "frozen.pb"
    frozen.write_bytes(limited.test_client().get("/api/v1/models/dense/versions/1/frozen.pb").get_data())
    (key, expected), = tf2["dense_expected"].items()
    signature = version["signatures"]["serving_default"]
    (input_entry,) = signature["inputs"].values()
    got = tfmodels.run_frozen(frozen, signature["outputs"][key]["name"].split(":")[0], tf2["dense_input"],
                              input_name=input_entry["name"].split(":")[0])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_saved_model_push_with_another_signature_and_a_missing_one(limited, tf2):
    client = limited.test_client()
    assert push(client, "scorer", file_form("saved_model", tf2["root"] / "scorer.tar.gz",
                                            signature="embed")).status_code == 202
    assert push(client, "scorer", file_form("saved_model", tf2["root"] / "scorer.tar.gz",
                                            signature="nope")).status_code == 202
    convert(limited)
    convert(limited)
    embed = client.get("/api/v1/models/scorer/versions/1").get_json()
    assert embed["status"] == "ready" and embed["output_nodes"] == ["embedding"]
    missing = client.get("/api/v1/models/scorer/versions/2").get_json()
    assert missing["status"] == "failed"
    assert "has no signature 'nope' (it has: embed, serving_default)" in missing["status_message"]


def test_a_sequential_keras_model_names_its_output_after_its_last_layer(limited, tf2, tmp_path):
    """Keras 3's Sequential has no output_names: the output node is still the output layer's name."""
    version = pushed_and_converted(limited, "seq", "keras", tf2["root"] / "sequential.keras")
    assert version["output_nodes"] == ["class_probs"]
    frozen = tmp_path / "frozen.pb"
    frozen.write_bytes(limited.test_client().get("/api/v1/models/seq/versions/1/frozen.pb").get_data())
    input_name = version["input_nodes"][0]["name"]
    got = tfmodels.run_frozen(frozen, "class_probs", tf2["keras_input"], input_name=input_name)
    np.testing.assert_allclose(got, tf2["sequential_expected"], atol=1e-6)


@pytest.mark.parametrize("filename", ["model.keras", "model.h5"])
def test_keras_push_round_trip(limited, tf2, filename, tmp_path):
    client = limited.test_client()
    assert push(client, "keras", file_form("keras", tf2["root"] / filename)).status_code == 202
    convert(limited)
    version = client.get("/api/v1/models/keras/versions/1").get_json()
    assert version["status"] == "ready", version["status_message"]
    assert version["source"] == "keras" and version["output_nodes"] == ["probs"]
    assert [i["name"] for i in version["input_nodes"]] == ["pixels"]
    frozen = tmp_path / "frozen.pb"
    frozen.write_bytes(client.get("/api/v1/models/keras/versions/1/frozen.pb").get_data())
    got = tfmodels.run_frozen(frozen, "probs", tf2["keras_input"], input_name="pixels")
    np.testing.assert_allclose(got, tf2["keras_expected"], atol=1e-6)


def test_keras_model_needing_custom_objects_fails_with_a_clear_message(limited, tf2):
    client = limited.test_client()
    assert push(client, "custom", file_form("keras", tf2["root"] / "custom.keras")).status_code == 202
    convert(limited)
    version = client.get("/api/v1/models/custom/versions/1").get_json()
    assert version["status"] == "failed"
    assert "needs custom objects" in version["status_message"]
    assert "Doubling" in version["status_message"]


# -- hostile archives ---------------------------------------------------------------------

def tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def zip_with(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buffer.getvalue()


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


HOSTILE = {
    "zip-slip": ("evil.zip", zip_with({"saved_model.pb": b"x", "../../outside.txt": b"gotcha"}),
                 "points outside the archive ('..')"),
    "absolute path": ("evil.tar.gz", tar_with([(tarfile.TarInfo("saved_model.pb"), b"x"),
                                               (tarfile.TarInfo("/etc/cron.d/evil"), b"x")]), "absolute path"),
    "symlink out": ("evil.tar.gz", tar_with([(tarfile.TarInfo("saved_model.pb"), b"x"),
                                             (symlink("variables", "/etc"), None)]), "links are not allowed"),
    "zip bomb": ("bomb.zip", zip_with({"saved_model.pb": b"x", "variables/variables.data-00000-of-00001":
                                       b"\0" * (LIMITS["max_archive_bytes"] + 1)}), "more than 4194304 bytes"),
    "too many files": ("many.zip", zip_with({"saved_model.pb": b"x", **{f"assets/{i}": b"" for i in range(60)}}),
                       "more than 50 members"),
    "no saved_model.pb": ("empty.tar.gz", tar_with([(tarfile.TarInfo("README"), b"x")]), "no saved_model.pb"),
    "not an archive": ("model.tar.gz", b"just some text", "not a .zip or .tar.gz"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_at_upload_and_leaves_nothing(limited, case, tmp_path):
    filename, data, expected = HOSTILE[case]
    client = limited.test_client()
    answer = push(client, "evil", {"saved_model": (io.BytesIO(data), filename)})
    assert answer.status_code == 400
    assert expected in answer.get_json()["error"]["message"]
    assert client.get("/api/v1/models/evil").status_code == 404
    assert blob_files(limited.extensions["registry"].settings.home) == []
    assert not (tmp_path.parent / "outside.txt").exists()


def test_safe_extract_writes_nothing_outside_and_cleans_up_on_refusal(tmp_path):
    archive = tmp_path / "slip.tar.gz"
    archive.write_bytes(tar_with([(tarfile.TarInfo("ok.txt"), b"fine"), (tarfile.TarInfo("a/../../x"), b"x")]))
    with pytest.raises(InvalidUpload):
        safe_extract(archive, tmp_path / "out", ArchiveLimits())
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_zip_bomb_is_stopped_by_the_bytes_it_inflates_to_not_what_it_declares(tmp_path):
    # A member whose header understates its size: the limit counts the bytes inflated.
    data = bytearray(zip_with({"saved_model.pb": b"\0" * 200_000}))
    for marker in (b"PK\x03\x04", b"PK\x01\x02"):  # patch the uncompressed size in both headers
        at = data.find(marker)
        offset = at + (22 if marker == b"PK\x03\x04" else 24)
        data[offset:offset + 4] = (10).to_bytes(4, "little")
    bomb = tmp_path / "liar.zip"
    bomb.write_bytes(bytes(data))
    with pytest.raises(InvalidUpload):
        check_archive(bomb, ArchiveLimits(max_bytes=100_000))


def test_pushing_both_a_saved_model_and_a_checkpoint_is_refused(limited, tf2, models):
    form = file_form("saved_model", tf2["root"] / "scorer.tar.gz")
    form["index"] = (io.BytesIO(models["frozen"].frozen_graph.read_bytes()), "model.ckpt.index")
    answer = push(limited.test_client(), "mixed", form)
    assert answer.status_code == 400 and "do not send index" in answer.get_json()["error"]["message"]


def test_cli_pushes_a_saved_model_folder(tf2, converting_server):
    from click.testing import CliRunner

    from registry.cli import main as cli

    result = CliRunner().invoke(cli, ["push", "cli-scorer", "--saved-model", str(tf2["root"] / "scorer"), "--wait",
                                      "--url", converting_server.url])
    assert result.exit_code == 0, result.output
    assert "ready" in result.output and "probabilities" in result.output

