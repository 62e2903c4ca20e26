"""TF Serving base paths into the registry: what ``registry model-server`` serves.

Each version folder a model's policy serves (``registry.tfserving.sources``) is
pushed once, as a SavedModel archive through the real push path, with its
folder's number as its version number, and converted (frozen, verified, scanned)
like any push; the model's version labels become aliases once their versions are
ready.  Polling again picks up the folders written since.  Nothing here deletes:
a version whose folder goes away, or that the policy no longer chooses, stays in
the registry and answers when asked for by number.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from registry import catalog
from registry.converter.saved_model import write_archive
from registry.entities import FAILED, READY, VersionInfo
from registry.errors import NotFound, RegistryError
from registry.tfserving.sources import SAVED_MODEL_FILES, ModelSource, version_folders
from registry.uploads.local import push_paths

log = logging.getLogger(__name__)


def no_versions(source: ModelSource) -> str:
    """What to say of a base path with no version folder: TF Serving's words, and what to do."""
    base = Path(source.base_path)
    if any((base / name).is_file() for name in SAVED_MODEL_FILES):
        return (f"No versions of servable {source.name} found under base path {base}: it holds a SavedModel "
                f"itself; TF Serving reads one folder per version under it: move it to {base / '1'}")
    if any(base.glob("[0-9]*/model.tflite")):
        return (f"No versions of servable {source.name} found under base path {base}: its version folders hold TF "
                "Lite models (model.tflite), which the registry does not serve: put the SavedModel each was "
                "converted from (saved_model.pb, variables/) in its folder")
    return (f"No versions of servable {source.name} found under base path {base}: it needs one folder per version, "
            "named by its number (1, 2, 00000123), each holding saved_model.pb; new ones are picked up as they come")


class FolderImport:
    """Keeps the registry's versions of ``sources`` in step with their base paths."""

    def __init__(self, registry, sources: list[ModelSource]) -> None:
        self.registry = registry
        self.sources = list(sources)
        self._seen: set[tuple[str, int]] = set()  # in the registry, or refused once (said once, not each poll)
        self._said: set[tuple[str, str]] = set()
        self.labels_pending = True  # a version label may still wait for its version to be ready

    def sync(self) -> list[VersionInfo]:
        """Push every chosen version folder not in the registry yet; the versions pushed now."""
        pushed = []
        for source in self.sources:
            folders, unnumbered = version_folders(source.base_path)
            if not folders:
                self._say_once(source.name, no_versions(source))
            for name in unnumbered:
                self._say_once(source.name, f"model {source.name!r}: version folder {name} left out: registry "
                               "versions are numbered 1 to 2147483647")
            for number, folder in sorted(source.chosen(folders).items()):
                if (source.name, number) in self._seen:
                    continue
                self._seen.add((source.name, number))
                if self._exists(source.name, number):
                    continue
                try:
                    pushed.append(self._push(source.name, number, folder))
                except RegistryError as exc:
                    log.error("model %r version %d (%s) not imported: %s", source.name, number, folder, exc.message)
        self.labels_pending = self.labels_pending or bool(pushed)  # a label may name one of them
        return pushed

    def _say_once(self, name: str, message: str) -> None:
        if (name, message) not in self._said:
            self._said.add((name, message))
            log.warning("%s", message)

    def _exists(self, name: str, number: int) -> bool:
        try:
            catalog.get_version(self.registry.db, name, str(number))
        except NotFound:
            return False
        return True

    def _push(self, name: str, number: int, folder: Path) -> VersionInfo:
        with tempfile.TemporaryDirectory(prefix="registry-import-") as tmp:
            archive = Path(tmp) / f"{number}.tar.gz"
            write_archive(folder, archive)
            version = push_paths(self.registry, name, [("saved_model", archive)], version=number,
                                 description=f"imported from {folder}")
        self.registry.notify_workers()
        log.info("model %r version %d: importing %s", name, number, folder)
        return version

    def wait(self, versions: list[VersionInfo], timeout: float) -> list[VersionInfo]:
        """Wait until each of ``versions`` is ready or failed (or ``timeout`` seconds); their records then."""
        deadline = time.monotonic() + timeout
        done: dict[int, VersionInfo] = {}
        while len(done) < len(versions) and time.monotonic() < deadline:
            for v in versions:
                if v.id not in done:
                    now = catalog.get_version(self.registry.db, v.model, str(v.version))
                    if now.status in (READY, FAILED):
                        done[v.id] = now
                        if now.status == FAILED:
                            log.error("model %r version %d failed to load: %s", now.model, now.version,
                                      now.status_message)
            if len(done) < len(versions):
                time.sleep(0.05)
        return [done.get(v.id, v) for v in versions]

    def replace_sources(self, sources: list[ModelSource]) -> None:
        """A new config: its models are looked for at the next :meth:`sync`, its labels set once ready."""
        self.sources = list(sources)
        self.labels_pending = True

    def apply_labels(self) -> None:
        """Point each model's version labels (aliases) at their versions, where those are ready;
        ``labels_pending`` says whether one still waits for its version to convert."""
        self.labels_pending = False
        for source in self.sources:
            for label, number in source.labels.items():
                try:
                    current = catalog.get_version(self.registry.db, source.name, label)
                    if current.version == number:
                        continue
                except NotFound:
                    pass
                try:
                    version = catalog.get_version(self.registry.db, source.name, str(number))
                except NotFound:
                    self._say_once(source.name, f"model {source.name!r}: label {label!r} points at version {number}, "
                                   "which is not served (no such version folder, or the policy leaves it out)")
                    continue
                if version.status != READY:
                    self.labels_pending = self.labels_pending or version.status != FAILED
                    continue  # set once it is ready (a later poll)
                try:
                    catalog.set_alias(self.registry.db, source.name, label, number,
                                      note="version label of the model server's config")
                except RegistryError as exc:
                    self._say_once(source.name, f"model {source.name!r}: label {label!r} not set: {exc.message}")
