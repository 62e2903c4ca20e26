"""The upload-time wire check tells graphs from meta graphs and from junk,
whatever the chunk boundaries."""

from __future__ import annotations

import pytest

from registry.uploads.protowire import GRAPH_DEF_FIELDS, META_GRAPH_DEF_FIELDS, WireScanner


def scan(data: bytes, chunk: int) -> WireScanner:
    scanner = WireScanner()
    for i in range(0, len(data), chunk):
        scanner.feed(data[i:i + chunk])
    scanner.finish()
    return scanner


@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 20])
def test_real_graph_def_and_meta_graph_are_recognised_in_any_chunking(models, chunk):
    graph = scan(models["frozen"].frozen_graph.read_bytes(), chunk)
    meta = scan(models["resource_meta"].meta.read_bytes(), chunk)
    assert graph.error is None and graph.matches(GRAPH_DEF_FIELDS) and graph.counts[1] > 1
    assert meta.error is None and meta.matches(META_GRAPH_DEF_FIELDS) and meta.counts[2] == 1
    assert not meta.matches(GRAPH_DEF_FIELDS)  # saver_def (3) is a message, GraphDef's 3 a varint


@pytest.mark.parametrize("junk", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\x00" * 100, b"\xff" * 20])
def test_non_protobuf_bytes_are_rejected(junk):
    assert scan(junk, 5).error is not None


def test_checkpoint_index_is_not_a_graph(models):
    assert not scan(models["resource_meta"].index.read_bytes(), 100).matches(GRAPH_DEF_FIELDS)


def test_cut_in_the_middle_of_a_field_is_reported_as_truncated(models):
    data = models["frozen"].frozen_graph.read_bytes()
    assert "truncated" in scan(data[: len(data) // 2], 10).error
