"""Hypothesis feeds random and mutated GraphDef / MetaGraphDef bytes to the push
checks and to the converter.  Every outcome is a 202 or a 400 with a message at
upload, and a version that is ready or failed with a reason after conversion:
never a 5xx, never a crashed worker, never a version stuck in between."""

from __future__ import annotations

import io

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (test extras)")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import make_settings  # noqa: E402

pytestmark = pytest.mark.slow
FAST = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """The original bytes after a few flips, cuts, insertions, deletions or splices."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "varint"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "splice":
            start = draw(st.integers(0, max(0, len(original) - 1)))
            data[at:at] = original[start:start + draw(st.integers(1, 256))]
        elif kind == "varint" and data:  # a huge or endless length prefix
            data[at:at + 1] = draw(st.sampled_from([b"\xff" * 10, b"\x80" * 11, b"\xff\xff\xff\xff\x0f"]))
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    from registry.app import create_app

    app = create_app(make_settings(tmp_path_factory.mktemp("fuzz"), job_max_attempts=1))
    yield app
    app.extensions["registry"].db.dispose()


def push_answer(app, form: dict) -> tuple[int, dict]:
    response = app.test_client().post("/api/v1/models/fuzz/versions", data=form, content_type="multipart/form-data")
    return response.status_code, response.get_json()


def assert_recorded(status: int, body: dict) -> None:
    assert status in (202, 400), (status, body)
    if status == 400:
        assert body["error"]["message"] and body["error"]["code"] != "internal_error"


def test_random_and_mutated_frozen_graphs_are_accepted_or_refused_with_a_message(fuzz_app, models):
    original = models["frozen"].frozen_graph.read_bytes()

    @given(data=st.one_of(st.binary(max_size=2048), mutated(original)))
    @FAST
    def check(data):
        assert_recorded(*push_answer(fuzz_app, {"frozen": (io.BytesIO(data), "frozen.pb")}))

    check()


def test_mutated_meta_graphs_and_indexes_are_accepted_or_refused_with_a_message(fuzz_app, models):
    model = models["resource_meta"]
    meta, index = model.meta.read_bytes(), model.index.read_bytes()
    shards = [p.read_bytes() for p in model.data]

    @given(new_meta=st.one_of(st.just(meta), mutated(meta), st.binary(max_size=512)),
           new_index=st.one_of(st.just(index), mutated(index)))
    @FAST
    def check(new_meta, new_index):
        form = {"meta": (io.BytesIO(new_meta), "model.ckpt.meta"),
                "index": (io.BytesIO(new_index), "model.ckpt.index"),
                "data": [(io.BytesIO(d), p.name) for d, p in zip(shards, model.data)]}
        assert_recorded(*push_answer(fuzz_app, form))

    check()


@st.composite
def broken_graph_defs(draw, original: bytes) -> bytes:
    """A frozen GraphDef changed where it means something: ops, inputs, attributes, tensors."""
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(original)
    nodes = list(graph.node)
    node = nodes[draw(st.integers(0, len(nodes) - 1))]
    kind = draw(st.sampled_from(["op", "input", "drop", "dtype", "tensor", "rename", "bytes"]))
    if kind == "op":
        node.op = draw(st.sampled_from(["NoSuchOp", "ReadFile", "PyFunc", "Placeholder", ""]))
    elif kind == "input":
        node.input.append(draw(st.sampled_from(["missing", "input:7", "^input", node.name])))
    elif kind == "drop":
        graph.node.remove(node)
    elif kind == "dtype":
        for attr in node.attr.values():
            if attr.HasField("type"):
                attr.type = draw(st.integers(0, 30))
    elif kind == "tensor":
        for attr in node.attr.values():
            if attr.HasField("tensor"):
                attr.tensor.tensor_content = draw(st.binary(max_size=64))
    elif kind == "rename":
        node.name = nodes[0].name
    data = graph.SerializeToString()
    if kind == "bytes":
        data = draw(mutated(data))
    return data


def test_conversions_of_broken_graphs_end_ready_or_failed_with_a_reason(tmp_path, models):
    """Few examples: each conversion runs a TensorFlow child process (about 5 s)."""
    from registry.app import create_app
    from registry.jobs.worker import Worker

    fuzz_app = create_app(make_settings(tmp_path / "home", job_max_attempts=1))
    registry = fuzz_app.extensions["registry"]
    original = models["frozen"].frozen_graph.read_bytes()
    worker = Worker(registry.settings, registry.db, registry.storage)
    outcomes = []

    @given(data=broken_graph_defs(original))
    @settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate])  # no shrinking: every step would be another conversion
    def check(data):
        status, body = push_answer(fuzz_app, {"frozen": (io.BytesIO(data), "frozen.pb")})
        assert_recorded(status, body)
        if status != 202:
            return
        assert worker.run_once() is True  # raises nothing, whatever the graph does to the child
        record = fuzz_app.test_client().get(f"/api/v1/models/fuzz/versions/{body['version']}").get_json()
        assert record["status"] in ("ready", "failed"), record
        assert record["status"] == "ready" or record["status_message"]
        outcomes.append(record["status"])

    check()
    registry.db.dispose()
    assert outcomes  # at least one broken graph made it past the upload checks to a conversion
