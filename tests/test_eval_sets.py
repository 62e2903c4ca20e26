"""Evaluation sets, stored: every format checked at upload and read back in batches, revisions,
downloads equal to the upload, refusals that name what is wrong and leave nothing behind, audited
deletes, garbage collection, scopes and the CLI — on a real server over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import sqlalchemy as sa
import tensorflow as tf

from registry import catalog
from registry.auth import audit
from registry.errors import NotFound
from registry.evaluation import sets
from registry.evaluation.reader import read_batches
from registry.jobs.gc import collect_garbage
from registry.models import EvalSet
from tests.conftest import BOTH_DATABASES_PER_MODULE, make_settings, seed_database, start_live_server
from tests.helpers import bearer, blob_files, issue_tokens
from tests.images import bmp, gif, pixels

pytestmark = BOTH_DATABASES_PER_MODULE

MAX_INPUTS = 40
MAX_BYTES = 2_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_database):
    """A registry that needs tokens (read and write are different callers), with model ``cnn``."""
    home = tmp_path_factory.mktemp("evalsets")
    settings = make_settings(home, embedded=False, public_read=False, eval_set_max_inputs=MAX_INPUTS,
                             eval_set_max_bytes=MAX_BYTES,
                             **({"database_url": module_database} if module_database else {}))
    live, stop = start_live_server(seed_database(settings), workers=False)
    live.tokens = issue_tokens(live.registry.db)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        tf.identity(x * 2.0, name="y")
    live.frozen = graph.as_graph_def().SerializeToString()
    push_model(live, "cnn")
    yield live
    stop()


def push_model(server, name: str) -> None:
    answer = requests.post(f"{server.url}/api/v1/models/{name}/versions", headers=bearer(server.tokens["write"]),
                           files={"frozen": ("model.pb", server.frozen)}, data={"output_nodes": "y"})
    assert answer.status_code == 202, answer.text


def upload(server, set_name: str, filename: str, data: bytes, token: str = "write", model: str = "cnn", **fields):
    return requests.post(f"{server.url}/api/v1/models/{model}/eval-sets/{set_name}",
                         headers=bearer(server.tokens[token]), files={"file": (filename, data)}, data=fields)


def added(server, set_name: str, filename: str, data: bytes, **fields) -> dict:
    answer = upload(server, set_name, filename, data, **fields)
    assert answer.status_code == 201, answer.text
    return answer.json()


def get(server, path: str, token: str = "read") -> requests.Response:
    return requests.get(f"{server.url}/api/v1/models/cnn/{path}", headers=bearer(server.tokens[token]))


# --- sets built with the tools a team would use -----------------------------------------------------

IMAGES = {  # member -> bytes, in no particular order; sorted: a/2.bmp, a/10.png, b.jpg, c.gif
    "b.jpg": tf.io.encode_jpeg(pixels(1)).numpy(),
    "a/2.bmp": bmp(pixels(2)),
    "c.gif": gif(pixels(3)),
    "a/10.png": tf.io.encode_png(pixels(4)).numpy(),
}
SORTED = ["a/10.png", "a/2.bmp", "b.jpg", "c.gif"]  # code point order: '1' < '2'


def image_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def image_tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def examples(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        feature = {"age": tf.train.Feature(float_list=tf.train.FloatList(value=[20.0 + i, -1.5])),
                   "clicks": tf.train.Feature(int64_list=tf.train.Int64List(value=[i, -i - 1])),
                   "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"class{i % 3}".encode()]))}
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def tfrecord(records: list[bytes], path: Path) -> bytes:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path.read_bytes()


def state(server) -> tuple[list[Path], int]:
    """Every blob and staging file under the server's home, and the number of eval_sets rows."""
    with server.registry.db.transaction() as session:
        rows = session.scalar(sa.select(sa.func.count()).select_from(EvalSet))
    return blob_files(server.settings.home), rows


# --- accepted ---------------------------------------------------------------------------------------

def test_each_format_is_accepted_with_its_count_and_summary(server, tmp_path):
    zipped = added(server, "photos", "photos.zip",
                   image_zip({**IMAGES, "expected.txt": b"cat\ndog\ncat\nbird\n"}), description="four pets")
    assert (zipped["format"], zipped["count"], zipped["ref"]) == ("images", 4, "photos@1")
    assert zipped["summary"]["images"] == {"bmp": 1, "gif": 1, "jpeg": 1, "png": 1}
    assert zipped["summary"]["labels"] == ["bird", "cat", "dog"] and zipped["description"] == "four pets"

    csv = b"file,label\nc.gif,bird\nb.jpg,cat\na/2.bmp,dog\na/10.png,cat\n"
    tarred = added(server, "photos-tar", "photos.tar.gz", image_tar_gz({**IMAGES, "labels.csv": csv}))
    assert (tarred["format"], tarred["count"], tarred["summary"]["expected_file"]) == ("images", 4, "labels.csv")

    lines = added(server, "rows", "rows.jsonl", jsonl(
        [{"x": [1, 2], "expected": 2.5}, {"instances": [{"x": [3.5, 4]}, {"x": [5, 6]}], "expected": [1, 0.5]}]))
    assert (lines["format"], lines["count"]) == ("jsonl", 3)
    assert lines["summary"]["inputs"] == {"x": {"dtype": "float", "shape": [2]}}
    assert (lines["summary"]["expected"], lines["summary"]["expected_dtype"]) == (True, "float")

    arrays = added(server, "arrays", "arrays.npz", npz(x=np.zeros((5, 2), np.float32), ids=np.arange(5),
                                                      expected=np.array(["a", "b", "a", "c", "a"])))
    assert (arrays["format"], arrays["count"]) == ("npz", 5)
    assert arrays["summary"]["inputs"] == {"x": {"dtype": "float32", "shape": [2]},
                                           "ids": {"dtype": "int64", "shape": []}}
    assert arrays["summary"]["labels"] == ["a", "b", "c"]

    records = added(server, "records", "set.tfrecord", tfrecord(examples(7), tmp_path / "r"), label_feature="label")
    assert (records["format"], records["count"]) == ("tfrecord", 7)
    summary = records["summary"]
    assert (summary["label_feature"], summary["labels"]) == ("label", ["class0", "class1", "class2"])
    assert summary["features"]["age"] == {"kind": "float_list", "length": 2, "in_every_record": True}


def test_the_format_is_told_by_content_when_the_name_does_not_say(server, tmp_path):
    assert added(server, "nameless-records", "data", tfrecord(examples(2), tmp_path / "n"))["format"] == "tfrecord"
    assert added(server, "nameless-lines", "data", b'{"x": 1}\n')["format"] == "jsonl"
    assert added(server, "nameless-arrays", "data", npz(x=np.zeros(3)))["format"] == "npz"
    assert added(server, "nameless-images", "data", image_tar_gz(IMAGES))["format"] == "images"
    unknown = upload(server, "nameless", "data", b"\x00\x01 binary")
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_eval_set_format"


def test_what_macos_adds_to_a_zip_is_left_out(server):
    junk = {"__MACOSX/._b.jpg": b"\0\5\x16\7", "._c.gif": b"\0\5\x16\7", ".DS_Store": b"\0\0\0\1Bud1"}
    assert added(server, "from-a-mac", "pets.zip", image_zip({**IMAGES, **junk}))["count"] == 4


def test_answers_match_the_documented_schemas(server):
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    doc = requests.get(f"{server.url}/api/v1/openapi.json").json()
    registry = Registry().with_resource("urn:api", Resource.from_contents(doc, default_specification=DRAFT202012))

    def valid(schema: str, body: dict) -> None:
        jsonschema.Draft202012Validator({"$ref": f"urn:api#/components/schemas/{schema}"},
                                        registry=registry).validate(body)

    valid("EvalSet", added(server, "documented", "d.jsonl", b'{"x": [1], "expected": "a"}\n'))
    valid("EvalSetList", get(server, "eval-sets").json())
    valid("EvalSetRevisions", get(server, "eval-sets/documented").json())
    valid("EvalSet", get(server, "eval-sets/documented/1").json())
    valid("DeletedEvalSet", requests.delete(f"{server.url}/api/v1/models/cnn/eval-sets/documented/1",
                                            headers=bearer(server.tokens["write"])).json())
    valid("Error", get(server, "eval-sets/documented/1").json())


def test_each_upload_of_a_name_is_the_next_revision_and_downloads_equal_the_upload(server):
    first, second = jsonl([{"x": [1, 2]}]), jsonl([{"x": [1, 2]}, {"x": [3, 4]}])
    assert added(server, "growing", "a.jsonl", first)["revision"] == 1
    created = upload(server, "growing", "b.jsonl", second)
    assert created.status_code == 201 and created.headers["Location"].endswith("/eval-sets/growing/2")
    listing = {s["name"]: s for s in get(server, "eval-sets").json()["eval_sets"]}
    assert (listing["growing"]["revision"], listing["growing"]["revisions"], listing["growing"]["count"]) == (2, 2, 2)
    revisions = get(server, "eval-sets/growing").json()["revisions"]
    assert [r["revision"] for r in revisions] == [2, 1]
    for revision, data in ((1, first), (2, second)):
        download = get(server, f"eval-sets/growing/{revision}/download")
        assert download.status_code == 200 and download.content == data
        assert hashlib.sha256(download.content).hexdigest() == revisions[2 - revision]["sha256"]
        assert download.headers["ETag"].strip('"') == revisions[2 - revision]["sha256"]


# --- refused ----------------------------------------------------------------------------------------

def _truncated_tfrecord(tmp_path: Path) -> bytes:
    data = tfrecord(examples(4), tmp_path / "t")
    return data[:-30]


def _bad_crc_tfrecord(tmp_path: Path) -> bytes:
    data = bytearray(tfrecord(examples(3), tmp_path / "c"))
    first = struct.unpack("<Q", data[:8])[0] + 16
    data[first + 12 + 5] ^= 0xFF  # a byte of record 2's data
    return bytes(data)


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


def _dotdot_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ok.png", IMAGES["a/10.png"])
        z.writestr("../escape.png", IMAGES["a/10.png"])
    return buf.getvalue()


REFUSALS = {
    "truncated TFRecord": ("r.tfrecord", lambda p: _truncated_tfrecord(p), {"label_feature": "label"},
                           "the file ends inside record 4"),
    "bad CRC": ("r.tfrecord", lambda p: _bad_crc_tfrecord(p), {}, "record 2 has a bad data checksum"),
    "label feature missing": ("r.tfrecord", lambda p: tfrecord(examples(2), p / "l"), {"label_feature": "price"},
                              "record 1 has no feature 'price'"),
    "JSON error on line 3": ("s.jsonl", lambda p: b'{"x": [1]}\n{"x": [2]}\n{"x": [3,]}\n', {},
                             "line 3 is not JSON"),
    "columns of different lengths": ("s.jsonl", lambda p: b'{"inputs": {"a": [1, 2], "b": [3]}}\n', {},
                                     "line 1: \"inputs\" must map each input name to a list"),
    "shape changes on line 2": ("s.jsonl", lambda p: b'{"x": [1, 2]}\n{"x": [3]}\n', {},
                                "line 2, input 'x' has shape [1] but line 1's has [2]"),
    "npz arrays of different lengths": ("a.npz", lambda p: npz(x=np.zeros((4, 2)), expected=np.zeros(3)), {},
                                        "'x' has 4, 'expected' has 3"),
    "one .npy named .npz": ("a.npz", lambda p: _npy(), {}, "it is not an .npz (a zip of .npy arrays)"),
    "npz of objects": ("a.npz", lambda p: npz(x=np.array([{"a": 1}], dtype=object)), {},
                       "object and structured arrays are refused"),
    "zip with '..'": ("bad.zip", lambda p: _dotdot_zip(), {}, "points outside the archive ('..')"),
    "non-image member": ("pets.zip", lambda p: image_zip({**IMAGES, "notes.txt": b"taken in May"}), {},
                         "member notes.txt is not a JPEG, PNG, GIF or BMP image"),
    "expected.txt short": ("pets.zip", lambda p: image_zip({**IMAGES, "expected.txt": b"cat\ndog\n"}), {},
                           "expected.txt has 2 label(s) for 4 image(s)"),
    "too many inputs": ("many.jsonl", lambda p: jsonl([{"x": i} for i in range(MAX_INPUTS + 1)]), {},
                        f"more than {MAX_INPUTS} inputs (at line {MAX_INPUTS + 1}"),
    "label_feature on JSON": ("s.jsonl", lambda p: b'{"x": 1}\n', {"label_feature": "y"}, "this is a jsonl set"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_malformed_set_is_refused_naming_what_is_wrong_and_nothing_is_kept(server, tmp_path, case):
    filename, build, fields, wording = REFUSALS[case]
    before = state(server)
    answer = upload(server, "broken", filename, build(tmp_path), **fields)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert wording in message and "SavedModel" not in message, message
    assert state(server) == before  # no blob, no staging file, no row


def test_a_set_over_the_size_limit_is_refused_with_413_and_nothing_is_kept(server):
    before = state(server)
    answer = upload(server, "huge", "huge.jsonl", b'{"x": 1}\n' * (MAX_BYTES // 9 + 1))
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "eval_set_too_large"
    assert state(server) == before


FORM_MISTAKES = {  # what the multipart form carries -> (code, words of the message)
    "unknown field": ({"file": ("s.jsonl", b'{"x": 1}\n')}, {"labels": "y"}, "unknown_field", "unknown field 'labels'"),
    "two files": ([("file", ("a.jsonl", b'{"x": 1}\n')), ("file", ("b.jsonl", b'{"x": 2}\n'))], {},
                  "unknown_field", "one file field named 'file'"),
    "file under another name": ({"set": ("s.jsonl", b'{"x": 1}\n')}, {}, "unknown_field", "not 'set'"),
    "no file": ({}, {"description": "nothing attached"}, "missing_file", "multipart file field 'file'"),
    "field over 64 KiB": ({"file": ("s.jsonl", b'{"x": 1}\n')}, {"description": "d" * (64 * 1024 + 1)},
                          "field_too_long", "longer than 64 KiB"),
}


@pytest.mark.parametrize("case", FORM_MISTAKES)
def test_a_form_that_is_not_one_file_and_known_fields_is_refused_and_nothing_is_kept(server, case):
    files, fields, code, wording = FORM_MISTAKES[case]
    before = state(server)
    if not files:  # a multipart body with fields only
        files, fields = {name: (None, value) for name, value in fields.items()}, {}
    answer = requests.post(f"{server.url}/api/v1/models/cnn/eval-sets/mistaken", headers=bearer(server.tokens["write"]),
                           files=files, data=fields)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and wording in error["message"], error
    assert state(server) == before


def test_unknown_model_and_set_names_are_refused(server):
    assert upload(server, "s", "s.jsonl", b"1\n", model="nope").status_code == 404
    assert upload(server, "bad name!", "s.jsonl", b"1\n").json()["error"]["code"] == "invalid_eval_set_name"
    missing = get(server, "eval-sets/nothing-here")
    assert missing.status_code == 404 and "its sets are" in missing.json()["error"]["message"]


# --- read back --------------------------------------------------------------------------------------

def batches(server, name: str, size: int):
    return list(read_batches(server.registry.storage, sets.get_eval_set(server.registry.db, "cnn", name), size))


def test_read_batches_yields_images_in_sorted_order_with_their_expected_labels(server):
    csv = b"c.gif,bird\nb.jpg,cat\na/2.bmp,dog\na/10.png,fish\n"  # no header, any order
    added(server, "pets-tar", "pets.tar.gz", image_tar_gz({**IMAGES, "labels.csv": csv}))
    added(server, "pets-zip", "pets.zip", image_zip({**IMAGES, "expected.txt": b"fish\ndog\ncat\nbird\n"}))
    for name in ("pets-tar", "pets-zip"):
        got = batches(server, name, 3)
        assert [(b.start, len(b)) for b in got] == [(0, 3), (3, 1)]
        assert [k for b in got for k in b.keys] == SORTED
        assert [i for b in got for i in b.images] == [IMAGES[k] for k in SORTED]
        assert [e for b in got for e in b.expected] == ["fish", "dog", "cat", "bird"]
        assert all(b.instances is None and b.examples is None for b in got)


def test_read_batches_yields_jsonl_instances_by_input_name(server):
    added(server, "lines", "l.jsonl", jsonl([{"a": [1, 2], "b": "x", "expected": 1},
                                             {"instances": [{"a": [3, 4], "b": "y"}, {"a": [5, 6], "b": "z"}],
                                              "expected": [0, 1]}]) + b"\n" + jsonl([{"a": [7, 8], "b": "w",
                                                                                     "expected": 0}]))
    got = batches(server, "lines", 2)
    assert [b.keys for b in got] == [["line 1", "line 2, instance 1"], ["line 2, instance 2", "line 4"]]
    assert [b.instances for b in got] == [{"a": [[1, 2], [3, 4]], "b": ["x", "y"]},
                                          {"a": [[5, 6], [7, 8]], "b": ["z", "w"]}]
    assert [b.expected for b in got] == [[1, 0], [1, 0]]
    added(server, "columns", "c.jsonl",
          jsonl([{"inputs": {"a": [[1, 2], [3, 4]], "b": ["x", "y"]}, "expected": [1, 0]}]))
    (columns,) = batches(server, "columns", 5)
    assert (columns.keys, columns.instances, columns.expected) == (
        ["line 1, instance 1", "line 1, instance 2"], {"a": [[1, 2], [3, 4]], "b": ["x", "y"]}, [1, 0])
    added(server, "bare", "b.jsonl", b"[1.5, 2]\n[3, 4]\n")
    (only,) = batches(server, "bare", 10)
    assert (only.instances, only.expected) == ({"": [[1.5, 2], [3, 4]]}, None)


def test_read_batches_yields_npz_rows(server):
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    transposed = np.asfortranarray(np.arange(10, dtype=np.int32).reshape(5, 2))
    added(server, "rows", "rows.npz", npz(x=x, t=transposed, expected=np.array([b"a", b"b", b"c", b"d", b"e"])))
    got = batches(server, "rows", 2)
    assert [b.keys for b in got] == [["row 1", "row 2"], ["row 3", "row 4"], ["row 5"]]
    assert np.array_equal(np.concatenate([b.extra["arrays"]["x"] for b in got]), x)
    assert np.array_equal(np.stack([row for b in got for row in b.instances["t"]]), transposed)
    assert [e for b in got for e in b.expected] == ["a", "b", "c", "d", "e"]


def test_read_batches_yields_tfrecord_examples_with_the_label_feature(server, tmp_path):
    written = examples(5)
    added(server, "ex", "ex.tfrecord", tfrecord(written, tmp_path / "ex"), label_feature="label")
    got = batches(server, "ex", 2)
    assert [b.keys for b in got] == [["record 1", "record 2"], ["record 3", "record 4"], ["record 5"]]
    assert [e for b in got for e in b.examples] == written
    assert [e for b in got for e in b.expected] == ["class0", "class1", "class2", "class0", "class1"]
    parsed = tf.train.Example.FromString(got[1].examples[0])
    assert list(parsed.features.feature["clicks"].int64_list.value) == [2, -3]
    added(server, "ex-nolabel", "ex.tfrecord", tfrecord(written, tmp_path / "ex2"))
    assert all(b.expected is None for b in batches(server, "ex-nolabel", 3))


# --- delete, gc, scopes -----------------------------------------------------------------------------

def test_delete_is_audited_and_a_deleted_revision_is_not_read(server):
    db = server.registry.db
    added(server, "temp", "t.jsonl", b"1\n")
    added(server, "temp", "t.jsonl", b"2\n")
    info = sets.get_eval_set(db, "cnn", "temp", 1)
    deleted = requests.delete(f"{server.url}/api/v1/models/cnn/eval-sets/temp/1",
                              headers=bearer(server.tokens["write"]))
    assert deleted.json() == {"model": "cnn", "name": "temp", "revisions_deleted": [1]}
    assert [r["revision"] for r in get(server, "eval-sets/temp").json()["revisions"]] == [2]
    gone = get(server, "eval-sets/temp/1/download")
    assert gone.status_code == 404 and "was deleted" in gone.json()["error"]["message"]
    with pytest.raises(NotFound):
        sets.get_eval_set(db, "cnn", "temp", 1)
    tombstone = sets.get_eval_set(db, "cnn", "temp", 1, include_deleted=True)
    assert tombstone.deleted_at is not None and tombstone.sha256 == info.sha256
    with pytest.raises(NotFound):
        list(read_batches(server.registry.storage, tombstone, 10))
    requests.delete(f"{server.url}/api/v1/models/cnn/eval-sets/temp", headers=bearer(server.tokens["write"]))
    events = [e for e in audit.list_events(db, action="eval_set.delete").items if e.target.startswith("cnn/temp")]
    assert [(e.actor, e.target, e.details["revisions"]) for e in events] == [
        ("write-token", "cnn/temp", [2]), ("write-token", "cnn/temp@1", [1])]
    assert get(server, "eval-sets/temp").status_code == 404


def test_gc_frees_a_deleted_sets_blob_and_keeps_a_live_ones(server):
    registry = server.registry
    live = added(server, "keep", "k.jsonl", b'"kept"\n')
    shared = added(server, "shared-a", "s.jsonl", b'"shared"\n')
    added(server, "shared-b", "s.jsonl", b'"shared"\n')
    doomed = added(server, "doomed", "d.jsonl", b'"doomed"\n')
    for name in ("doomed", "shared-a"):
        sets.delete_eval_set(registry.db, "cnn", name)
    referenced = catalog.referenced_digests(registry.db)
    assert {live["sha256"], shared["sha256"]} <= referenced and doomed["sha256"] not in referenced
    report = collect_garbage(registry.db, registry.storage, grace_seconds=0)
    assert report.missing == []
    assert not registry.storage.exists(doomed["sha256"])
    assert registry.storage.exists(live["sha256"]) and registry.storage.exists(shared["sha256"])
    assert batches(server, "keep", 5)[0].instances == {"": ["kept"]}


def test_deleting_a_model_deletes_its_sets_and_a_model_pushed_again_starts_without_them(server):
    registry = server.registry
    push_model(server, "gone")
    data = b'"only in the deleted model"\n'
    answer = requests.post(f"{server.url}/api/v1/models/gone/eval-sets/old", headers=bearer(server.tokens["write"]),
                           files={"file": ("o.jsonl", data)})
    assert answer.status_code == 201, answer.text
    assert requests.delete(f"{server.url}/api/v1/models/gone", headers=bearer(server.tokens["write"])).ok
    push_model(server, "gone")
    listing = requests.get(f"{server.url}/api/v1/models/gone/eval-sets", headers=bearer(server.tokens["read"]))
    assert listing.json()["eval_sets"] == []
    collect_garbage(registry.db, registry.storage, grace_seconds=0)
    assert not registry.storage.exists(answer.json()["sha256"])


def test_a_read_token_can_list_and_download_but_not_add_or_delete(server):
    added(server, "scoped", "s.jsonl", b"1\n")
    assert upload(server, "scoped", "s.jsonl", b"2\n", token="read").status_code == 403
    refused = requests.delete(f"{server.url}/api/v1/models/cnn/eval-sets/scoped",
                              headers=bearer(server.tokens["read"]))
    assert refused.status_code == 403
    assert requests.get(f"{server.url}/api/v1/models/cnn/eval-sets").status_code == 401
    assert get(server, "eval-sets/scoped/1/download").content == b"1\n"
    assert [r["revision"] for r in get(server, "eval-sets/scoped").json()["revisions"]] == [1]


# --- the CLI ----------------------------------------------------------------------------------------

def test_cli_adds_lists_pulls_and_deletes_a_set(server, tmp_path):
    env = {**os.environ, "REGISTRY_URL": server.url, "REGISTRY_TOKEN": server.tokens["write"]}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "registry.cli", "eval-set", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    source = tmp_path / "holdout.tfrecord"
    tfrecord(examples(3), source)
    add = cli("add", "cnn", "cli-set", str(source), "--label-feature", "label", "--description", "from the CLI")
    assert add.returncode == 0, add.stderr
    assert "evaluation set cli-set@1 stored: 3 tf.Examples" in add.stdout and "from feature label" in add.stdout
    listing = cli("ls", "cnn")
    assert listing.returncode == 0 and "cli-set" in listing.stdout
    revisions = cli("ls", "cnn", "cli-set")
    assert "from the CLI" in revisions.stdout
    pulled = cli("pull", "cnn", "cli-set@1")
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "cli-set-1.tfrecord").read_bytes() == source.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n{"x": \n')
    refused = cli("add", "cnn", "cli-set", str(bad))
    assert refused.returncode == 1 and refused.stderr.startswith("Error: ") and "line 2 is not JSON" in refused.stderr
    assert "Traceback" not in refused.stderr
    lines = tmp_path / "lines.jsonl"
    lines.write_text("1\n")
    wrong_option = cli("add", "cnn", "cli-set", str(lines), "--label-feature", "label")
    assert wrong_option.returncode == 1 and "(leave --label-feature out)" in wrong_option.stderr
    unknown = cli("pull", "cnn", "cli-set@7")
    assert unknown.returncode == 1 and "revision 7" in unknown.stderr and "Traceback" not in unknown.stderr
    deleted = cli("delete", "cnn", "cli-set", "--yes")
    assert deleted.returncode == 0 and "revision(s) 1 deleted" in deleted.stdout
