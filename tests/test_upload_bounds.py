"""Memory and file handles a push may take are bounded before the work starts.

Each hostile request goes to a real `registry serve` process over a socket; the
test asserts the 4xx, that the server answers a normal push right after, and
measures what the bound is about: the server's peak resident memory (VmHWM) or
its open file descriptors (/proc/PID/fd).
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from registry.uploads.archives import (
    MAX_TAR_HEADER_BYTES,
    ArchiveLimits,
    check_archive,
    check_saved_model_archive,
    safe_extract,
)
from registry.errors import InvalidUpload

MiB = 1024 * 1024
INDEX_MAGIC = bytes.fromhex("57fb808b247547db")


def graph_def(*, variable: bool = False) -> bytes:
    """The smallest GraphDef the push checks accept: one Placeholder node (and a VariableV2 node, which
    an inference graph pushed with a checkpoint must have: one without variables is refused)."""
    node = b"\x0a\x01x" + b"\x12\x0bPlaceholder"
    graph = b"\x0a" + bytes([len(node)]) + node
    if variable:
        node = b"\x0a\x01w" + b"\x12\x0aVariableV2"
        graph += b"\x0a" + bytes([len(node)]) + node
    return graph


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`registry serve` (no converter, no demo) in its own process."""

    def __init__(self, home: Path) -> None:
        self.home = home
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.update(REGISTRY_HOME=str(home), REGISTRY_DEMO="0", REGISTRY_GC_INTERVAL_SECONDS="0")
        home.mkdir(parents=True)
        with open(home / "serve.log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "serve", "--port", str(port),
                                          "--workers", "0", "--no-demo"], env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "registry serve did not start"
            time.sleep(0.1)

    def log(self) -> str:
        return (self.home / "serve.log").read_text(errors="replace")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def staged(self) -> list[Path]:
        return list((self.home / "blobs" / ".staging").iterdir())

    def push_ok(self) -> None:
        """The server still takes a normal push."""
        answer = requests.post(f"{self.url}/api/v1/models/fine/versions", files={"frozen": ("f.pb", graph_def())},
                               timeout=30)
        assert answer.status_code == 202, answer.text

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def served(tmp_path):
    server = Served(tmp_path / "home")
    try:
        server.push_ok()  # warm: the code paths of a push are loaded before anything is measured
        yield server
    finally:
        server.stop()


class RawPost:
    """A POST over a plain socket: the body is sent from a thread for as long as the server
    reads it, while the response is read as soon as it comes (before the body is finished)."""

    def __init__(self, url: str, path: str, content_type: str, length: int, chunks: Iterable[bytes]) -> None:
        parsed = urlparse(url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=120)
        head = (f"POST {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {length}\r\n\r\n").encode()
        self.sent = 0
        self.sender = threading.Thread(target=self._send, args=(head, chunks), daemon=True)
        self.sender.start()

    def _send(self, head: bytes, chunks: Iterable[bytes]) -> None:
        try:
            self.sock.sendall(head)
            for chunk in chunks:
                self.sock.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            pass  # the server answered and stopped reading

    def response(self) -> tuple[int, str]:
        data = b""
        while b"\r\n\r\n" not in data:
            more = self.sock.recv(65536)
            assert more, f"the connection closed without a response ({data!r})"
            data += more
        head, body = data.split(b"\r\n\r\n", 1)
        status = int(head.split()[1])
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        while length is not None and len(body) < length:
            more = self.sock.recv(65536)
            if not more:
                break
            body += more
        return status, body.decode("utf-8", "replace")

    def close(self) -> None:
        self.sock.close()
        self.sender.join(timeout=30)


def repeated(piece: bytes, total: int) -> Iterator[bytes]:
    chunk = piece * max(1, MiB // len(piece))
    while total > 0:
        yield chunk[:total]
        total -= len(chunk)


# -- archive headers -------------------------------------------------------------------

def _tar_header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.USTAR_FORMAT)


def tar_gz_with_huge_header(path: Path, kind: bytes, size: int) -> Path:
    """A .tar.gz whose first member carries an extended header of ``size`` bytes (a PAX
    comment record or a GNU long name), written as a stream: a few hundred KB on disk."""
    with gzip.open(path, "wb", compresslevel=9) as gz:
        gz.write(_tar_header("././@LongHeader", kind, size))
        if kind == tarfile.XHDTYPE:
            prefix = f"{size} comment=".encode()
            gz.write(prefix)
            for chunk in repeated(b"a", size - len(prefix) - 1):
                gz.write(chunk)
            gz.write(b"\n")
        else:
            for chunk in repeated(b"a", size):
                gz.write(chunk)
        gz.write(b"\0" * (-size % 512))
        gz.write(_tar_header("saved_model.pb", tarfile.REGTYPE, 1) + b"x" + b"\0" * 511 + b"\0" * 1024)
    return path


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "gnu-long-name"])
def test_a_huge_tar_header_is_refused_before_it_is_read_and_memory_stays_bounded(served, tmp_path, kind):
    archive = tar_gz_with_huge_header(tmp_path / "huge.tar.gz", kind, 256 * MiB)
    assert archive.stat().st_size < MiB  # 256 MiB of header in a small upload
    before = served.peak_rss_mb()
    answer = requests.post(f"{served.url}/api/v1/models/evil/versions",
                           files={"saved_model": ("model.tar.gz", archive.read_bytes())}, timeout=120)
    grown = served.peak_rss_mb() - before
    assert answer.status_code == 400, answer.text
    assert "extended header" in answer.json()["error"]["message"]
    assert grown < 48, f"the server's peak memory grew by {grown:.0f} MB"
    served.push_ok()
    assert requests.get(f"{served.url}/api/v1/models/evil", timeout=10).status_code == 404


def _pax_tar(records: dict[str, str], members: list[tuple[str, bytes]], *, global_: bool = False) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT,
                      pax_headers=records if global_ else None) as tar:
        for i, (name, data) in enumerate(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if not global_ and i == 0:
                info.pax_headers = dict(records)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_extended_headers_count_toward_the_archive_byte_limit(tmp_path):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_pax_tar({"comment": "c" * 40_000}, [("saved_model.pb", b"x")]))
    check_saved_model_archive(path, ArchiveLimits(max_bytes=50_000))
    with pytest.raises(InvalidUpload, match="extended headers count too"):
        check_saved_model_archive(path, ArchiveLimits(max_bytes=30_000))


def test_many_large_extended_headers_are_refused_once_they_add_up(tmp_path):
    path = tmp_path / "many.tar.gz"
    members = [(f"assets/{i}", b"") for i in range(300)]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, _ in members:
            info = tarfile.TarInfo(name)
            info.pax_headers = {"comment": "c" * (MAX_TAR_HEADER_BYTES - 100)}
            tar.addfile(info, io.BytesIO(b""))
    path.write_bytes(out.getvalue())
    with pytest.raises(InvalidUpload, match="extended headers .* take more than 16 MiB"):
        check_archive(path, ArchiveLimits())


@pytest.mark.parametrize("case, expected", [
    ("pax size hides a header", "extended header .* of 1048576 bytes"),
    ("global size", "global PAX header sets a size"),
    ("sparse", "sparse"),
    ("header chain", "extended headers in a row"),
    ("folder with data", "declares 1024 bytes"),
])
def test_tar_tricks_that_would_desynchronise_the_check_are_refused(tmp_path, case, expected):
    path = tmp_path / "trick.tar.gz"
    if case == "pax size hides a header":
        # The member's own header says 512 bytes of data follow, its PAX record says 0: tarfile
        # goes by the PAX size and reads the next block as a header (a huge PAX header).
        pax = b"10 size=0\n"
        raw = (_tar_header("pax", tarfile.XHDTYPE, len(pax)) + pax.ljust(512, b"\0")
               + _tar_header("saved_model.pb", tarfile.REGTYPE, 512)
               + _tar_header("pax", tarfile.XHDTYPE, MiB) + b"\0" * 1024)
        with gzip.open(path, "wb") as gz:
            gz.write(raw)
    elif case == "global size":
        path.write_bytes(_pax_tar({"size": "0"}, [("saved_model.pb", b"x" * 600)], global_=True))
    elif case == "sparse":
        path.write_bytes(_pax_tar({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}, [("saved_model.pb", b"x")]))
    elif case == "header chain":
        pax = b"13 comment=x\n"
        one = _tar_header("pax", tarfile.XHDTYPE, len(pax)) + pax.ljust(512, b"\0")
        with gzip.open(path, "wb") as gz:
            gz.write(one * 20 + _tar_header("saved_model.pb", tarfile.REGTYPE, 0) + b"\0" * 1024)
    else:
        with gzip.open(path, "wb") as gz:
            gz.write(_tar_header("variables", tarfile.DIRTYPE, 1024) + b"\0" * 1024
                     + _tar_header("saved_model.pb", tarfile.REGTYPE, 0) + b"\0" * 1024)
    with pytest.raises(InvalidUpload, match=expected):
        check_saved_model_archive(path, ArchiveLimits())


def test_archives_written_by_gnu_tar_and_python_still_pass(tmp_path):
    src = tmp_path / "export"
    deep = src / "assets" / ("d" * 120)
    deep.mkdir(parents=True)
    (src / "variables").mkdir()
    (src / "saved_model.pb").write_bytes(b"pb")
    (src / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(70_000))
    (deep / ("f" * 150)).write_bytes(b"long name")
    names = {"saved_model.pb", "variables/variables.data-00000-of-00001", f"assets/{'d' * 120}/{'f' * 150}"}
    for fmt in ("gnu", "pax", "posix"):
        archive = tmp_path / f"{fmt}.tar.gz"
        subprocess.run(["tar", f"--format={fmt}", "-czf", str(archive), "-C", str(src), "."], check=True)
        found = {str(p) for p in check_archive(archive, ArchiveLimits())}
        assert names <= found, (fmt, found)
        extracted = safe_extract(archive, tmp_path / f"out-{fmt}", ArchiveLimits())
        assert extracted == check_archive(archive, ArchiveLimits())
        assert (tmp_path / f"out-{fmt}" / "variables" / "variables.data-00000-of-00001").read_bytes() == \
            (src / "variables" / "variables.data-00000-of-00001").read_bytes()
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        archive = tmp_path / f"py-{fmt}.tar.gz"
        with tarfile.open(archive, "w:gz", format=fmt) as tar:
            tar.add(src, arcname="model")
        assert {f"model/{n}" for n in names} <= {str(p) for p in check_archive(archive, ArchiveLimits())}


def test_a_zip_whose_central_directory_outgrows_its_members_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "wide.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("saved_model.pb", b"x")
        for i in range(3):
            archive.writestr(f"assets/{i:04d}" + "n" * 2000, b"")
    with pytest.raises(InvalidUpload, match="central directory takes"):
        check_archive(path, ArchiveLimits(max_files=4))
    assert len(check_archive(path, ArchiveLimits(max_files=10))) == 4


# -- multipart headers -----------------------------------------------------------------------

BOUNDARY = "b0undary"
SENT = 128 * MiB


def _endless_part_header() -> Iterator[bytes]:
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"frozen\"; filename=\"").encode()
    yield from repeated(b"a", SENT)


def _endless_preamble() -> Iterator[bytes]:
    yield from repeated(b"not a boundary ", SENT)


def _endless_epilogue() -> Iterator[bytes]:
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"frozen\"; filename=\"f.pb\"\r\n\r\n").encode()
    yield graph_def()
    yield f"\r\n--{BOUNDARY}--\r\n".encode()
    yield from repeated(b"trailing ", SENT)


@pytest.mark.parametrize("body, what", [(_endless_part_header, "headers of one part"),
                                         (_endless_preamble, "preamble"),
                                         (_endless_epilogue, "epilogue")],
                         ids=["part header", "preamble", "epilogue"])
def test_a_multipart_header_line_without_end_is_refused_and_memory_stays_bounded(served, body, what):
    before = served.peak_rss_mb()
    post = RawPost(served.url, "/api/v1/models/evil/versions", f"multipart/form-data; boundary={BOUNDARY}",
                   SENT + 4096, body())
    try:
        status, text = post.response()
    finally:
        post.close()
    grown = served.peak_rss_mb() - before
    assert status == 400, text
    assert what in text and "64 KiB" in text, text
    assert post.sent < SENT // 2, "the server read the whole body before refusing it"
    assert grown < 32, f"the server's peak memory grew by {grown:.0f} MB"
    served.push_ok()
    assert served.staged() == []


# -- parts and open files -------------------------------------------------------------------------

def _data_parts(count: int, of: int) -> Iterator[bytes]:
    for i in range(count):
        yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"; "
               f"filename=\"model.ckpt.data-{i:05d}-of-{of:05d}\"\r\n\r\n").encode() + b"s" * 8192 + b"\r\n"


def test_slow_pushes_with_many_parts_hold_one_open_file_each(served):
    baseline = served.open_fds()
    staging = str(served.home / "blobs" / ".staging")
    posts = []
    try:
        for _ in range(3):  # three pushes that send 200 parts each, then stall before the end
            posts.append(RawPost(served.url, "/api/v1/models/slow/versions",
                                 f"multipart/form-data; boundary={BOUNDARY}", 10 * MiB, _data_parts(200, 200)))
        deadline = time.monotonic() + 60
        while len(served.staged()) < 3 * 180:  # the server reads in 256 KiB chunks: the last few wait
            assert time.monotonic() < deadline, f"only {len(served.staged())} parts arrived"
            time.sleep(0.1)
        part_files = [fd for fd in os.listdir(f"/proc/{served.proc.pid}/fd")
                      if os.readlink(f"/proc/{served.proc.pid}/fd/{fd}").startswith(staging)]
        assert len(part_files) <= 3, f"three stalled pushes of 200 parts hold {len(part_files)} part files open"
        held = served.open_fds() - baseline  # their sockets and pooled database connections too
        assert held <= 20, f"three stalled pushes of 200 parts hold {held} more descriptors"
    finally:
        for post in posts:
            post.close()  # the clients hang up: the server drops what they sent
    deadline = time.monotonic() + 30
    while served.staged():
        assert time.monotonic() < deadline, f"{len(served.staged())} staged parts left behind"
        time.sleep(0.1)
    served.push_ok()
    assert served.open_fds() <= baseline + 20


def test_a_push_with_more_parts_than_the_limit_is_refused_naming_it(served):
    files = [("data", (f"model.ckpt.data-{i:05d}-of-02000", b"x")) for i in range(2000)]
    answer = requests.post(f"{served.url}/api/v1/models/many/versions", files=files, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "too_many_parts"
    assert "more than 256 parts" in error["message"] and "REGISTRY_MAX_UPLOAD_PARTS" in error["message"]
    assert served.staged() == []
    served.push_ok()


def test_a_checkpoint_with_two_hundred_shards_still_fits(served):
    files = [("graph", ("graph.pb", graph_def(variable=True))), ("index", ("model.ckpt.index", b"index" + INDEX_MAGIC))]
    files += [("data", (f"model.ckpt.data-{i:05d}-of-00200", b"shard")) for i in range(200)]
    answer = requests.post(f"{served.url}/api/v1/models/sharded/versions", files=files,
                           data={"output_nodes": "x", "description": "many shards"}, timeout=60)
    assert answer.status_code == 202, answer.text
    assert [f["role"] for f in answer.json()["files"]].count("data") == 200


def test_the_parts_limit_is_a_setting(tmp_path):
    from registry.app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path / "home", max_upload_parts=3))
    client = app.test_client()
    form = {"graph": (io.BytesIO(graph_def()), "g.pb"), "index": (io.BytesIO(b"i" + INDEX_MAGIC), "model.ckpt.index"),
            "data": [(io.BytesIO(b"d"), f"model.ckpt.data-0000{i}-of-00002") for i in range(2)]}
    answer = client.post("/api/v1/models/m/versions", data=form, content_type="multipart/form-data")
    assert answer.status_code == 400 and "more than 3 parts" in answer.get_json()["error"]["message"]
    app.extensions["registry"].db.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_a_file_name_longer_than_the_database_keeps_is_a_400(client):
    answer = client.post("/api/v1/models/m/versions", content_type="multipart/form-data",
                         data={"frozen": (io.BytesIO(graph_def()), "f" * 300 + ".pb")})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "invalid_filename"
    assert client.get("/api/v1/models/m").status_code == 404


# -- archives on storage without a local staging file ------------------------------------------------

def test_an_archive_on_s3_is_checked_before_anything_is_published(s3_server, tmp_path, monkeypatch):
    from registry.app import create_app
    from tests.conftest import S3_BUCKET, make_settings

    prefix = f"bounds-{os.getpid()}-{time.monotonic_ns()}"
    app = create_app(make_settings(tmp_path / "home", storage_url=f"s3://{S3_BUCKET}/{prefix}"))
    client = app.test_client()
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    hostile = _pax_tar({}, [("saved_model.pb", b"x"), ("../outside", b"x")])
    good = _pax_tar({}, [("saved_model.pb", b"x")])
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(spool_dir))  # where the archive is spooled for its check
    try:
        refused = client.post("/api/v1/models/s3/versions", content_type="multipart/form-data", data={
            "saved_model": (io.BytesIO(hostile), "m.tar.gz"), "labels": (io.BytesIO(b"cat\n"), "labels.txt")})
        assert refused.status_code == 400 and "outside the archive" in refused.get_json()["error"]["message"]
        assert s3_server.list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix).get("KeyCount", 0) == 0
        accepted = client.post("/api/v1/models/s3/versions", content_type="multipart/form-data",
                               data={"saved_model": (io.BytesIO(good), "m.tar.gz")})
        assert accepted.status_code == 202, accepted.get_json()
        assert list(spool_dir.iterdir()) == []
    finally:
        app.extensions["registry"].db.dispose()
