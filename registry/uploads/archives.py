"""Safe extraction of untrusted archives (a SavedModel pushed as .zip or .tar.gz).

Checked member by member before anything is written, and again while bytes
are written: no absolute paths, no ``..``, no links, devices, sparse or other
special files, at most ``max_files`` members and ``max_bytes`` uncompressed
bytes (counted as they are decompressed, so a zip bomb that lies about its
sizes still stops at the limit).  A violation raises :class:`InvalidUpload` and
leaves nothing behind.  No TensorFlow: the web app checks uploads with it.

What the readers hold in memory is bounded before they parse it.  A tar
stream is watched block by block on its way into ``tarfile`` (:class:`_TarGuard`):
an extended header (PAX, GNU long name or long link) is refused beyond
MAX_TAR_HEADER_BYTES before ``tarfile`` reads it whole, all of them together
beyond MAX_TAR_HEADERS_BYTES, and their bytes count toward ``max_bytes``.  A
zip's central directory, which ``zipfile`` reads whole, may take
ZIP_DIRECTORY_BYTES_PER_MEMBER per allowed member.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import re
import shutil
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from registry.errors import InvalidUpload

CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
MAX_TAR_HEADER_BYTES = 64 * 1024  # one PAX header or GNU long name/link
MAX_TAR_HEADERS_BYTES = 16 * 1024**2  # all of them in one archive (tarfile keeps every member's)
MAX_TAR_HEADER_CHAIN = 8  # extended headers in a row before the member they describe
ZIP_DIRECTORY_BYTES_PER_MEMBER = 1024
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ArchiveLimits:
    max_bytes: int = 8 * 1024**3
    max_files: int = 10_000


def _bad(message: str) -> InvalidUpload:
    return InvalidUpload(f"the SavedModel archive is refused: {message}", code="unsafe_archive")


def _clean(name: str) -> PurePosixPath | None:
    """The member's relative path, or None for the archive's own root ("./")."""
    if "\\" in name or "\x00" in name:
        raise _bad(f"member {name!r} has a backslash or NUL in its name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _bad(f"member {name!r} has an absolute path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise _bad(f"member {name!r} points outside the archive ('..')")
    return PurePosixPath(*parts) if parts else None


@dataclass
class _Member:
    path: PurePosixPath | None
    is_dir: bool
    declared_size: int
    open: object  # () -> BinaryIO, for files


def _kind(name: str, head: bytes) -> str:
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    if head[:2] == b"\x1f\x8b" or name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    raise _bad("it is neither a .zip nor a .tar.gz")


# Tar types (tarfile's names): members with data, folders and links (refused later with
# their names), and extended headers that describe the next member.
_TAR_FILES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}
_TAR_NO_DATA = {tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE}
_TAR_PAX = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
_TAR_EXTENDED = _TAR_PAX | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")  # as tarfile parses them


def _tar_number(field: bytes) -> int:
    """A numeric header field, read as tarfile reads it (octal, or GNU base-256)."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[:1] == b"\xff" else value
    return int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)


class _TarGuard:
    """The decompressed tar stream on its way into ``tarfile``, parsed block by block
    alongside it (the same rules for where headers and data are), so a header is
    judged before ``tarfile`` reads what it announces.  Every byte passes through
    it once, in order: a forward seek reads through, a backward one is not seen again."""

    def __init__(self, raw: BinaryIO, limits: ArchiveLimits) -> None:
        self._raw = raw
        self._limits = limits
        self._pos = 0
        self._seen = 0
        self._mode = "header"  # header | extended | skip | done
        self._want = BLOCK  # bytes still to come for the current header, extended header or data
        self._buf = bytearray()
        self._extended: tuple[bytes, int] | None = None  # (type, size) of the extended header being read
        self._pax_size: int | None = None  # a size the last PAX header gives the next member
        self._chain = 0
        self._members = 0
        self._declared = 0  # member data and extended header bytes, against max_bytes
        self._header_bytes = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        data = self._raw.read(size)
        self._observe(data)
        return data

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute seeks")
        if pos < self._pos:
            self._pos = self._raw.seek(pos)
        while self._pos < pos and self.read(min(CHUNK, pos - self._pos)):
            pass
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _observe(self, data: bytes) -> None:
        start, self._pos = self._pos, self._pos + len(data)
        if self._pos > self._seen:
            self._inspect(memoryview(data)[self._seen - start:])
            self._seen = self._pos

    def _inspect(self, data: memoryview) -> None:
        pos = 0
        while pos < len(data) and self._mode != "done":
            take = min(self._want, len(data) - pos)
            if self._mode != "skip":
                self._buf += data[pos:pos + take]
            pos += take
            self._want -= take
            if self._want:
                continue
            done, mode = bytes(self._buf), self._mode
            self._buf.clear()
            self._mode, self._want = "header", BLOCK  # unless what just ended says otherwise
            if mode == "header":
                self._header(done)
            elif mode == "extended":
                self._extended_done(done)

    def _header(self, block: bytes) -> None:
        if block.count(0) == BLOCK:  # end of archive: tarfile stops reading here too
            self._mode = "done"
            return
        name = block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        kind = block[156:157]
        try:
            size = _tar_number(block[124:136])
            checksum = _tar_number(block[148:156])
        except ValueError:
            raise _bad(f"a header near member {name!r} is corrupt") from None
        unsigned = 256 + sum(block[:148]) + sum(block[156:])
        signed = 256 + sum(struct.unpack_from("148b8x356b", block))
        if checksum not in (unsigned, signed):
            raise _bad(f"the header of member {name!r} is corrupt (bad checksum)")
        if kind in _TAR_EXTENDED:
            self._chain += 1
            if self._chain > MAX_TAR_HEADER_CHAIN:
                raise _bad(f"it has more than {MAX_TAR_HEADER_CHAIN} extended headers in a row")
            if not 0 <= size <= MAX_TAR_HEADER_BYTES:
                raise _bad(f"it has an extended header (PAX, GNU long name or link) of {size} bytes; at most "
                           f"{MAX_TAR_HEADER_BYTES // 1024} KiB are allowed")
            self._header_bytes += size
            if self._header_bytes > MAX_TAR_HEADERS_BYTES:
                raise _bad(f"its extended headers (PAX, GNU long names) take more than "
                           f"{MAX_TAR_HEADERS_BYTES // 2**20} MiB")
            self._count(size)
            if size:
                self._mode, self._want, self._extended = "extended", -(-size // BLOCK) * BLOCK, (kind, size)
            return
        if kind == tarfile.GNUTYPE_SPARSE:
            raise _bad(f"member {name!r} is a sparse file; sparse files are not allowed")
        if kind not in _TAR_FILES | _TAR_NO_DATA:
            raise _bad(f"member {name!r} is not a regular file or folder")
        if self._pax_size is not None:
            size = self._pax_size
        self._pax_size, self._chain = None, 0
        self._members += 1
        if self._members > self._limits.max_files:
            raise _bad(f"it has more than {self._limits.max_files} members")
        if size < 0:
            raise _bad(f"member {name!r} has a negative size")
        if kind in _TAR_NO_DATA or (kind == tarfile.AREGTYPE and name.endswith("/")):
            if size:  # tarfile reads no data for these: the bytes would be taken for headers
                raise _bad(f"member {name!r} is a folder or link that declares {size} bytes of data")
            return
        self._count(size)
        if size:
            self._mode, self._want = "skip", -(-size // BLOCK) * BLOCK

    def _extended_done(self, payload: bytes) -> None:
        kind, size = self._extended
        self._extended = None
        if kind not in _TAR_PAX:
            return  # a GNU long name or link: tarfile takes the bytes as a name
        payload, pos = payload[:size], 0
        while match := _PAX_RECORD.match(payload, pos):
            length, keyword = int(match.group(1)), match.group(2)
            if length == 0:
                raise _bad("it has a corrupt PAX header")
            value = payload[match.end(2) + 1:match.start(1) + length - 1]
            if keyword.startswith(b"GNU.sparse."):
                raise _bad("it has a sparse file (GNU.sparse PAX records); sparse files are not allowed")
            if keyword == b"size":
                if kind == tarfile.XGLTYPE:
                    raise _bad("its global PAX header sets a size for every member")
                try:
                    self._pax_size = int(value.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise _bad(f"its PAX header gives a size that is not a number ({value[:40]!r})") from None
            pos += length

    def _count(self, size: int) -> None:
        self._declared += size
        if self._declared > self._limits.max_bytes:
            raise _bad(f"it would unpack to more than {self._limits.max_bytes} bytes (extended headers "
                       "count too)")


def _open_tar(source: Path, head: bytes, limits: ArchiveLimits, stack: contextlib.ExitStack) -> tarfile.TarFile:
    """The archive as a tarfile reading through a :class:`_TarGuard`."""
    raw = stack.enter_context(open(source, "rb"))
    if head[:2] == GZIP_MAGIC:
        raw = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    return stack.enter_context(tarfile.open(fileobj=_TarGuard(raw, limits), mode="r:"))


def _check_zip_directory(source: Path, limits: ArchiveLimits) -> None:
    """Refuse a zip whose central directory (which ``zipfile`` reads whole) is larger than
    the allowed members need, from its end records found as ``zipfile`` finds them."""
    with open(source, "rb") as f:
        size = f.seek(0, io.SEEK_END)
        base = max(size - 22 - 65535, 0)
        f.seek(base)
        tail = f.read()
        if tail[-22:-18] == b"PK\x05\x06" and tail[-2:] == b"\0\0":
            end = len(tail) - 22
        else:
            end = tail.rfind(b"PK\x05\x06")
        if end < 0 or len(tail) - end < 22:
            return  # no end record: zipfile refuses it
        entries, directory = struct.unpack_from("<HL", tail, end + 10)
        locator = base + end - 20
        if locator >= 56:
            f.seek(locator - 56)
            record = f.read(76)  # the ZIP64 end record, then its locator
            if record[56:60] == b"PK\x06\x07" and record[:4] == b"PK\x06\x06":
                entries, directory = struct.unpack_from("<QQ", record, 32)
    if entries > limits.max_files:
        raise _bad(f"it has more than {limits.max_files} members")
    allowed = (limits.max_files + 1) * ZIP_DIRECTORY_BYTES_PER_MEMBER
    if directory > allowed:
        raise _bad(f"its central directory takes {directory} bytes, more than {allowed} for "
                   f"{limits.max_files} members")


def _tar_members(tar: tarfile.TarFile) -> Iterator[_Member]:
    for info in tar:
        path = _clean(info.name)
        if info.issym() or info.islnk():
            where = "outside the archive" if info.linkname.startswith("/") or ".." in info.linkname.split("/") \
                else "elsewhere"
            raise _bad(f"member {info.name!r} is a link to {info.linkname!r} ({where}); links are not allowed")
        if not (info.isfile() or info.isdir()):
            raise _bad(f"member {info.name!r} is not a regular file or folder")
        yield _Member(path, info.isdir(), info.size, lambda info=info: tar.extractfile(info))


def _zip_members(archive: zipfile.ZipFile) -> Iterator[_Member]:
    for info in archive.infolist():
        path = _clean(info.filename)
        mode = info.external_attr >> 16
        if mode and (mode & 0o170000) == 0o120000:
            raise _bad(f"member {info.filename!r} is a symbolic link; links are not allowed")
        if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):
            raise _bad(f"member {info.filename!r} is not a regular file or folder")
        yield _Member(path, info.is_dir(), info.file_size, lambda info=info: archive.open(info))


def _walk(source: Path, limits: ArchiveLimits, dest: Path | None) -> set[PurePosixPath]:
    """Check every member (and write it under ``dest`` if given); returns the member paths."""
    with open(source, "rb") as f:
        head = f.read(4)
    kind = _kind(source.name, head)
    total = files = 0
    seen: set[PurePosixPath] = set()
    try:
        with contextlib.ExitStack() as stack:
            if kind == "zip":
                _check_zip_directory(source, limits)
                members = _zip_members(stack.enter_context(zipfile.ZipFile(source)))
            else:
                members = _tar_members(_open_tar(source, head, limits, stack))
            for member in members:
                files += 1
                if files > limits.max_files:
                    raise _bad(f"it has more than {limits.max_files} members")
                if member.path is None:
                    continue
                if member.path in seen:
                    raise _bad(f"member {member.path} appears twice")
                seen.add(member.path)
                if member.declared_size > limits.max_bytes - total:
                    raise _bad(f"it would unpack to more than {limits.max_bytes} bytes")
                target = dest / member.path if dest is not None else None
                if member.is_dir:
                    if target is not None:
                        target.mkdir(parents=True, exist_ok=True)
                    continue
                stream: BinaryIO = member.open()
                out = None
                if target is not None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    out = open(target, "xb")
                try:
                    while chunk := stream.read(CHUNK):
                        total += len(chunk)
                        if total > limits.max_bytes:
                            raise _bad(f"it unpacks to more than {limits.max_bytes} bytes")
                        if out is not None:
                            out.write(chunk)
                finally:
                    if out is not None:
                        out.close()
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, RuntimeError, zlib.error) as exc:
        raise _bad(f"it cannot be read ({exc})") from exc
    return seen


def check_archive(source: Path, limits: ArchiveLimits) -> set[PurePosixPath]:
    """Refuse an unsafe archive without writing anything; returns its member paths."""
    return _walk(source, limits, None)


def check_saved_model_archive(source: Path, limits: ArchiveLimits) -> None:
    """A safe archive with ``saved_model.pb`` at its top or in its one top-level folder."""
    names = check_archive(source, limits)
    tops = {p.parts[0] for p in names}
    if PurePosixPath("saved_model.pb") in names:
        return
    if len(tops) == 1 and PurePosixPath(next(iter(tops)), "saved_model.pb") in names:
        return
    raise _bad("it has no saved_model.pb at its top (or in its one top-level folder): archive the folder "
               "tf.saved_model.save wrote, e.g. tar czf model.tar.gz -C export_dir .")


def safe_extract(source: Path, dest: Path, limits: ArchiveLimits) -> set[PurePosixPath]:
    """Unpack ``source`` into the new folder ``dest``; on any violation nothing is left."""
    dest.mkdir(parents=True)
    try:
        return _walk(source, limits, dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def saved_model_root(folder: Path) -> Path:
    """The folder holding ``saved_model.pb``: the archive's root, or its one top folder."""
    if (folder / "saved_model.pb").is_file():
        return folder
    entries = [p for p in folder.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "saved_model.pb").is_file():
        return entries[0]
    raise _bad("it has no saved_model.pb at its top (or in its one top-level folder): archive the folder "
               "tf.saved_model.save wrote")
