"""How request handlers reach the registry: the :class:`Registry` the app factory builds.

Views, the access check and the label service's blueprints call
:func:`get_registry`; nothing else reaches into ``app.extensions``.  The parts
that load more than Flask (the TF Serving export, the label service) are made
on first use by factories the app factory hands in, so this module depends on
nothing above the database and blob storage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from threading import Event, Lock
from typing import Any

from flask import current_app

from registry.config import Settings
from registry.db import Database
from registry.storage import BlobStorage


@dataclass
class Registry:
    """What the request handlers need: settings, database and blob storage."""

    settings: Settings
    db: Database
    storage: BlobStorage
    new_exporter: Callable[[], Any] | None = None  # the TF Serving export sync (registry.tfserving)
    new_label_service: Callable[[], Any] | None = None  # the label service (registry.serving)
    work_available: Event = field(default_factory=Event)
    stop_workers: Event = field(default_factory=Event)
    workers: list = field(default_factory=list)
    _labels: Any = None
    _labels_lock: Lock = field(default_factory=Lock)
    _exporter: Any = None
    serving_config: Any = None  # the last ModelServerConfig a gRPC HandleReloadConfigRequest accepted

    def notify_workers(self) -> None:
        self.work_available.set()

    @property
    def exporter(self):
        """The background TF Serving export sync, when ``REGISTRY_SERVING_EXPORT_ROOT`` is set."""
        if not self.settings.serving_export_root or self.new_exporter is None:
            return None
        with self._labels_lock:
            if self._exporter is None:
                self._exporter = self.new_exporter()
            return self._exporter

    def serving_changed(self) -> None:
        """A version became ready, an alias moved or what is served changed: sync the export."""
        if self.exporter is not None:
            self.exporter.request()

    def label_service(self):
        """The LabelService, made on the first request that needs it (it is what
        loads TensorFlow and numpy)."""
        with self._labels_lock:
            if self._labels is None:
                if self.new_label_service is None:
                    raise RuntimeError("this registry was built without a label service")
                self._labels = self.new_label_service()
            return self._labels


def get_registry() -> Registry:
    """The registry of the app handling the current request."""
    return current_app.extensions["registry"]
