"""Where the export goes: a TF Serving model base path, in a local folder or under an S3 prefix.

TF Serving loads SavedModels from ``<base_path>/<model>/<integer version>/``
(``saved_model.pb`` + ``variables/``) as soon as a version folder appears, so
a half-written one fails with "Read less bytes than requested".  Each target
therefore publishes a version all at once: a local folder is staged beside the
models and renamed into place; on S3 ``saved_model.pb`` is written last (and
deleted first).  :func:`reload_folder` decides which folders a reloaded config
may name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from registry.errors import Conflict, InvalidRequest

CONFIG_NAME = "models.config"
VERSION_DIR_RE = re.compile(r"^[0-9]+$")
STAGING = ".staging"  # inside the root (same file system, so a rename is atomic), never a model folder

class ExportTarget(ABC):
    """A TF Serving model base path: a local folder or an S3 prefix."""

    root: str

    @abstractmethod
    def exported(self) -> dict[str, dict[int, float]]:
        """Complete version folders and when each was published: {model: {version: unix time}}."""

    @abstractmethod
    def publish(self, model: str, version: int, saved_model_dir: Path) -> None:
        """Make ``saved_model_dir`` appear as ``<model>/<version>``, all at once."""

    @abstractmethod
    def remove(self, model: str, version: int) -> None: ...

    @abstractmethod
    def write_config(self, text: str) -> None: ...

    @abstractmethod
    def read_config(self) -> str | None: ...

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        yield


class LocalTarget(ExportTarget):
    def __init__(self, root: Path) -> None:
        self.path = root.resolve()
        self.root = str(self.path)

    def exported(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        if not self.path.is_dir():
            return out
        for model in self.path.iterdir():
            if model.name.startswith(".") or not model.is_dir():
                continue
            out[model.name] = {}
            for v in model.iterdir():
                if VERSION_DIR_RE.match(v.name):
                    with contextlib.suppress(FileNotFoundError):
                        out[model.name][int(v.name)] = (v / "saved_model.pb").stat().st_mtime
        return out

    def publish(self, model: str, version: int, saved_model_dir: Path) -> None:
        staging = self.path / STAGING / uuid.uuid4().hex
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(saved_model_dir, staging)
        (staging / "variables").mkdir(exist_ok=True)
        os.utime(staging / "saved_model.pb")  # its time is the version's export time
        final = self.path / model / str(version)
        final.parent.mkdir(exist_ok=True)
        if final.exists() and not (final / "saved_model.pb").is_file():
            self.remove(model, version)  # debris of an interrupted copy made by hand: replace it
            final.parent.mkdir(exist_ok=True)
        try:
            os.rename(staging, final)  # atomic: TF Serving sees no folder, then a complete one
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (final / "saved_model.pb").is_file():
                raise

    def remove(self, model: str, version: int) -> None:
        folder = self.path / model / str(version)
        trash = self.path / STAGING / f"removed-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(folder, trash)  # disappears at once, then deleted at leisure
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.path / model).rmdir()  # only when empty

    def write_config(self, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{CONFIG_NAME}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(text)
        os.replace(tmp, self.path / CONFIG_NAME)

    def read_config(self) -> str | None:
        try:
            return (self.path / CONFIG_NAME).read_text()
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".sync.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class S3Target(ExportTarget):
    """An S3 prefix.  A version counts as exported once its ``saved_model.pb`` exists,
    which is why that object is written last and deleted first."""

    def __init__(self, url: str) -> None:
        from registry.storage.s3 import make_client  # boto3 only where an S3 root is used

        parsed = urlparse(url)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.root = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.client = make_client()  # the blob storage's client: same configuration and retries

    def _key(self, *parts: str) -> str:
        return "/".join(([self.prefix] if self.prefix else []) + list(parts))

    def _objects(self, prefix: str) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _keys(self, prefix: str) -> Iterator[str]:
        return (item["Key"] for item in self._objects(prefix))

    def exported(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        base = self._key("")
        for item in self._objects(base):
            parts = item["Key"][len(base):].split("/")
            if len(parts) == 3 and parts[2] == "saved_model.pb" and VERSION_DIR_RE.match(parts[1]):
                out.setdefault(parts[0], {})[int(parts[1])] = item["LastModified"].timestamp()
        return out

    def publish(self, model: str, version: int, saved_model_dir: Path) -> None:
        files = sorted(p for p in saved_model_dir.rglob("*") if p.is_file())
        last = saved_model_dir / "saved_model.pb"
        for path in [p for p in files if p != last] + [last]:
            self.client.upload_file(str(path), self.bucket,
                                    self._key(model, str(version), path.relative_to(saved_model_dir).as_posix()))

    def remove(self, model: str, version: int) -> None:
        folder = self._key(model, str(version)) + "/"
        self.client.delete_object(Bucket=self.bucket, Key=folder + "saved_model.pb")
        keys = list(self._keys(folder))
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})

    def write_config(self, text: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(CONFIG_NAME), Body=text.encode())

    def read_config(self) -> str | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(CONFIG_NAME))["Body"].read().decode()
        except self.client.exceptions.NoSuchKey:
            return None


def open_target(root: str) -> ExportTarget:
    if not root:
        raise Conflict("no TensorFlow Serving export root is set: set REGISTRY_SERVING_EXPORT_ROOT "
                       "(a folder or s3://bucket/prefix) or pass --root", code="serving_export_not_configured")
    parsed = urlparse(root)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidRequest(f"invalid S3 export root {root!r}: use s3://bucket/prefix", code="bad_export_root")
        return S3Target(root)
    if parsed.scheme in ("", "file"):
        return LocalTarget(Path(parsed.path if parsed.scheme else root).expanduser())
    raise InvalidRequest(f"unsupported export root {root!r}: use a folder or s3://bucket/prefix",
                         code="bad_export_root")


def reload_folder(settings, base_path: str) -> Path | None:
    """Where a reloaded config's ``base_path`` lies on this machine (None: in the S3 export root).

    A config may only name model folders under the export root
    (``REGISTRY_SERVING_EXPORT_ROOT``, or the same place as TF Serving sees it,
    ``REGISTRY_SERVING_BASE_PATH``), compared after resolving ``..`` and
    symbolic links.  Anything else is refused with one message that depends
    only on the request, never on what exists on the server, so a reload
    cannot probe the server's files.
    """
    root = settings.serving_export_root
    if not root:
        raise InvalidRequest("this server has no TensorFlow Serving export root (REGISTRY_SERVING_EXPORT_ROOT), so "
                             "it takes no config naming model folders: set it to the root `registry export-serving` "
                             "writes", code="base_path_outside_export_root")
    refused = InvalidRequest(
        f"base_path {base_path!r} is outside this server's TensorFlow Serving export root: a config may only "
        "name model folders under REGISTRY_SERVING_EXPORT_ROOT (or under REGISTRY_SERVING_BASE_PATH, where "
        "TF Serving sees that root), as `registry export-serving` writes them",
        code="base_path_outside_export_root")
    seen_as = settings.serving_base_path
    parsed = urlparse(root)
    if parsed.scheme == "s3":
        if not any(_under(base, base_path) is not None for base in [root] + ([seen_as] if seen_as else [])):
            raise refused
        return None
    real_root = os.path.realpath(Path(parsed.path if parsed.scheme else root).expanduser())
    candidates = []
    if _split(base_path)[0] == "" and base_path.startswith("/"):  # an absolute path on this machine
        candidates.append(os.path.realpath(base_path))
    if seen_as and (rest := _under(seen_as, base_path)) is not None:
        candidates.append(os.path.realpath(os.path.join(real_root, rest)))
    for real in candidates:
        if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
            return Path(real)
    raise refused


def has_version(folder: Path, number: int) -> bool:
    """Whether ``folder`` (from :func:`reload_folder`) holds version ``number`` for TF Serving,
    itself inside ``folder`` (a symbolic link out of the root does not count)."""
    saved = os.path.realpath(folder / str(number) / "saved_model.pb")
    return saved.startswith(f"{folder}{os.sep}") and os.path.isfile(saved)


def _split(location: str) -> tuple[str, str]:
    """(``scheme://host`` or "", normalised absolute path or "" when relative) of a URL or POSIX path."""
    if "://" in location:
        parsed = urlparse(location)
        return f"{parsed.scheme}://{parsed.netloc}", posixpath.normpath("/" + parsed.path.lstrip("/"))
    return "", posixpath.normpath(location) if location.startswith("/") else ""


def _under(base: str, location: str) -> str | None:
    """``location`` relative to ``base`` ("" for ``base`` itself), or None when it is not under it."""
    (base_origin, base_dir), (origin, folder) = _split(base), _split(location)
    if origin != base_origin or not base_dir or not folder:
        return None
    if folder == base_dir:
        return ""
    prefix = base_dir.rstrip("/") + "/"
    return folder[len(prefix):] if folder.startswith(prefix) else None
