"""Keeping an export root in step with the catalog: :func:`sync` and its background runner.

:func:`sync` publishes each served version atomically (its SavedModel, built by
the version's follow-on job; a version whose SavedModel is still pending waits
for the next sync, and one converted before SavedModels followed every
conversion gets it built now), writes ``models.config``
next to the exported models, then removes versions that are no longer served
(deleted, alias moved away, setting changed).  It only looks at what the
catalog says now, so running it again is harmless.  :class:`ExportSyncer`
runs it in the background whenever a version becomes ready, an alias moves or
the setting changes (``REGISTRY_SERVING_EXPORT_ROOT``).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from registry import catalog
from registry.db import Database
from registry.entities import SAVED_MODEL, SAVED_MODEL_FAILED, SAVED_MODEL_PENDING
from registry.errors import Conflict
from registry.jobs.worker import build_saved_model  # the converter's parent side: no TensorFlow here
from registry.storage import BlobStorage
from registry.tfserving.plan import ModelPlan, config_labels, models_config, plan
from registry.tfserving.targets import CONFIG_NAME, open_target
from registry.uploads.archives import ArchiveLimits, safe_extract

log = logging.getLogger(__name__)
PENDING_RECHECK_S = 30.0  # a pending SavedModel's job syncs when it is done; this is the safety net


@dataclass
class SyncReport:
    root: str
    config_path: str
    models: list[ModelPlan]
    published: list[str] = field(default_factory=list)  # "model/version"
    removed: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"version": "model/version", "error"}
    pending: list[str] = field(default_factory=list)  # "model/version" whose SavedModel is being built
    config: str = ""
    retry_after: float | None = None  # a label waits for a version to load: sync again after this


class WouldEmptyConfig(Conflict):
    """:func:`sync` (with ``allow_empty=False``) left a models.config that lists models as it was,
    rather than replace it with one that lists none (TF Serving would unload every model)."""

    code = "serving_export_would_empty"

    def __init__(self, config_path: str, listed: int) -> None:
        super().__init__(f"{config_path} lists {listed} model(s) and this export would list none; "
                         "it was left as it was")
        self.config_path, self.listed = config_path, listed


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
         base_path: str | None = None, *, allow_empty: bool = True) -> SyncReport:
    """Make ``root`` hold exactly the served versions, and its models.config describe them.

    Without ``allow_empty``, a models.config that lists models is never replaced by one that lists
    none: :class:`WouldEmptyConfig` is raised and nothing is changed (nothing was published either,
    or the new config would list it).
    """
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
                    if version.file(SAVED_MODEL) is None and version.saved_model_state == SAVED_MODEL_PENDING:
                        report.pending.append(f"{p.name}/{number}")  # its follow-on job syncs again when done
                        continue
                    if version.file(SAVED_MODEL) is None and version.saved_model_state == SAVED_MODEL_FAILED:
                        report.failed.append({"version": f"{p.name}/{number}",
                                              "error": f"its SavedModel could not be built: "
                                                       f"{version.saved_model_message}"})
                        continue
                    saved = build_saved_model(settings, db, storage, version)  # versions from before: now
                    with tempfile.TemporaryDirectory(prefix="serving-export-") as tmp:
                        archive = Path(tmp) / "saved_model.tar"  # a .tar.gz built before is told by its bytes
                        storage.materialize(saved.sha256, archive)
                        folder = Path(tmp) / "saved_model"
                        safe_extract(archive, folder, ArchiveLimits())
                        target.publish(p.name, number, folder)
                    exported.setdefault(p.name, {})[number] = time.time()
                    report.published.append(f"{p.name}/{number}")
                except Exception as exc:  # one bad version must not stop the others
                    log.exception("exporting %s v%d failed", p.name, number)
                    report.failed.append({"version": f"{p.name}/{number}", "error": str(exc)})
        previous = config_labels(target.read_config())
        report.config = models_config(plans, exported, base, label_delay=settings.serving_label_delay,
                                      previous=previous)
        if not allow_empty and previous and not config_labels(report.config):
            raise WouldEmptyConfig(report.config_path, len(previous))
        target.write_config(report.config)
        # Only now that the config no longer names them: versions that are not served any more
        # (kept while a label still points at them).
        wanted = {(p.name, v) for p in plans for v in p.versions + [h["version"] for h in p.held]}
        waits = [p.wait for p in plans if p.wait is not None] + ([PENDING_RECHECK_S] if report.pending else [])
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
