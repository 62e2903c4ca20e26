"""Pushing files of this machine from inside a registry process, through the real push path.

The demo seeding and ``registry model-server``'s folder import push files they
read here, not an HTTP upload: each file streams into an upload sink over blob
storage exactly as a multipart part does, and :func:`registry.uploads.pushing.push`
checks and registers them as it checks any push.
"""

from __future__ import annotations

from pathlib import Path

from registry.entities import VersionInfo
from registry.uploads.files import GRAPH_FIELDS, LOCAL_FIELDS, PushRequest, ReceivedFile, UploadSink
from registry.uploads.pushing import abort, push

CHUNK = 256 * 1024


def push_paths(registry, name: str, files: list[tuple[str, Path]], **fields) -> VersionInfo:
    """Push ``files`` (push field, path) as the next version of ``name`` (or version ``fields["version"]``);
    ``fields`` are :class:`PushRequest`'s.  A refused push keeps nothing of it."""
    received: list[ReceivedFile] = []
    try:
        for role, path in files:
            sink = UploadSink(registry.storage.writer(), scan=role in GRAPH_FIELDS, keep_local=role in LOCAL_FIELDS)
            received.append(ReceivedFile(role, path.name, sink))
            with open(path, "rb") as stream:
                while chunk := stream.read(CHUNK):
                    sink.write(chunk)
            sink.end()  # its file closed, as a multipart part is when it ends
    except BaseException:
        abort(received)
        raise
    return push(registry.db, registry.storage, name, PushRequest(files=received, **fields),
                max_attempts=registry.settings.job_max_attempts)
