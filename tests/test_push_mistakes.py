"""Push mistakes that used to pass quietly (issue 15, items 2, 7 and 9), through a real server, real
TensorFlow graphs and the real `registry` command:

- a checkpoint pushed with an inference graph that reads none of its variables (an already-frozen
  graph) is refused, at upload when the graph is binary, by the conversion when it is text;
- a labels file that fits neither the prediction output's classes nor them and a background line
  first is warned about on the version, with both numbers (the output's size is known only once converted);
- a version not converted yet, or whose conversion failed, shows no made-up input size.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests
import sqlalchemy as sa

from registry.client import RegistryClient
from registry.converter.heads import labels_mismatch
from registry.models import ModelVersion
from tests.helpers import blob_files, server_env

NOT_KNOWN_YET = "not known yet: read from the input's shape when converted"
NOT_KNOWN_FAILED = "not known: the conversion failed"
UNUSED = "reads no variable from the checkpoint (it has no variables: it is already frozen), so the checkpoint " \
         "would be ignored"


def _files(model, graph, *, meta: bool = False) -> list:
    """A checkpoint push of ``model``'s .index and .data with ``graph`` as its inference graph."""
    files = [("meta", (model.meta.name, model.meta.read_bytes()))] if meta else []
    files += [("index", (model.index.name, model.index.read_bytes()))]
    files += [("data", (p.name, p.read_bytes())) for p in model.data]
    return files + [("graph", (graph.name, graph.read_bytes()))]


def _push(url: str, name: str, files: list, **fields) -> requests.Response:
    return requests.post(f"{url}/api/v1/models/{name}/versions", files=files, data=fields, timeout=120)


def _version_rows(server) -> int:
    with server.registry.db.transaction() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(ModelVersion))


def input_size(page: str) -> str:
    """What a version page says under Preprocessing / input size."""
    found = re.search(r'<dd id="input-size">(.*?)</dd>', page, re.S)
    assert found, page
    return found.group(1)


def registry_cli(home, *args: str) -> subprocess.CompletedProcess:
    """The installed `registry` command, as a user runs it (a subprocess, its own environment)."""
    done = subprocess.run([sys.executable, "-m", "registry.cli", *args], capture_output=True, text=True,
                          timeout=600, env=server_env(home))
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


@pytest.fixture(scope="module")
def frozen_text(models, tmp_path_factory):
    """The session's frozen graph written as a text GraphDef (.pbtxt): the upload check leaves text to
    the converter."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(models["frozen"].frozen_graph.read_bytes())
    folder = tmp_path_factory.mktemp("frozen-text")
    tf.io.write_graph(graph_def, str(folder), "frozen.pbtxt", as_text=True)
    return folder / "frozen.pbtxt"


# -- item 2: a checkpoint its graph does not read ------------------------------------------------------

@pytest.mark.parametrize("meta", [False, True], ids=["graph", "graph+meta"])
def test_frozen_graph_as_graph_with_a_checkpoint_is_refused_at_upload_leaving_nothing(live_server, models, meta):
    model, frozen = models["resource_graph"], models["frozen"].frozen_graph
    answer = _push(live_server.url, "ignored", _files(model, frozen, meta=meta))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "checkpoint_unused"
    assert error["message"] == (f"the 'graph' file 'frozen.pb' {UNUSED}: send the graph alone as 'frozen', "
                                "without the checkpoint")
    assert requests.get(f"{live_server.url}/api/v1/models/ignored", timeout=30).status_code == 404
    assert blob_files(live_server.settings.home) == []
    assert _version_rows(live_server) == 0
    # no version number was taken: the right push of the same graph is version 1
    again = _push(live_server.url, "ignored", [("frozen", ("frozen.pb", frozen.read_bytes()))])
    assert again.status_code == 202 and again.json()["version"] == 1


def test_an_inference_graph_with_its_variables_is_still_accepted(live_server, models):
    model = models["resource_graph"]
    answer = _push(live_server.url, "fine", _files(model, model.inference_graph))
    assert answer.status_code == 202, answer.text


def test_on_s3_the_graph_is_checked_from_a_spooled_copy_that_never_outlives_the_push(s3_server, models, tmp_path,
                                                                                       monkeypatch):
    """S3 keeps no local staging file: the inference graph is spooled for its check, and the spool
    goes whether the push is refused or accepted."""
    import tempfile

    from tests.conftest import S3_BUCKET, make_settings, start_live_server

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    prefix = f"mistakes-{tmp_path.name}"
    server, stop = start_live_server(make_settings(tmp_path / "home", storage_url=f"s3://{S3_BUCKET}/{prefix}"),
                                     workers=False)
    try:
        model = models["resource_graph"]
        refused = _push(server.url, "ignored", _files(model, models["frozen"].frozen_graph))
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "checkpoint_unused", refused.text
        assert s3_server.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}/").get("KeyCount", 0) == 0
        assert s3_server.list_multipart_uploads(Bucket=S3_BUCKET, Prefix=f"{prefix}/").get("Uploads", []) == []
        assert _version_rows(server) == 0
        assert list(spool.glob("registry-upload-*")) == []
        accepted = _push(server.url, "fine", _files(model, model.inference_graph))
        assert accepted.status_code == 202 and accepted.json()["version"] == 1, accepted.text
        assert list(spool.glob("registry-upload-*")) == []
    finally:
        stop()


def test_the_cli_says_to_push_the_frozen_graph_with_frozen(live_server, models, tmp_path):
    model, frozen = models["resource_graph"], models["frozen"].frozen_graph
    done = registry_cli(tmp_path, "push", "ignored", str(model.prefix), "--graph", str(frozen),
                        "--url", live_server.url)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"Error: the --graph file 'frozen.pb' {UNUSED}: push the graph alone with "
                                   "--frozen, without the checkpoint prefix")
    assert requests.get(f"{live_server.url}/api/v1/models/ignored", timeout=30).status_code == 404
    assert blob_files(live_server.settings.home) == []


def test_a_text_frozen_graph_with_a_checkpoint_fails_its_conversion_saying_so(converting_server, models,
                                                                               frozen_text, tmp_path):
    """Text is not scanned at upload: the conversion refuses it, in the same words, and the CLI says
    them its way; the failed version's page shows no made-up input size (item 9)."""
    model = models["resource_graph"]
    done = registry_cli(tmp_path, "push", "text-frozen", str(model.prefix), "--graph", str(frozen_text), "--wait",
                        "--timeout", "300", "--url", converting_server.url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (f"text-frozen version 1: failed - the --graph file 'frozen.pbtxt' {UNUSED}: push the graph alone "
            "with --frozen, without the checkpoint prefix") in done.stdout, done.stdout
    record = RegistryClient(converting_server.url).get_version("text-frozen", "1")
    assert record["status"] == "failed"
    assert record["status_message"] == (f"the 'graph' file 'frozen.pbtxt' {UNUSED}: send the graph alone as "
                                        "'frozen', without the checkpoint")
    assert record["preprocessing"]["input_height"] is None and record["preprocessing"]["input_width"] is None
    page = requests.get(f"{converting_server.url}/models/text-frozen/versions/1", timeout=30).text
    assert input_size(page) == f'<span class="muted">{NOT_KNOWN_FAILED}</span>'


def test_an_input_that_is_not_in_the_graph_fails_naming_the_placeholders_there(converting_server, models):
    model = models["resource_graph"]
    answer = _push(converting_server.url, "wrong-input", _files(model, model.inference_graph),
                   output_nodes=model.output, input_nodes="images")
    assert answer.status_code == 202, answer.text
    record = RegistryClient(converting_server.url).wait("wrong-input", 1, timeout=300)
    assert record["status"] == "failed"
    assert record["status_message"].startswith("input node 'images' is not in the graph.")
    assert "Its placeholders: input." in record["status_message"]


def test_outputs_that_read_no_variable_fail_the_conversion_naming_them(converting_server, models):
    model = models["resource_graph"]
    answer = _push(converting_server.url, "no-weights", _files(model, model.inference_graph), output_nodes="input")
    assert answer.status_code == 202, answer.text
    record = RegistryClient(converting_server.url).wait("no-weights", 1, timeout=300)
    assert record["status"] == "failed"
    assert record["status_message"].startswith("the output(s) input read none of the inference graph's ")
    assert "so the checkpoint would be ignored" in record["status_message"]
    assert "Pass output_nodes (comma-separated node names) with the push" in record["status_message"]


def test_a_graph_whose_variables_are_not_in_the_checkpoint_keeps_its_own_error(converting_server, models):
    graph, other = models["resource_graph"], models["renamed_keys"]
    files = _files(other, graph.inference_graph)
    assert _push(converting_server.url, "mismatch", files).status_code == 202
    record = RegistryClient(converting_server.url).wait("mismatch", 1, timeout=300)
    assert record["status"] == "failed"
    assert "is not in the checkpoint" in record["status_message"]
    assert "reads no variable" not in record["status_message"]


# -- item 7: labels that do not fit the prediction output ------------------------------------------------

SEVEN = ("labels.txt has 7 lines but the prediction output predictions/Softmax has 5 classes: give 5 labels, one "
         "per class (or 6 with a background line first)")


@pytest.fixture(scope="module")
def seven_labels(converting_server, models, tmp_path_factory):
    """A checkpoint + .meta push (the .meta path is unaffected by item 2) with 7 labels for 5 classes,
    through `registry push --wait`."""
    folder = tmp_path_factory.mktemp("seven-labels")
    labels = folder / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(7)))
    done = registry_cli(folder, "push", "seven", str(models["resource_meta"].prefix), "--labels", str(labels),
                        "--wait", "--timeout", "300", "--url", converting_server.url)
    return folder, done


def test_push_wait_warns_of_labels_that_fit_no_output_with_both_numbers(seven_labels):
    _, done = seven_labels
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"seven version 1: ready - frozen and verified (" in done.stdout
    assert f"; warning: {SEVEN}" in done.stdout


def test_the_labels_warning_is_on_the_version_record_show_and_page(converting_server, seven_labels):
    folder, _ = seven_labels
    record = RegistryClient(converting_server.url).get_version("seven", "1")
    assert record["status"] == "ready"
    assert record["status_message"].endswith(f"; warning: {SEVEN}")
    assert record["conversion"]["warnings"] == [SEVEN]
    shown = registry_cli(folder, "version", "show", "seven:1", "--url", converting_server.url)
    assert shown.returncode == 0 and SEVEN in shown.stdout, shown.stdout + shown.stderr
    page = requests.get(f"{converting_server.url}/models/seven/versions/1", timeout=30).text
    assert f'<p class="warn labels-warning" role="note">{SEVEN}</p>' in page


def test_show_names_the_uploads_training_ops_in_words_not_as_raw_records(converting_server, seven_labels):
    """A .meta push carries the training graph's saving and assigning ops; freezing leaves them behind.
    `registry show` names them on one line, not as Python dicts under "nothing flagged"."""
    folder, _ = seven_labels
    safety = RegistryClient(converting_server.url).get_version("seven", "1")["safety"]
    left = [f for f in safety["upload_flags"] if f["op"] not in {g["op"] for g in safety["flags"]}]
    assert {f["op"] for f in left} >= {"SaveV2", "RestoreV2"}, safety["upload_flags"]
    shown = registry_cli(folder, "show", "seven:1", "--url", converting_server.url)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "{'" not in shown.stdout and "'op'" not in shown.stdout, shown.stdout
    (line,) = [line for line in shown.stdout.splitlines() if "only in the upload" in line]
    assert "not in the frozen graph (never run)" in line
    for flag in left[:6]:
        assert f"{flag['op']} ({flag['count']}, {flag['category'].replace('_', ' ')})" in line, line


def _labelled(server, models, tmp_path, name: str, lines: bytes) -> list[dict]:
    """Push the session's CNN with a labels file of ``lines``: it becomes ready without a warning, and
    :label's five predictions on a test image."""
    from tests import images

    model = models["resource_graph"]
    files = _files(model, model.inference_graph) + [("labels", (f"{name}-labels.txt", lines))]
    assert _push(server.url, name, files).status_code == 202
    client = RegistryClient(server.url)
    record = client.wait(name, 1, timeout=300)
    assert record["status"] == "ready", record["status_message"]
    assert "warning" not in record["status_message"]
    assert "warnings" not in (record["conversion"] or {})
    answer = client.label(name, "1", images.write_images(tmp_path)["chart.png"], top_k=5)
    predictions = answer["predictions"] if "predictions" in answer else answer
    assert len(predictions) == 5
    return predictions


def test_labels_with_a_background_line_first_fit_and_label_without_it(converting_server, models, tmp_path):
    """Five classes and six lines, the first a background line (TF-slim's 1001-line ImageNet list for a
    1000-class ResNet): no warning, and :label names class i with line i + 1."""
    lines = b"background\n" + b"".join(b"class %d\n" % i for i in range(5))
    predictions = _labelled(converting_server, models, tmp_path, "six", lines)
    assert [p["label"] for p in predictions] == [f"class {p['index']}" for p in predictions]


def test_blank_lines_ending_a_labels_file_are_no_classes_and_shift_no_label(converting_server, models, tmp_path):
    """Five labels and the extra newlines an editor leaves at the end: six lines by count, which read
    as "a background line first" shifted every label by one.  Blank lines that end the file are not
    classes: no warning, and :label names class i with line i (as label_image.py does)."""
    lines = b"".join(b"class %d\n" % i for i in range(5)) + b"\n \r\n"
    predictions = _labelled(converting_server, models, tmp_path, "blank-end", lines)
    assert [p["label"] for p in predictions] == [f"class {p['index']}" for p in predictions]
    shown = registry_cli(tmp_path, "show", "blank-end:1", "--url", converting_server.url)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "labels: 5 (blank-end-labels.txt)" in shown.stdout, shown.stdout  # the count and the file pushed


@pytest.mark.parametrize("lines, classes, said", [
    (1001, 1001, None), (1001, 1000, None), (7, 1001, "give 1001 labels, one per class (or 1002 with a "
                                                      "background line first)"),
    (1000, 1001, "give 1001 labels, one per class (or 1002 with a background line first)"),
    (3, 1, "has 1 class: give 1 label, one per class (or 2 with a background line first)"), (3, None, None),
])
def test_labels_fit_the_classes_or_the_classes_and_a_background_line(lines, classes, said):
    warning = labels_mismatch("labels.txt", lines, "InceptionV3/Predictions/Reshape_1", classes)
    if said is None:
        assert warning is None
    else:
        assert warning.startswith(f"labels.txt has {lines} lines but the prediction output "
                                  f"InceptionV3/Predictions/Reshape_1 has {classes} class")
        assert warning.endswith(said)


# -- item 9: no made-up preprocessing ------------------------------------------------------------------------

def test_a_queued_version_shows_its_input_size_is_not_known_yet(live_server, models, tmp_path):
    frozen = models["frozen"].frozen_graph
    assert _push(live_server.url, "queued", [("frozen", ("frozen.pb", frozen.read_bytes()))]).status_code == 202
    page = requests.get(f"{live_server.url}/models/queued/versions/1", timeout=30).text
    assert input_size(page) == f'<span class="muted">{NOT_KNOWN_YET}</span>'
    record = requests.get(f"{live_server.url}/api/v1/models/queued/versions/1", timeout=30).json()
    assert record["status"] == "queued"
    assert record["preprocessing"] == {"input_height": None, "input_width": None, "input_mean": 0.0,
                                       "input_std": 255.0}
    shown = registry_cli(tmp_path, "version", "show", "queued:1", "--url", live_server.url)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    said = next(line for line in shown.stdout.splitlines() if line.startswith("  preprocessing: "))
    assert said == ("  preprocessing: input size not known until converted (read from the input's shape), "
                    "mean 0, std 255"), shown.stdout


def test_an_input_size_set_at_push_is_shown_before_conversion(live_server, models):
    frozen = models["frozen"].frozen_graph
    answer = _push(live_server.url, "sized", [("frozen", ("frozen.pb", frozen.read_bytes()))],
                   input_height="32", input_width="32")
    assert answer.status_code == 202
    page = requests.get(f"{live_server.url}/models/sized/versions/1", timeout=30).text
    assert input_size(page) == "32 × 32"


def test_a_ready_version_shows_the_input_size_read_from_its_graph(converting_server, models):
    frozen = models["frozen"].frozen_graph
    assert _push(converting_server.url, "eight", [("frozen", ("frozen.pb", frozen.read_bytes()))]).status_code == 202
    record = RegistryClient(converting_server.url).wait("eight", 1, timeout=300)
    assert record["status"] == "ready", record["status_message"]
    assert (record["preprocessing"]["input_height"], record["preprocessing"]["input_width"]) == (8, 8)
    page = requests.get(f"{converting_server.url}/models/eight/versions/1", timeout=30).text
    assert input_size(page) == "8 × 8"


# -- a training graph pushed without its inference graph (TF-slim users: the checkpoint's .meta alone) ----

def test_a_training_graph_pushed_alone_is_pointed_at_its_inference_graph_and_warned_of_having_no_input(
        converting_server, tmp_path):
    """The .meta of a training graph reads its batch from an input pipeline: no placeholder.  Detection
    says to push the inference graph with --graph; forcing an output with --output-nodes gives a version
    that computes the same thing on every run, and the version says so."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    prefix = tmp_path / "train" / "model.ckpt"
    graph = tf.Graph()
    with graph.as_default():
        batch = tf1.random.normal([4, 8], seed=1, name="batch")  # what an input pipeline hands the model
        weights = tf1.get_variable("w", [8, 3], use_resource=True)
        probs = tf.nn.softmax(tf.matmul(batch, weights), name="probs")
        loss = tf.reduce_mean(-tf.math.log(probs[:, 0]), name="loss")
        train = tf1.train.GradientDescentOptimizer(0.1).minimize(loss)
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            session.run(train)
            saver.save(session, str(prefix))

    url = ("--url", converting_server.url)
    done = registry_cli(tmp_path, "push", "slim-train", str(prefix), "--wait", "--timeout", "300", *url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "it has no input placeholder, so it reads its data from an input pipeline" in done.stdout
    assert "push again with --graph INFERENCE_GRAPH.pb beside the checkpoint prefix" in done.stdout
    assert "or with --output-nodes NAME[,NAME...]" in done.stdout and "'graph'" not in done.stdout

    done = registry_cli(tmp_path, "push", "slim-train", str(prefix), "--output-nodes", "probs", "--wait",
                        "--timeout", "300", *url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ready - frozen and verified" in done.stdout
    assert "warning: the version has no input: every run computes the same outputs" in done.stdout
    assert "push again with --graph INFERENCE_GRAPH.pb" in done.stdout
    record = RegistryClient(converting_server.url).get_version("slim-train", "2")
    assert any(w.startswith("the version has no input") for w in record["conversion"]["warnings"])
