"""Models, versions and aliases: the registry's business rules, each function owning its transaction.

* ``names.py``: what models, aliases and version references may be called;
* ``rows.py``: a model's row, locked for a write; a version reference resolved to its row;
* ``mapping.py``: ORM rows to the plain entities handed out (rows never leave the catalog);
* ``versions.py``: push the next version (with its conversion job), edit it (its prediction output
  too), read it, describe its signatures;
* ``registered_models.py``: read a model, list models, edit a model's description;
* ``aliases.py``, ``deletion.py``: move and remove aliases; delete versions and models;
* ``model_settings.py``: a model's op allowlist and the versions a TF Serving export serves;
* ``agreements.py``: how often two versions agreed in a comparison;
* ``blobs.py``: the blobs versions refer to (for garbage collection).
* ``shadow.py``: an alias's shadow version, and the agreement shadow traffic measured per time window.

Every write on a model runs in a write transaction that first locks the
model's row, so writes on one model happen one after another: of two deletes of
a version one wins and the other finds nothing (404), an alias is never moved
onto a version deleted meanwhile, and ``version_count`` stays the number of
rows.  ``from registry import catalog`` gives every service function below.
"""

from registry.catalog.agreements import record_agreements
from registry.catalog.aliases import delete_alias, set_alias
from registry.catalog.blobs import is_blob_referenced, referenced_digests
from registry.catalog.deletion import delete_model, delete_version
from registry.catalog.model_settings import ALLOWED_OPS_ACTION, get_allowed_ops, set_allowed_ops, set_served_versions
from registry.catalog.names import (
    ALIAS_RE,
    MAX_VERSION,
    MODEL_NAME_RE,
    RESERVED_ALIASES,
    validate_alias_name,
    validate_model_name,
    version_number,
)
from registry.catalog.registered_models import MAX_DESCRIPTION, get_model, list_models, update_model
from registry.catalog.shadow import (
    Sample, ShadowReport, ShadowSetting, WindowCounts, delete_shadow, get_shadow, record_shadow, set_shadow,
    shadow_overview, shadow_route, stop_shadow,
)
from registry.catalog.tags import MAX_TAG_VALUE, TAG_KEY_RE, set_tags, validate_tags
from registry.catalog.versions import (
    MAX_REASON,
    MAX_VERSION_NUMBER,
    attach_file,
    check_version_available,
    check_version_number,
    create_version,
    get_version,
    get_version_by_id,
    list_versions,
    prediction_outputs,
    set_prediction_output,
    signature_report,
    update_version,
    validate_preprocessing,
)
from registry.pagination import MAX_PAGE_SIZE

__all__ = [
    "ALIAS_RE", "ALLOWED_OPS_ACTION", "MAX_DESCRIPTION", "MAX_PAGE_SIZE", "MAX_REASON", "MAX_VERSION", "MODEL_NAME_RE",
    "RESERVED_ALIASES", "attach_file", "create_version", "delete_alias", "delete_model", "delete_version",
    "get_allowed_ops", "get_model", "get_version", "get_version_by_id", "is_blob_referenced", "list_models",
    "list_versions", "prediction_outputs", "record_agreements", "referenced_digests", "set_alias", "set_allowed_ops",
    "set_prediction_output", "set_served_versions", "signature_report", "update_model", "update_version",
    "validate_alias_name", "validate_model_name", "validate_preprocessing", "version_number",
    "MAX_TAG_VALUE", "TAG_KEY_RE", "set_tags", "validate_tags",
    # a push's own version number (TF Serving's folder numbers)
    "MAX_VERSION_NUMBER", "check_version_available", "check_version_number",
    # shadow traffic (shadow.py)
    "Sample", "ShadowReport", "ShadowSetting", "WindowCounts", "delete_shadow", "get_shadow", "record_shadow",
    "set_shadow", "shadow_overview", "shadow_route", "stop_shadow",
]
