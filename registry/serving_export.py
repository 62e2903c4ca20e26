"""TensorFlow Serving export: the registry as the source of truth TF Serving reads.

TF Serving loads SavedModels from ``<base_path>/<model>/<integer version>/``
(``saved_model.pb`` + ``variables/``), loads a version folder as soon as it
appears (so a half-written one fails with "Read less bytes than requested"),
refuses a ``version_labels`` entry for a version it has not loaded, and
unloads every model a reloaded config leaves out.  So:

* :func:`plan` decides, per model, which versions to serve (the model's
  ``served_versions`` setting, by default every aliased version plus the
  newest ready one) and which aliases can be labels;
* :func:`sync` publishes each served version atomically (staged elsewhere and
  renamed into place; on S3 ``saved_model.pb`` is written last), writes
  ``models.config`` next to the exported models, then removes versions that
  are no longer served (deleted, alias moved away, setting changed).  It only
  looks at what the catalog says now, so running it again is harmless;
* :func:`models_config` writes the ``ModelServerConfig`` text proto by hand
  (no TensorFlow in this module: the web app imports it), labels only for
  versions already exported.

:class:`ExportSyncer` runs :func:`sync` in the background whenever a version
becomes ready, an alias moves or the setting changes
(``REGISTRY_SERVING_EXPORT_ROOT``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2  # protos only: no TensorFlow

from registry import catalog, safety
from registry.archives import ArchiveLimits, safe_extract
from registry.db import Database
from registry.entities import READY, VersionInfo
from registry.errors import Conflict, InvalidRequest, NotFound
from registry.storage import BlobStorage

log = logging.getLogger(__name__)

CONFIG_NAME = "models.config"
LABEL_RE = re.compile(r"^[a-zA-Z0-9_]+$")
# TF Serving takes the name as a path component of base_path and of its REST URLs.
SERVABLE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
VERSION_DIR_RE = re.compile(r"^[0-9]+$")
STAGING = ".staging"  # inside the root (same file system, so a rename is atomic), never a model folder


@dataclass
class ModelPlan:
    """What one model contributes to TF Serving."""

    name: str
    setting: list[int] | str | None  # the model's served_versions: a list, "all", or None: the default
    versions: list[int] = field(default_factory=list)  # to export and serve
    aliases: dict[str, int] = field(default_factory=dict)  # every alias of the model
    labels: dict[str, int] = field(default_factory=dict)  # filled by models_config: emitted labels
    skipped_versions: list[dict] = field(default_factory=list)  # {"version", "reason"}
    skipped_aliases: list[dict] = field(default_factory=list)  # {"alias", "version", "reason"}
    skipped: str | None = None  # the whole model is left out, and why
    exported: list[int] = field(default_factory=list)  # filled by models_config
    held: list[dict] = field(default_factory=list)  # labels kept on a version while the new one loads
    wait: float | None = None  # seconds until a withheld label can move

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "served_versions_setting": self.setting,
            "versions": self.versions,
            "exported_versions": self.exported,
            "labels": self.labels,
            "skipped_versions": self.skipped_versions,
            "skipped_aliases": self.skipped_aliases,
            "held_labels": self.held,
            "skipped": self.skipped,
        }


def _all_models(db: Database) -> Iterator:
    token = None
    while True:
        page = catalog.list_models(db, page_size=catalog.MAX_PAGE_SIZE, page_token=token)
        yield from page.items
        token = page.next_page_token
        if not token:
            return


def _all_ready(db: Database, name: str) -> Iterator[VersionInfo]:
    token = None
    while True:
        page = catalog.list_versions(db, name, page_size=catalog.MAX_PAGE_SIZE, page_token=token, status=READY,
                                     summary=True)
        yield from page.items
        token = page.next_page_token
        if not token:
            return


def plan(db: Database) -> list[ModelPlan]:
    """Which versions of which models TF Serving should serve, from the catalog as it is now."""
    plans = []
    for model in _all_models(db):
        setting = model.served_versions
        p = ModelPlan(model.name, setting, aliases=dict(model.aliases))
        plans.append(p)
        if not SERVABLE_NAME_RE.match(model.name):
            p.skipped = "TensorFlow Serving needs a name of letters, digits, '_', '-' and '.' not starting with '.'"
            continue
        if setting is None:
            wanted = set(model.aliases.values()) | ({model.latest_version} if model.latest_version else set())
        elif setting == "all":
            wanted = {v.version for v in _all_ready(db, model.name)}
        else:
            wanted = set(setting)
        for number in sorted(wanted):
            try:
                version = catalog.get_version(db, model.name, str(number))
            except NotFound:  # deleted meanwhile
                p.skipped_versions.append({"version": number, "reason": "the version does not exist"})
                continue
            if version.status != READY:
                p.skipped_versions.append({"version": number, "reason": f"the version is {version.status}"})
            elif reason := safety.refusal(version):  # the same decision as the label service's
                p.skipped_versions.append({"version": number, "reason": reason})
            else:
                p.versions.append(number)
        if not p.versions:
            p.skipped = "no version to serve" + (" (served_versions names none that is ready)" if setting else "")
    return plans


def models_config(plans: list[ModelPlan], exported: dict[str, dict[int, float]], base_path: str, *,
                  label_delay: float = 0.0, previous: dict[str, dict[str, int]] | None = None,
                  now: float | None = None) -> str:
    """The ``ModelServerConfig`` text proto for the exported versions of ``plans``.

    ``exported`` maps each model to its exported versions and when each was
    exported.  A model's ``versions`` are those served and already exported; a
    label is emitted only for an alias spelled ``[a-zA-Z0-9_]+`` whose version
    is among them and was exported at least ``label_delay`` seconds ago (time
    for a polling TF Serving to load it).  Until then the label stays on the
    version ``previous`` (the config written last) gave it, which is kept.
    Fills each plan's ``exported``, ``labels``, ``held`` and ``skipped_aliases``.
    """
    now = time.time() if now is None else now
    previous = previous or {}
    base = base_path.rstrip("/")
    config = model_server_config_pb2.ModelServerConfig()
    models = config.model_config_list
    models.SetInParent()  # an empty list is still written: a reload with it unloads every model
    for p in plans:
        times = exported.get(p.name, {})
        serving = {v for v in p.versions if v in times}
        p.labels, p.held, p.skipped_aliases = {}, [], []
        for alias, number in sorted(p.aliases.items()):
            if not LABEL_RE.match(alias):
                reason = "TensorFlow Serving labels may only use letters, digits and '_'"
            elif number in serving and now - times[number] >= label_delay:
                p.labels[alias] = number
                continue
            elif p.skipped is not None:
                reason = f"the model is not served ({p.skipped})"
            elif number not in p.versions:
                reason = f"version {number} is not served"
            elif number not in serving:
                reason = f"version {number} is not exported yet"
            else:
                wait = label_delay - (now - times[number])
                reason = (f"version {number} was exported {now - times[number]:.0f} s ago; the label follows in "
                          f"{wait:.0f} s (REGISTRY_SERVING_LABEL_DELAY), once TF Serving has loaded it")
                p.wait = min(p.wait or wait, wait)
                before = previous.get(p.name, {}).get(alias)
                if before is not None and before != number and before in times:
                    p.labels[alias] = before  # stays where TF Serving has it loaded until then
                    p.held.append({"alias": alias, "version": before, "moving_to": number})
                    continue
            p.skipped_aliases.append({"alias": alias, "version": number, "reason": reason})
        p.exported = sorted(serving | {h["version"] for h in p.held})
        if not p.exported:
            continue
        model = models.config.add(name=p.name, base_path=f"{base}/{p.name}", model_platform="tensorflow")
        model.model_version_policy.specific.versions.extend(p.exported)
        for alias, number in p.labels.items():
            model.version_labels[alias] = number
    return text_format.MessageToString(config)


def config_labels(text: str | None) -> dict[str, dict[str, int]]:
    """The version labels of a models.config: {model: {label: version}} (unreadable text: none)."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text or "", config)
    except text_format.ParseError:
        return {}
    return {m.name: dict(m.version_labels) for m in config.model_config_list.config}


# -- where the export goes ------------------------------------------------------------------

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
        import fcntl

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


# -- syncing -----------------------------------------------------------------------------------

@dataclass
class SyncReport:
    root: str
    config_path: str
    models: list[ModelPlan]
    published: list[str] = field(default_factory=list)  # "model/version"
    removed: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"version": "model/version", "error"}
    config: str = ""
    retry_after: float | None = None  # a label waits for a version to load: sync again after this

    def to_dict(self) -> dict:
        return {"root": self.root, "config_path": self.config_path, "published": self.published,
                "removed": self.removed, "failed": self.failed, "models": [m.to_dict() for m in self.models]}


def config_for(db: Database, root: str, base_path: str | None = None,
               label_delay: float = 0.0) -> tuple[str, list[ModelPlan]]:
    """The models.config for what is exported under ``root`` now (nothing is written)."""
    target = open_target(root)
    plans = plan(db)
    text = models_config(plans, target.exported(), base_path or target.root, label_delay=label_delay,
                         previous=config_labels(target.read_config()))
    return text, plans


_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(root: str) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(root, threading.Lock())


def sync(settings, db: Database, storage: BlobStorage, root: str | None = None,
         base_path: str | None = None) -> SyncReport:
    """Make ``root`` hold exactly the served versions, and its models.config describe them."""
    from registry.worker import build_saved_model  # the converter's parent side: no TensorFlow here

    target = open_target(root or settings.serving_export_root)
    base = base_path or settings.serving_base_path or target.root
    with _process_lock(target.root), target.lock():
        plans = plan(db)
        exported = target.exported()
        report = SyncReport(target.root, f"{target.root}/{CONFIG_NAME}", plans)
        for p in plans:
            for number in p.versions:
                if number in exported.get(p.name, {}):
                    continue
                try:
                    version = catalog.get_version(db, p.name, str(number))
                    saved = build_saved_model(settings, db, storage, version)
                    with tempfile.TemporaryDirectory(prefix="serving-export-") as tmp:
                        archive = Path(tmp) / "saved_model.tar.gz"
                        storage.materialize(saved.sha256, archive)
                        folder = Path(tmp) / "saved_model"
                        safe_extract(archive, folder, ArchiveLimits())
                        target.publish(p.name, number, folder)
                    exported.setdefault(p.name, {})[number] = time.time()
                    report.published.append(f"{p.name}/{number}")
                except Exception as exc:  # one bad version must not stop the others
                    log.exception("exporting %s v%d failed", p.name, number)
                    report.failed.append({"version": f"{p.name}/{number}", "error": str(exc)})
        report.config = models_config(plans, exported, base, label_delay=settings.serving_label_delay,
                                      previous=config_labels(target.read_config()))
        target.write_config(report.config)
        # Only now that the config no longer names them: versions that are not served any more
        # (kept while a label still points at them).
        wanted = {(p.name, v) for p in plans for v in p.versions + [h["version"] for h in p.held]}
        waits = [p.wait for p in plans if p.wait is not None]
        report.retry_after = max(0.5, min(waits)) if waits else None
        for model, numbers in sorted(exported.items()):
            for number in sorted(numbers):
                if (model, number) not in wanted:
                    target.remove(model, number)
                    report.removed.append(f"{model}/{number}")
    log.info("serving export %s: %d published, %d removed, %d failed", target.root, len(report.published),
             len(report.removed), len(report.failed))
    return report


class ExportSyncer:
    """Runs :func:`sync` in a background thread after each change; changes that
    arrive during a sync cause one more sync afterwards, never two at once."""

    def __init__(self, settings, db: Database, storage: BlobStorage) -> None:
        self.settings, self.db, self.storage = settings, db, storage
        self._pending = False
        self._running = False
        self._cond = threading.Condition()
        self.last_report: SyncReport | None = None
        self.last_error: str | None = None

    def request(self) -> None:
        with self._cond:
            self._pending = True
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._loop, name="serving-export", daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    self._running = False
                    self._cond.notify_all()
                    return
                self._pending = False
            try:
                self.last_report = sync(self.settings, self.db, self.storage)
                self.last_error = None
                if self.last_report.retry_after is not None:
                    timer = threading.Timer(self.last_report.retry_after + 0.5, self.request)
                    timer.daemon = True
                    timer.start()
            except Exception as exc:
                log.exception("serving export sync failed")
                self.last_error = f"{type(exc).__name__}: {exc}"

    def wait_idle(self, timeout: float = 120.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._running and not self._pending, timeout)
