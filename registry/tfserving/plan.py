"""What TF Serving should serve, and the ``models.config`` that tells it.

TF Serving refuses a ``version_labels`` entry for a version it has not loaded
and unloads every model a reloaded config leaves out, so :func:`plan` decides,
per model, which versions to serve (the model's ``served_versions`` setting, by
default every aliased version plus the newest ready one) and
:func:`models_config` writes the ``ModelServerConfig`` text proto with TF
Serving's own protos (no TensorFlow: the web app imports this), labels only for
versions already exported.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2  # protos only: no TensorFlow

from registry import catalog, safety
from registry.db import Database
from registry.entities import READY, VersionInfo
from registry.errors import NotFound
from registry.pagination import MAX_PAGE_SIZE

LABEL_RE = re.compile(r"^[a-zA-Z0-9_]+$")
# TF Serving takes the name as a path component of base_path and of its REST URLs.
SERVABLE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


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


def _all_models(db: Database) -> Iterator:
    token = None
    while True:
        page = catalog.list_models(db, page_size=MAX_PAGE_SIZE, page_token=token)
        yield from page.items
        token = page.next_page_token
        if not token:
            return


def _all_ready(db: Database, name: str) -> Iterator[VersionInfo]:
    token = None
    while True:
        page = catalog.list_versions(db, name, page_size=MAX_PAGE_SIZE, page_token=token, status=READY,
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
    text = text_format.MessageToString(config)
    return text if text.endswith("\n") else text + "\n"  # a text file ends with a newline


def config_labels(text: str | None) -> dict[str, dict[str, int]]:
    """The version labels of a models.config: {model: {label: version}} (unreadable text: none)."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text or "", config)
    except text_format.ParseError:
        return {}
    return {m.name: dict(m.version_labels) for m in config.model_config_list.config}
