"""What a model, an alias and a version reference may be called, checked before anything is read."""

from __future__ import annotations

import re

from registry.errors import InvalidRequest

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
RESERVED_ALIASES = {"latest"}
VERSION_LABEL_RE = re.compile(r"^[vV]([0-9]+)$")  # 'v3', as pages and the CLI write version 3
MAX_VERSION = 2**63 - 1  # the largest number either database compares (SQLite raises OverflowError past it)

def validate_model_name(name: str) -> str:
    if not MODEL_NAME_RE.match(name or ""):
        raise InvalidRequest(
            f"invalid model name {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            code="invalid_model_name",
        )
    return name


def validate_alias_name(alias: str) -> str:
    label = VERSION_LABEL_RE.match(alias or "")
    if label:
        raise InvalidRequest(
            f"invalid alias {alias!r}: it reads as version {int(label.group(1))} ('NAME:{alias}' means that "
            "version): pick a name that is not v followed by digits, e.g. 'candidate' or 'release-3'",
            code="invalid_alias",
        )
    if not ALIAS_RE.match(alias or "") or alias in RESERVED_ALIASES:
        raise InvalidRequest(
            f"invalid alias {alias!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter ('latest' is reserved: it always means the newest ready version)",
            code="invalid_alias",
        )
    return alias


def version_number(ref: str) -> int | None:
    """The version number ``ref`` writes in ASCII digits, or None when ``ref`` is a name ('latest', an
    alias).  Other digits ('²', '٣': ``str.isdigit`` accepts them, ``int`` does not always) are refused;
    a number past MAX_VERSION comes back as MAX_VERSION + 1 (no version has it).  ``v3`` is version 3,
    as the pages write it (no alias may be called so)."""
    label = VERSION_LABEL_RE.match(ref)
    if label:
        ref = label.group(1)
    if ref.isascii() and ref.isdecimal():
        digits = ref.lstrip("0") or "0"
        return int(digits) if len(digits) <= len(str(MAX_VERSION)) else MAX_VERSION + 1
    if ref.isnumeric():
        raise InvalidRequest(f"version {ref!r} is not a number written with the digits 0-9: use a version "
                             "number such as 3, 'latest' or an alias", code="invalid_version")
    return None
