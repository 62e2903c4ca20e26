"""Streaming multipart parsing for pushes (and evaluation sets: ``read_parts``).

werkzeug's sans-IO decoder hands us each part's name before its bytes, so every
file part streams straight into its own blob writer (never memory; an archive or
an inference graph is also spooled to a local file for its check where the
storage keeps no local staging file), only graph parts pay for the protobuf wire
check, and a part with an unknown name is refused before any of its bytes are read.

What the decoder must hold in memory is bounded before it is parsed: the
preamble, each part's headers and the epilogue may take MAX_HEADER_BYTES (the
decoder keeps them whole until their end arrives), a form field
MAX_FIELD_BYTES, and a push at most ``max_parts`` parts.  A part's file is
closed when the part ends, so a push holds one open file at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    NeedData,
    State,
)

from registry.errors import InvalidRequest, InvalidUpload
from registry.storage import BlobStorage
from registry.uploads.files import FILE_FIELDS, GRAPH_FIELDS, LOCAL_FIELDS, ReceivedFile, UploadSink

CHUNK = 256 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024  # the preamble, one part's headers, the epilogue
DEFAULT_MAX_PARTS = 256
# Decoder states in which it keeps everything received until a delimiter comes.
_UNBOUNDED_STATES = {State.PREAMBLE: "preamble before the first boundary", State.PART: "headers of one part",
                     State.EPILOGUE: "epilogue after the closing boundary"}


def read_push_form(
    stream: BinaryIO, boundary: bytes, storage: BlobStorage, sinks: list[UploadSink],
    *, max_parts: int = DEFAULT_MAX_PARTS,
) -> tuple[dict[str, str], list[ReceivedFile]]:
    """Read a multipart push body; every sink created is appended to ``sinks``
    so that the caller can abort them all if anything fails."""
    files: list[ReceivedFile] = []

    def open_file(name: str, filename: str | None) -> UploadSink:
        if name not in FILE_FIELDS:
            raise InvalidUpload(
                f"unknown file field {name!r}: send meta, index, data (repeatable), graph, "
                "frozen, saved_model, keras or labels",
                code="unknown_field",
            )
        sink = UploadSink(storage.writer(), scan=name in GRAPH_FIELDS, keep_local=name in LOCAL_FIELDS)
        sinks.append(sink)
        files.append(ReceivedFile(name, filename or name, sink))
        return sink

    fields = read_parts(stream, boundary, open_file=open_file, max_parts=max_parts)
    return fields, files


def read_parts(
    stream: BinaryIO, boundary: bytes, *, open_file: Callable[[str, str | None], UploadSink],
    check_field: Callable[[str], None] | None = None, check_file: Callable[[UploadSink], None] | None = None,
    max_parts: int | None = DEFAULT_MAX_PARTS,
) -> dict[str, str]:
    """Stream a multipart body: each file part's bytes go to the sink ``open_file(name, filename)``
    returns for it (it raises for a part it refuses, before any of its bytes are read), checked by
    ``check_file`` after each piece; text fields (each at most MAX_FIELD_BYTES, their names checked
    by ``check_field``) are returned by name.  At most ``max_parts`` parts (None: no limit)."""
    if not boundary:
        raise InvalidRequest("multipart/form-data needs a boundary", code="invalid_content_type")
    decoder = MultipartDecoder(boundary)
    fields: dict[str, str] = {}
    parts = 0
    field_name: str | None = None
    field_value = bytearray()
    sink: UploadSink | None = None
    while True:
        chunk = stream.read(CHUNK)
        decoder.receive_data(chunk or None)
        event = _next_event(decoder)
        while not isinstance(event, (Epilogue, NeedData)):
            if isinstance(event, (Field, File)):
                parts += 1
                if max_parts is not None and parts > max_parts:
                    raise InvalidUpload(
                        f"the push has more than {max_parts} parts (files and fields; "
                        "REGISTRY_MAX_UPLOAD_PARTS): send each file once, or ask the operator to raise the limit "
                        "for a checkpoint with more shards",
                        code="too_many_parts",
                    )
            if isinstance(event, Field):
                if check_field is not None:
                    check_field(event.name)
                field_name, sink = event.name, None
                field_value.clear()
            elif isinstance(event, File):
                field_name = None
                sink = open_file(event.name, event.filename)
            elif isinstance(event, Data):
                if sink is not None:
                    sink.write(event.data)
                    if check_file is not None:
                        check_file(sink)
                    if not event.more_data:
                        sink.end()  # close its file now: the next part gets the next one
                else:
                    field_value += event.data
                    if len(field_value) > MAX_FIELD_BYTES:
                        raise InvalidUpload(f"form field {field_name!r} is longer than {MAX_FIELD_BYTES // 1024} KiB",
                                            code="field_too_long")
                    if not event.more_data and field_name is not None:
                        fields[field_name] = field_value.decode("utf-8", "replace")
            event = _next_event(decoder)
        _check_buffered(decoder)
        if isinstance(event, Epilogue) or not chunk:
            break
    if not isinstance(event, Epilogue):
        raise InvalidRequest("the multipart body ended early (no closing boundary)", code="invalid_multipart")
    return fields


def _check_buffered(decoder: MultipartDecoder) -> None:
    """Refuse a preamble, part header or epilogue that grows past MAX_HEADER_BYTES:
    the decoder would hold it whole, however long, until its delimiter came."""
    what = _UNBOUNDED_STATES.get(decoder.state)
    if what is not None and len(decoder.buffer) > MAX_HEADER_BYTES:
        raise InvalidRequest(
            f"the multipart body is malformed: more than {MAX_HEADER_BYTES // 1024} KiB of {what} without its "
            "end; send multipart/form-data as a browser or `curl -F` writes it",
            code="multipart_header_too_long",
        )


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
