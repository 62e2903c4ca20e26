"""The converter worker: claims conversion jobs and records their outcome.

Runs as ``registry worker`` (any number, on any machine that reaches the
database and blob storage) and, in the embedded default, as background threads
inside ``registry serve``.  Each attempt is counted and timed by outcome in
``registry.metrics`` (ready, failed, retried, lost_lease, deleted).

Somewhat over 400 lines: a job's three kinds (the conversion, the SavedModel that follows it, and a
queued comparison) share the worker's claim, lease, workdir and blob clean-up, and are recorded by the
same rules.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry import catalog, metrics, safety as safety_rules
from registry.config import Settings
from registry.converter import heads, ops  # graph logic on names only: no TensorFlow
from registry.converter.runner import Outcome, run_conversion, warm_up
from registry.db import Database
from registry.entities import (SAVED_MODEL, SAVED_MODEL_FILENAME, SAVED_MODEL_JOB, SAVED_MODEL_SOURCE, NewFile,
                               VersionInfo, label_lines)
from registry.errors import NotFound, StorageError
from registry.evaluation import auto as auto_compare
from registry.jobs import queue
from registry.jobs.gc import collect_garbage
from registry.storage import BlobRef, BlobStorage, open_regular
from registry.uploads import protowire
from registry.uploads.checks import DATA_SHARD_RE

log = logging.getLogger(__name__)
WORKDIR_PREFIX = "registry-convert-"


def remove_stale_workdirs() -> int:
    """Remove the conversion folders that workers killed mid-job left in the temporary
    directory (their process id is in the name and no longer runs); return how many."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*-*"):
        try:
            pid = int(path.name[len(WORKDIR_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # still running (or the pid was reused): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


class Worker:
    def __init__(self, settings: Settings, db: Database, storage: BlobStorage, name: str | None = None,
                 on_ready: Callable[[], None] | None = None, labels: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.on_ready = on_ready  # called after a version became ready (keeps a serving export in sync)
        # The label service comparison jobs run on (registry.serving, made by whoever starts the worker:
        # this layer does not import it); None: comparison jobs are left to workers that have one.
        self.labels = labels
        self.owner = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def run_once(self) -> bool:
        """Process one job if there is one; return whether there was."""
        job = queue.claim(self.db, self.owner, self.settings.job_lease_seconds)
        if job is None:
            return False
        self.process(job)
        return True

    def run_forever(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        log.info("worker %s started", self.owner)
        if self.settings.convert_warm:
            warm_up()  # this thread's first conversion skips TensorFlow's import too
        if removed := remove_stale_workdirs():
            log.info("removed %d conversion folder(s) left by workers that died", removed)
        interval = self.settings.gc_interval_seconds
        next_gc = time.monotonic() + interval
        while not stop.is_set():
            if interval > 0 and time.monotonic() >= next_gc:  # between jobs, busy or not
                next_gc = time.monotonic() + interval
                self.collect_garbage()
            try:
                if self.run_once():
                    continue
            except Exception:  # the database may be briefly away: log, wait, go on
                log.exception("worker %s: claiming a job failed", self.owner)
            if wake is not None:
                wake.wait(self.settings.worker_poll_seconds)
                wake.clear()
            else:
                stop.wait(self.settings.worker_poll_seconds)

    def collect_garbage(self) -> None:
        """The periodic ``registry gc`` (REGISTRY_GC_INTERVAL_SECONDS), between jobs."""
        try:
            report = collect_garbage(self.db, self.storage, grace_seconds=self.settings.gc_grace_seconds)
            log.info("garbage collection: %s", report.summary())
        except Exception:
            log.exception("worker %s: garbage collection failed", self.owner)

    def process(self, job: queue.ClaimedJob) -> None:
        if job.kind == SAVED_MODEL_JOB:
            self._build_saved_model(job)
            return
        if job.kind == queue.COMPARE_JOB:
            self._compare(job)
            return
        started = time.monotonic()
        outcome = "failed"
        try:
            outcome = self._process(job)
        finally:
            metrics.CONVERSIONS.labels(outcome).inc()
            metrics.CONVERSION_SECONDS.labels(outcome).observe(time.monotonic() - started)

    def _process(self, job: queue.ClaimedJob) -> str:
        """Convert ``job``'s version and record the result; return the outcome the metrics count."""
        workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{job.version_id}-"))
        try:
            version = catalog.get_version_by_id(self.db, job.version_id)
            log.info("converting %s v%d (attempt %d)", version.model, version.version, job.attempt)
            request = self._prepare(version, workdir)
            outcome = run_conversion(
                request, workdir,
                timeout=self.settings.convert_timeout_seconds,
                memory_mb=self.settings.convert_memory_mb,
                max_output_mb=self.settings.convert_max_output_mb,
                user=self.settings.convert_user,
                heartbeat=lambda: queue.heartbeat(self.db, job, self.settings.job_lease_seconds),
                heartbeat_every=max(1.0, self.settings.job_lease_seconds / 3),
                warm_start=self.settings.convert_warm,
            )
            return self._record(job, version, outcome, workdir, request["labels_count"])
        except NotFound:
            log.info("version id %d was deleted before its conversion started; dropping the job", job.version_id)
            return "deleted"
        except StorageError as exc:  # full, read-only or unreachable: worth a later attempt (bounded)
            log.warning("conversion of version id %d: %s", job.version_id, exc.message)
            return _retried(queue.retry_later(self.db, job, exc.message))
        except Exception as exc:
            log.exception("conversion of version id %d failed", job.version_id)
            return _retried(queue.retry_later(self.db, job, f"{type(exc).__name__}: {exc}"))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _prepare(self, version: VersionInfo, workdir: Path) -> dict:
        """Lay the version's blobs out as the files TensorFlow expects."""
        files: dict[str, str] = {}
        prefix = workdir / "model.ckpt"
        for f in version.files:
            if f.role == "meta":
                target = workdir / "model.ckpt.meta"
            elif f.role == "index":
                target = workdir / "model.ckpt.index"
            elif f.role == "data":
                match = DATA_SHARD_RE.search(f.filename)
                target = workdir / f"model.ckpt.data-{match.group(1)}-of-{match.group(2)}"
            elif f.role == "graph":
                target = workdir / "inference_graph"
            elif f.role == "frozen":
                target = workdir / "uploaded_frozen.pb"
            elif f.role == SAVED_MODEL_SOURCE:
                target = workdir / "uploaded_saved_model.archive"
            elif f.role == "keras":
                # Keras tells its formats apart by the file name's extension.
                target = workdir / ("model.keras" if f.filename.lower().endswith(".keras") else "model.h5")
            else:
                continue
            self.storage.materialize(f.sha256, target)
            if f.role in ("meta", "graph", "frozen", SAVED_MODEL_SOURCE, "keras"):
                files[f.role] = str(target)
        if version.file("index"):
            files["checkpoint_prefix"] = str(prefix)
        labels = version.file("labels")
        graph = version.file("graph")
        return {
            "graph_filename": graph.filename if graph is not None else None,  # named in what the converter says
            "source": version.source,
            "files": files,
            "output_nodes": version.requested_output_nodes or [],
            "input_nodes": version.requested_input_nodes or [],
            "output_path": str(workdir / "frozen.pb"),
            "verify_tolerance": self.settings.verify_tolerance,
            # Ops the model's admin allowed: a graph flagged only for these is verified like any other.
            "allowed_ops": version.allowed_ops,
            "signature": version.signature,
            "signatures": version.requested_signatures or [],
            # the prediction output is the probability output whose size matches the labels file
            "labels_count": self._count_lines(labels.sha256) if labels is not None else None,
            "max_archive_bytes": self.settings.max_archive_bytes,
            "max_archive_files": self.settings.max_archive_files,
        }

    def _build_saved_model(self, job: queue.ClaimedJob) -> None:
        """The follow-on job of a ready version: its TF Serving SavedModel, built in a converter child."""
        try:
            version = catalog.get_version_by_id(self.db, job.version_id)
        except NotFound:
            return  # deleted meanwhile: its job went with it
        try:
            ref = _make_saved_model(self.settings, self.storage, version,
                                    heartbeat=lambda: queue.heartbeat(self.db, job, self.settings.job_lease_seconds),
                                    heartbeat_every=max(1.0, self.settings.job_lease_seconds / 3))
        except SavedModelFailed as exc:
            if exc.retryable:
                queue.retry_later(self.db, job, exc.message)
            else:
                queue.finish_saved_model(self.db, job, built=None, message=exc.message)
            log.warning("SavedModel of %s v%d: %s", version.model, version.version, exc.message)
            return
        except StorageError as exc:  # full, read-only or unreachable: worth a later attempt (bounded)
            log.warning("SavedModel of %s v%d: %s", version.model, version.version, exc.message)
            queue.retry_later(self.db, job, exc.message)
            return
        except Exception as exc:
            log.exception("SavedModel of %s v%d failed", version.model, version.version)
            queue.retry_later(self.db, job, f"{type(exc).__name__}: {exc}")
            return
        if not queue.finish_saved_model(self.db, job, built=NewFile(SAVED_MODEL, SAVED_MODEL_FILENAME, ref.sha256,
                                                                    ref.size)):
            drop_unreferenced(self.db, self.storage, [ref])
            return
        log.info("%s v%d: SavedModel ready (%d bytes)", version.model, version.version, ref.size)
        if self.on_ready is not None:
            self.on_ready()  # an export waiting for it goes on

    def _compare(self, job: queue.ClaimedJob) -> None:
        """A comparison job: its report run by the label service (``labels``), progress written as it
        goes; an inference worker that went away means a later attempt."""
        if self.labels is None:
            queue.retry_later(self.db, job, "this worker has no label service to compare versions with")
            return
        lease = self.settings.job_lease_seconds
        try:
            outcome = self.labels().run_comparison(job.report_id, lambda: queue.heartbeat(self.db, job, lease))
        except Exception as exc:
            log.exception("comparison report %s failed", job.report_id)
            queue.retry_later(self.db, job, getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")
            return
        if outcome != "lost":  # "done", or why it failed for good
            queue.finish_compare(self.db, job, None if outcome == "done" else outcome)

    def _count_lines(self, sha256: str) -> int:
        """Labels in a labels file, as the label service reads it (``entities.label_lines``; the upload
        checks bound the file to a few MiB)."""
        with self.storage.open(sha256) as stream:
            return len(label_lines(stream.read()))

    def _record(self, job: queue.ClaimedJob, version: VersionInfo, outcome: Outcome, workdir: Path,
                labels_count: int | None = None) -> str:
        """Record ``outcome`` on the version (``labels_count``: its labels file's lines, checked against
        the prediction output); return what the metrics count it as."""
        if outcome.lost_lease:
            log.warning("lost the lease on job %d (its version was deleted, or another worker took it)", job.id)
            return "lost_lease"
        if not outcome.ok:
            if outcome.retryable:
                return _retried(queue.retry_later(self.db, job, outcome.message))
            recorded = queue.finish(self.db, job, ready=False, message=outcome.message, fields={})
            return "failed" if recorded else "lost_lease"
        result = outcome.result
        try:
            result["conversion"]["safety"] = confirm_report(workdir / "frozen.pb", result["conversion"]["safety"])
        except (ValueError, OSError) as exc:
            recorded = queue.finish(self.db, job, ready=False, fields={},
                                    message=f"the converter wrote a frozen graph that cannot be read back ({exc})")
            return "failed" if recorded else "lost_lease"
        stored: list[BlobRef] = []  # removed again unless the version ends up referring to them
        try:
            recorded = self._store_and_finish(job, version, result, workdir, stored, labels_count)
        except BaseException:
            drop_unreferenced(self.db, self.storage, stored)
            raise
        if not recorded:
            drop_unreferenced(self.db, self.storage, stored)
            return "lost_lease"
        log.info("%s v%d: %s", version.model, version.version, recorded)
        self._auto_compare(version)
        if self.on_ready is not None:
            self.on_ready()
        return "ready"

    def _auto_compare(self, version: VersionInfo) -> None:
        """Queue the model's automatic comparisons of this now-ready version (never fails the conversion)."""
        try:
            ready = catalog.get_version_by_id(self.db, version.id)
            queued = auto_compare.schedule(self.db, ready, max_attempts=self.settings.job_max_attempts)
        except Exception:  # the version stays ready; its comparisons can be asked for by hand
            log.exception("automatic comparison of %s v%d could not be queued", version.model, version.version)
            return
        if queued:
            log.info("%s v%d: automatic comparison(s) queued: reports %s", version.model, version.version, queued)

    def _store_and_finish(self, job: queue.ClaimedJob, version: VersionInfo, result: dict, workdir: Path,
                          stored: list[BlobRef], labels_count: int | None = None) -> str | None:
        """Store the frozen graph and SavedModel (appending each to ``stored``) and record the
        version as ready, with any warning in its status message and ``conversion["warnings"]``;
        return its status message, or None if the lease was lost meanwhile."""
        ref = self.storage.put_file(workdir / "frozen.pb")
        stored.append(ref)
        verification = result["conversion"]["verification"]
        blocking = safety_rules.blocking_flags(result["conversion"], version.allowed_ops)
        signature_map = result.get("signatures") or {}
        count = f"{len(signature_map)} signatures, " if len(signature_map) > 1 else ""
        if blocking:
            message = (f"frozen, but flagged as unsafe to run: {safety_rules.describe(blocking)}; "
                       "never run (verification skipped)")
        elif verification["status"] == "passed":
            message = f"frozen and verified ({count}largest difference {verification['max_abs_diff']:.3g})"
        else:
            message = f"frozen; not verified: {verification.get('reason') or verification.get('note')}"
        failed = result["conversion"].get("failed_signatures") or {}
        if failed:
            message += "; not served: " + "; ".join(f"signature {n!r} ({r})" for n, r in failed.items())
        warnings = [w for w in (_labels_warning(version, result, labels_count), _inputs_warning(result)) if w]
        if warnings:
            result["conversion"]["warnings"] = warnings
            message += "".join(f"; warning: {w}" for w in warnings)
        recorded = queue.finish(
            self.db, job, ready=True, message=message,
            fields={
                "output_nodes": result["output_nodes"],
                "output_nodes_detected": result["output_nodes_detected"],
                "input_nodes": result["input_nodes"],
                "frozen_sha256": ref.sha256,
                "frozen_size": ref.size,
                "tf_version": result["tf_version"],
                "conversion": result["conversion"],
                "signatures": signature_map or None,
                "prediction_output": result.get("prediction_output"),
                **({"signature": result["signature"]} if result.get("signature") else {}),
                **({"global_step": result["global_step"]} if result.get("global_step") is not None else {}),
            },
            follow_on=SAVED_MODEL_JOB,  # ready means frozen and verified; the SavedModel follows
        )
        return message if recorded else None


def _inputs_warning(result: dict) -> str | None:
    """A graph with no input computes the same outputs on every run: a training graph whose data comes
    from an input pipeline, pushed without its inference graph and with output names."""
    if result.get("input_nodes"):
        return None
    return (f"the version has no input: every run computes the same outputs from what is built into the "
            f"graph. If this is a training graph: {heads.PUSH_INFERENCE_GRAPH}")


def _labels_warning(version: VersionInfo, result: dict, lines: int | None) -> str | None:
    """A labels file that fits neither the prediction output's classes nor them less a background
    class, said with both numbers (the output's size is known only once converted)."""
    labels = version.file("labels")
    chosen = (result["conversion"].get("prediction_output") or {})
    if labels is None or lines is None or chosen.get("node") != result.get("prediction_output"):
        return None
    return heads.labels_mismatch(labels.filename, lines, chosen.get("node"), chosen.get("classes"))


def _retried(again: bool) -> str:
    """The outcome of an attempt given back to the queue: retried, or failed once out of attempts."""
    return "retried" if again else "failed"


def confirm_report(frozen_path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The converter child's safety report, checked against the frozen graph it wrote.

    The child scans and reports on its own; if code the scan missed had run there, it could
    leave an op out of the report.  The worker reads the frozen graph it is about to store (the
    graph the label service will run) at the wire level, without TensorFlow, and adds any flag the
    report lacks.  Raises ValueError when the file is not a GraphDef.
    """
    # open_regular: a symlink or FIFO the child left in place of the graph is refused
    found = ops.scan(protowire.graph_def_ops(open_regular(frozen_path)))
    reported = {f["op"] for f in report.get("flags", [])}
    missing = [f for f in found["flags"] if f["op"] not in reported]
    if not missing:
        return report
    log.warning("the converter's safety report left out %s; flagging the version", safety_rules.describe(missing))
    return {**report, "flags": sorted([*report.get("flags", []), *missing], key=lambda f: f["op"]),
            "flagged": True, "op_histogram": found["op_histogram"], "report_incomplete": True}


def drop_unreferenced(db: Database, storage: BlobStorage, blobs: list[BlobRef]) -> None:
    """Delete the blobs a conversion created that no version refers to (a failed or lost
    conversion leaves no orphan); if that fails too, ``registry gc`` takes them later."""
    for blob in blobs:
        try:
            if blob.created and not catalog.is_blob_referenced(db, blob.sha256):
                storage.delete(blob.sha256)
        except Exception:
            log.exception("could not remove blob %s; garbage collection will", blob.sha256)


class SavedModelFailed(Exception):
    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def _make_saved_model(settings: Settings, storage: BlobStorage, version: VersionInfo, **wait) -> BlobRef:
    """Build and store a ready version's SavedModel (a plain tar) in a converter child; its blob."""
    if not version.frozen_sha256:
        raise SavedModelFailed(f"{version.model} v{version.version} has no frozen graph")
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-saved-model-{version.id}-"))
    try:
        frozen = workdir / "frozen.pb"
        storage.materialize(version.frozen_sha256, frozen)
        outcome = run_conversion(
            {"task": "saved_model", "frozen_path": str(frozen), "signatures": version.signature_map,
             "saved_model_path": str(workdir / SAVED_MODEL_FILENAME)},
            workdir, timeout=settings.convert_timeout_seconds, memory_mb=settings.convert_memory_mb,
            user=settings.convert_user, warm_start=settings.convert_warm, **wait,
        )
        if not outcome.ok:
            raise SavedModelFailed(f"building the SavedModel failed: {outcome.message}", retryable=outcome.retryable)
        return storage.put_file(workdir / SAVED_MODEL_FILENAME)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def build_saved_model(settings: Settings, db: Database, storage: BlobStorage, version: VersionInfo):
    """The SavedModel of a ready version that has none (converted before SavedModels were built, or
    before they were built by a follow-on job): made now, stored and recorded on the version."""
    existing = version.file(SAVED_MODEL)
    if existing is not None:
        return existing
    try:
        ref = _make_saved_model(settings, storage, version)
    except SavedModelFailed as exc:
        raise RuntimeError(f"{version.model} v{version.version}: {exc.message}") from None
    try:
        recorded = catalog.attach_file(db, version.id, NewFile(SAVED_MODEL, SAVED_MODEL_FILENAME, ref.sha256,
                                                                ref.size))
    except BaseException:
        drop_unreferenced(db, storage, [ref])
        raise
    if recorded.sha256 != ref.sha256:  # another build attached one first
        drop_unreferenced(db, storage, [ref])
    return recorded


def start_embedded_workers(registry, count: int) -> list[threading.Thread]:
    """Background worker threads for the one-process embedded default."""
    stop = registry.stop_workers
    threads = []
    for i in range(count):
        worker = Worker(registry.settings, registry.db, registry.storage, on_ready=registry.serving_changed,
                        labels=registry.label_service)
        thread = threading.Thread(
            target=worker.run_forever, args=(stop, registry.work_available), name=f"registry-worker-{i}", daemon=True
        )
        thread.start()
        threads.append(thread)
    registry.workers = threads
    return threads
