"""Streaming multipart parsing for pushes.

werkzeug's sans-IO decoder hands us each part's name before its bytes, so every
file part streams straight into its own blob writer (never a temporary file,
never memory), only graph parts pay for the protobuf wire check, and a part
with an unknown name is refused before any of its bytes are read.
"""

from __future__ import annotations

from typing import BinaryIO

from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from registry.errors import InvalidRequest, InvalidUpload
from registry.storage import BlobStorage
from registry.uploads import FILE_FIELDS, GRAPH_FIELDS, ReceivedFile, UploadSink

CHUNK = 256 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 1000


def read_push_form(
    stream: BinaryIO, boundary: bytes, storage: BlobStorage, sinks: list[UploadSink]
) -> tuple[dict[str, str], list[ReceivedFile]]:
    """Read a multipart push body; every sink created is appended to ``sinks``
    so that the caller can abort them all if anything fails."""
    if not boundary:
        raise InvalidRequest("multipart/form-data needs a boundary", code="invalid_content_type")
    decoder = MultipartDecoder(boundary, max_parts=MAX_PARTS)
    fields: dict[str, str] = {}
    files: list[ReceivedFile] = []
    field_name: str | None = None
    field_value = bytearray()
    sink: UploadSink | None = None
    while True:
        chunk = stream.read(CHUNK)
        decoder.receive_data(chunk or None)
        event = _next_event(decoder)
        while not isinstance(event, (Epilogue, NeedData)):
            if isinstance(event, Field):
                field_name, sink = event.name, None
                field_value.clear()
            elif isinstance(event, File):
                if event.name not in FILE_FIELDS:
                    raise InvalidUpload(
                        f"unknown file field {event.name!r}: send meta, index, data (repeatable), graph, "
                        "frozen, saved_model, keras or labels",
                        code="unknown_field",
                    )
                field_name = None
                sink = UploadSink(storage.writer(), scan=event.name in GRAPH_FIELDS)
                sinks.append(sink)
                files.append(ReceivedFile(event.name, event.filename or event.name, sink))
            elif isinstance(event, Data):
                if sink is not None:
                    sink.write(event.data)
                else:
                    field_value += event.data
                    if len(field_value) > MAX_FIELD_BYTES:
                        raise InvalidUpload(f"form field {field_name!r} is longer than {MAX_FIELD_BYTES // 1024} KiB",
                                            code="field_too_long")
                    if not event.more_data and field_name is not None:
                        fields[field_name] = field_value.decode("utf-8", "replace")
            event = _next_event(decoder)
        if isinstance(event, Epilogue) or not chunk:
            break
    if not isinstance(event, Epilogue):
        raise InvalidRequest("the multipart body ended early (no closing boundary)", code="invalid_multipart")
    return fields, files


def _next_event(decoder: MultipartDecoder):
    """The decoder's next event; a body it cannot parse is the client's mistake (400), not ours."""
    try:
        return decoder.next_event()
    except ValueError as exc:
        raise InvalidRequest(
            f"the multipart body is malformed ({exc}): send multipart/form-data as a browser or "
            "`curl -F` writes it, each part with a Content-Disposition header",
            code="invalid_multipart",
        ) from None
