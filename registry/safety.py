"""Whether the registry may run a version's graph, and if not, why.

TensorFlow treats a GraphDef as a program: ``ReadFile``, ``WriteFile`` or
``PyFunc`` run with the rights of whoever executes the graph.  The converter
scans every op of the frozen graph (``registry.converter.ops``) and records the
ops it flags in ``conversion["safety"]["flags"]``.  This module turns that stored
report plus the model's admin-set op allowlist into a decision, without
TensorFlow, so every place that would run a graph asks the same question:

* the label service (REST ``:label``, ``:compare``, ``:predict``, metadata; gRPC),
* the TF Serving export (``refusal(version)`` before writing a SavedModel).

Semantics: a version is *flagged* when its frozen graph contains a flagged op
(any category: reads_files, writes_files, network, calls_python,
not_allowlisted) that is not on its model's allowlist.  The allowlist names ops
exactly (no categories or wildcards) and only ever relaxes the scan for that
one model.  It is read when the question is asked, so allowing or removing an
op takes effect on existing versions at once, without converting again.  A
ready version without a safety report is refused (fail closed).
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from registry.errors import Conflict, InvalidRequest

OP_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ALLOWED_OPS = 100
FLAGGED_CODE = "version_flagged"


class _Version(Protocol):
    model: str
    version: int
    conversion: dict[str, Any] | None
    allowed_ops: list[str]


def validate_ops(ops: object) -> list[str]:
    """A sorted, de-duplicated list of op names, or InvalidRequest saying what to fix."""
    if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
        raise InvalidRequest('"ops" must be a list of op names, e.g. ["ReadFile"]', code="invalid_allowed_ops")
    cleaned = sorted({op.strip() for op in ops})
    bad = [op for op in cleaned if not OP_NAME_RE.match(op)]
    if bad:
        raise InvalidRequest(f"not an op name: {', '.join(map(repr, bad))}; use TensorFlow op type names exactly "
                             "as the version's safety report lists them (e.g. ReadFile, PyFunc)",
                             code="invalid_allowed_ops")
    if len(cleaned) > MAX_ALLOWED_OPS:
        raise InvalidRequest(f"allow at most {MAX_ALLOWED_OPS} ops per model", code="invalid_allowed_ops")
    return cleaned


def report(conversion: dict[str, Any] | None) -> dict[str, Any] | None:
    """The converter's stored safety report, or None when the version has none."""
    return (conversion or {}).get("safety")


def blocking_flags(conversion: dict[str, Any] | None, allowed_ops: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """The scan's flags that the allowlist does not cover."""
    allowed = set(allowed_ops)
    return [f for f in (report(conversion) or {}).get("flags", []) if f["op"] not in allowed]


def describe(flags: list[dict]) -> str:
    return ", ".join(f"{f['op']} ({f['category'].replace('_', ' ')})" for f in flags)


def refusal(version: _Version, allowed_ops: list[str] | tuple[str, ...] | None = None) -> str | None:
    """Why the registry must not run ``version``'s graph, or None when it may.

    ``version`` is a :class:`registry.entities.VersionInfo` (anything with
    ``model``, ``version``, ``conversion``); ``allowed_ops`` defaults to the
    model's allowlist that came with it (``version.allowed_ops``).
    """
    allowed = version.allowed_ops if allowed_ops is None else allowed_ops
    if report(version.conversion) is None:
        return (f"version {version.version} of {version.model!r} has no safety report (its ops were never "
                "scanned), so it is not run: push it again to have it converted and scanned")
    flags = blocking_flags(version.conversion, allowed)
    if not flags:
        return None
    ops = sorted({f["op"] for f in flags})
    return (f"version {version.version} of {version.model!r} was flagged as unsafe to run: its graph contains "
            f"{describe(flags)}. The registry never runs it; an admin can allow these ops for this model with "
            f"`registry allow-ops {version.model} {' '.join(ops)} --reason ...` if they are intended")


def ensure_runnable(version: _Version, allowed_ops: list[str] | tuple[str, ...] | None = None) -> None:
    """Raise Conflict (409, ``version_flagged``; gRPC FAILED_PRECONDITION) when :func:`refusal` refuses."""
    reason = refusal(version, allowed_ops)
    if reason is not None:
        raise Conflict(reason, code=FLAGGED_CODE)


def summary(conversion: dict[str, Any] | None, allowed_ops: list[str]) -> dict[str, Any] | None:
    """The stored report with the effective decision for the API and pages.

    ``flagged`` is the effective status (flags not on the allowlist);
    ``scan_flagged`` is what the scan alone found; each flag says whether the
    model's allowlist covers it.
    """
    stored = report(conversion)
    if stored is None:
        return None
    allowed = set(allowed_ops)
    flags = [{**f, "allowed": f["op"] in allowed} for f in stored.get("flags", [])]
    return {**stored, "flags": flags, "scan_flagged": bool(stored.get("flagged")),
            "flagged": any(not f["allowed"] for f in flags), "allowed_ops": list(allowed_ops)}
