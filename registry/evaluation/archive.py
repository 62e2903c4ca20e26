"""An evaluation set of images: a zip or tar (.tar, .tar.gz) of JPEG, PNG, GIF or BMP files, with the
expected labels in an optional ``expected.txt`` or CSV file.

The images' order is their paths sorted as Python sorts strings (code point order, as ``LC_ALL=C ls``
lists them: ``B.jpg`` before ``a.jpg``, ``cats/1.jpg`` before ``cats/10.jpg`` before ``cats/2.jpg``).
``expected.txt`` has one label per image in that order; a CSV has ``file,label`` rows in any order (an
optional first row ``file,label`` is a header), its paths as the archive writes them or relative to the
CSV's own folder.  macOS's ``__MACOSX/`` folders, ``._*`` and ``.DS_Store`` files are left out; any other
member that is not an image is refused.

The archive's safety (no absolute paths, no ``..``, no links or devices, member count and unpacked size
counted as they inflate) is checked by :func:`registry.uploads.archives.check_archive`, as for a pushed
SavedModel, before anything here reads it.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

EXPECTED_TXT = "expected.txt"
MAX_LABELS_BYTES = 16 * 1024**2  # an expected.txt or CSV
MAX_LABEL_CHARS = 1024
# How the project tells image formats apart (registry.serving.images.sniff), by their first bytes.
MAGIC = (("jpeg", (b"\xff\xd8",)), ("png", (b"\x89PNG\r\n\x1a\n",)), ("gif", (b"GIF87a", b"GIF89a")),
         ("bmp", (b"BM",)))
GZIP_MAGIC = b"\x1f\x8b"


def image_kind(head: bytes) -> str | None:
    """jpeg, png, gif or bmp from an image's first bytes; None for anything else."""
    for kind, prefixes in MAGIC:
        if head.startswith(prefixes):
            return kind
    return None


def skipped(path: PurePosixPath) -> bool:
    """What macOS adds to an archive it writes: not part of the set."""
    return path.parts[0] == "__MACOSX" or path.name.startswith("._") or path.name == ".DS_Store"


def is_labels_file(path: PurePosixPath) -> bool:
    return path.name == EXPECTED_TXT or path.suffix.lower() == ".csv"


@dataclass
class Member:
    path: PurePosixPath
    size: int
    open: Callable[[], BinaryIO]


def is_zip(head: bytes) -> bool:
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


@contextlib.contextmanager
def members(stream: BinaryIO, *, random_access: bool = False) -> Iterator[Iterator[Member]]:
    """The regular-file members of an archive already checked safe, in archive order.  With
    ``random_access`` a gzipped tar is first unpacked to a temporary file, so that members can be
    opened in any order (as the reader wants them: sorted)."""
    head = stream.read(4)
    stream.seek(0)
    with contextlib.ExitStack() as stack:
        if is_zip(head):
            archive = stack.enter_context(zipfile.ZipFile(stream))
            yield (Member(PurePosixPath(i.filename), i.file_size, lambda i=i: archive.open(i))
                   for i in archive.infolist() if not i.is_dir())
            return
        raw: BinaryIO = stream
        if head[:2] == GZIP_MAGIC:
            raw = stack.enter_context(gzip.GzipFile(fileobj=stream, mode="rb"))
            if random_access:
                spool = stack.enter_context(tempfile.TemporaryFile(prefix="registry-eval-"))
                shutil.copyfileobj(raw, spool, 1024 * 1024)
                spool.seek(0)
                raw = spool
        tar = stack.enter_context(tarfile.open(fileobj=raw, mode="r:"))
        yield (Member(PurePosixPath(*[p for p in PurePosixPath(i.name).parts if p not in ("", ".")]), i.size,
                      lambda i=i: tar.extractfile(i)) for i in tar if i.isfile())


@dataclass
class ImageIndex:
    """What an image archive holds: its images in the set's order and their expected labels."""

    images: list[PurePosixPath]
    kinds: dict[str, int]
    labels_file: PurePosixPath | None
    expected: list[str] | None


class ArchiveProblem(ValueError):
    """Something in the archive that makes it no evaluation set: the message names the member."""


def read_expected_txt(text: str, images: list[PurePosixPath], where: PurePosixPath) -> list[str]:
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    labels = []
    for number, line in enumerate(lines, 1):
        label = line.strip()
        if not label:
            raise ArchiveProblem(f"line {number} of {where} is empty: write one label per image, in sorted "
                                 "member order")
        labels.append(_label(label, f"line {number} of {where}"))
    if len(labels) != len(images):
        first = ", ".join(str(p) for p in images[:3])
        raise ArchiveProblem(f"{where} has {len(labels)} label(s) for {len(images)} image(s): write one label per "
                             f"image, in sorted member order (the first images are {first})")
    return labels


def read_csv(text: str, images: list[PurePosixPath], where: PurePosixPath) -> list[str]:
    known = set(images)
    folder = where.parent
    found: dict[PurePosixPath, str] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if number == 1 and [c.strip().lower() for c in row] == ["file", "label"]:
            continue
        if len(row) != 2:
            raise ArchiveProblem(f"row {number} of {where} has {len(row)} column(s): write file,label")
        name, label = row[0].strip(), row[1].strip()
        path = PurePosixPath(name)
        if path not in known:
            path = folder / name
        if path not in known:
            raise ArchiveProblem(f"row {number} of {where} names {name!r}, which is not an image in the archive")
        if path in found:
            raise ArchiveProblem(f"row {number} of {where} names {name!r} a second time")
        if not label:
            raise ArchiveProblem(f"row {number} of {where} has an empty label")
        found[path] = _label(label, f"row {number} of {where}")
    missing = [str(p) for p in images if p not in found]
    if missing:
        raise ArchiveProblem(f"{len(missing)} image(s) have no row in {where}, e.g. {', '.join(missing[:3])}: give "
                             "every image a file,label row")
    return [found[p] for p in images]


def _label(label: str, where: str) -> str:
    if len(label) > MAX_LABEL_CHARS:
        raise ArchiveProblem(f"{where} is longer than {MAX_LABEL_CHARS} characters: is it a label?")
    return label


def index_images(stream: BinaryIO) -> ImageIndex:
    """Read an archive's members once: which are images (by their first bytes), and the expected
    labels.  ArchiveProblem names the member that is wrong."""
    images: list[PurePosixPath] = []
    kinds: dict[str, int] = {}
    labels: list[tuple[PurePosixPath, bytes]] = []
    with members(stream) as found:
        for member in found:
            if skipped(member.path):
                continue
            with member.open() as handle:
                if is_labels_file(member.path):
                    text = handle.read(MAX_LABELS_BYTES + 1)
                    if len(text) > MAX_LABELS_BYTES:
                        raise ArchiveProblem(f"member {member.path} is larger than "
                                             f"{MAX_LABELS_BYTES // 2**20} MiB: is it a labels file?")
                    labels.append((member.path, text))
                    continue
                kind = image_kind(handle.read(16))
            if kind is None:
                raise ArchiveProblem(f"member {member.path} is not a JPEG, PNG, GIF or BMP image: take it out of "
                                     f"the archive (expected labels go in {EXPECTED_TXT} or a .csv file)")
            images.append(member.path)
            kinds[kind] = kinds.get(kind, 0) + 1
    images.sort(key=str)
    if len(labels) > 1:
        raise ArchiveProblem(f"the archive has {len(labels)} labels files ({', '.join(str(p) for p, _ in labels)}): "
                             f"keep one, {EXPECTED_TXT} or a .csv")
    expected = None
    where = labels[0][0] if labels else None
    if labels:
        try:
            text = labels[0][1].decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ArchiveProblem(f"member {where} is not UTF-8 text") from None
        expected = read_expected_txt(text, images, where) if where.name == EXPECTED_TXT \
            else read_csv(text, images, where)
    return ImageIndex(images, kinds, where, expected)
