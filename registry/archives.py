"""Safe extraction of untrusted archives (a SavedModel pushed as .zip or .tar.gz).

Checked member by member before anything is written, and again while bytes
are written: no absolute paths, no ``..``, no links, devices or other special
files, at most ``max_files`` members and ``max_bytes`` uncompressed bytes
(counted as they are decompressed, so a zip bomb that lies about its sizes
still stops at the limit).  A violation raises :class:`InvalidUpload` and leaves
nothing behind.  No TensorFlow: the web app checks uploads with it.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from registry.errors import InvalidUpload

CHUNK = 1024 * 1024


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
        kind = _kind(source.name, f.read(4))
    total = files = 0

    def members(handle) -> Iterator[_Member]:
        return _zip_members(handle) if kind == "zip" else _tar_members(handle)

    try:
        opener = zipfile.ZipFile(source) if kind == "zip" else tarfile.open(source, mode="r:*")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise _bad(f"it cannot be read ({exc})") from exc
    seen: set[PurePosixPath] = set()
    try:
        with opener as handle:
            for member in members(handle):
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
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, RuntimeError) as exc:
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
