"""Every request and answer of /api/v1, written once as pydantic models.

A request model validates what a handler receives (query arguments, a JSON
body, a push's text fields) and an answer model shapes what it sends; both
generate the OpenAPI document (``registry.api.spec``).  Enum values and name
patterns come from the constants the services check them with, and where a
service has a precise fix-it message the model calls that very check (a
``BeforeValidator`` raising the service's ``InvalidRequest``).  What pydantic
itself refuses (a missing field, a wrong type, an unknown key) gets the
model's ``invalid`` error, or the one ``invalid_fields`` names for that field.

Answer models read the service entities (``from_attributes``) or are built
from them by a ``of`` classmethod; nested objects the converter writes keep
keys the model does not name (``extra="allow"``) and are dumped with
``exclude_unset`` so an answer carries exactly the keys it always did.

Over 400 lines because it is the API's whole vocabulary: one model per shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator

from registry import auth, catalog, safety
from registry.converter.ops import CATEGORIES
from registry.entities import PREPROCESSING_KEYS, SAVED_MODEL_SOURCE, SOURCES, VERSION_STATUSES, VersionInfo
from registry.errors import InvalidRequest
from registry.evaluation import FORMATS as eval_formats
from registry.evaluation import sets as eval_sets
from registry.pagination import DEFAULT_PAGE_SIZE, MAX_INT64, MAX_PAGE_SIZE, checked_token
from registry.uploads.checks import parse_node_list, parse_signatures
from registry.uploads.files import FILE_FIELDS
from registry.webhooks import hooks as webhook_hooks
from registry.webhooks import EVENTS as WEBHOOK_EVENTS


@dataclass(frozen=True)
class Invalid:
    """The error a request gets when pydantic refuses it (``{name}`` and ``{value}`` are filled in)."""

    code: str
    message: str

    def error(self, name: object = None, value: object = None) -> InvalidRequest:
        return InvalidRequest(self.message.replace("{name}", str(name)).replace("{value}", repr(value)),
                              code=self.code)


class Request(BaseModel):
    """A request model: its ``invalid`` error, and per-field ones."""

    model_config = ConfigDict(extra="forbid")
    invalid: ClassVar[Invalid]
    invalid_fields: ClassVar[dict[str, Invalid]] = {}


class Answer(BaseModel):
    """An answer model, read from a service's entity."""

    model_config = ConfigDict(from_attributes=True)


class Free(BaseModel):
    """A nested object the converter writes: the named keys are documented, others pass through."""

    model_config = ConfigDict(extra="allow", from_attributes=True)


def _check(check):
    """A BeforeValidator running a service's own check (it raises InvalidRequest with its message)."""
    return BeforeValidator(check)


def _decimal(value: object) -> object:
    """A version number sent as a string of ASCII digits ('3'), as int (past 2^63-1: one past it)."""
    if isinstance(value, str) and value.isascii() and value.isdecimal():
        return int(value) if len(value) <= len(str(MAX_INT64)) else MAX_INT64 + 1
    return value


def _whole_number(name: str):
    def parse(value: object) -> object:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise InvalidRequest(f"{name} must be a whole number, not {value!r}", code=f"invalid_{name}") from None
        return value
    return BeforeValidator(parse)


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


VersionNumber = Annotated[int, Strict(), Field(ge=1, le=MAX_INT64)]
ModelName = Annotated[str, Field(pattern=catalog.MODEL_NAME_RE.pattern, description="Model name")]
OpName = Annotated[str, Field(pattern=safety.OP_NAME_RE.pattern)]
Status = Literal[VERSION_STATUSES]  # type: ignore[valid-type]
Scope = Literal[auth.SCOPES]  # type: ignore[valid-type]


# --- query arguments -------------------------------------------------------------------------------

class PageQuery(Request):
    model_config = ConfigDict(extra="ignore")  # other query arguments are not ours to refuse
    invalid = Invalid("invalid_request", "invalid query arguments: {name}")
    invalid_fields = {"page_size": Invalid("invalid_page_size", f"page_size must be between 1 and {MAX_PAGE_SIZE}")}

    page_size: Annotated[Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] | None, _whole_number("page_size"),
                         Field(description=f"1 to {MAX_PAGE_SIZE}; default {DEFAULT_PAGE_SIZE}")] = None
    page_token: Annotated[str | None, _check(checked_token),
                          Field(description="The next_page_token of the previous page")] = None


class ModelQuery(PageQuery):
    q: str | None = Field(None, description="Substring of the name")
    filter: Annotated[str | None, BeforeValidator(_blank_is_none), Field(description=(
        "A filter on name, alias, created_at and tags.KEY, e.g. tags.team = 'vision' AND alias = 'production' "
        "(see GET /api/v1/versions)"))] = None
    order_by: Annotated[str | None, BeforeValidator(_blank_is_none),
                        Field(description="name or created_at, then ASC or DESC (default name ASC)")] = None


class VersionSearch(PageQuery):
    filter: Annotated[str | None, BeforeValidator(_blank_is_none), Field(description=(
        "Fields name, version, status, source, alias, created_at and tags.KEY; operators = != < <= > >= LIKE "
        "ILIKE IN, NOT IN; AND, OR, NOT and parentheses; values 'text' or numbers, e.g. "
        "tags.team = 'vision' AND status = 'ready'. A mistake is a 400 naming its column"))] = None
    order_by: Annotated[str | None, BeforeValidator(_blank_is_none),
                        Field(description="created_at, version or name, then ASC or DESC (default created_at DESC)")
                        ] = None


class VersionQuery(PageQuery):
    invalid_fields = {**PageQuery.invalid_fields,
                      "status": Invalid("invalid_status", f"status must be one of {', '.join(VERSION_STATUSES)}")}

    status: Annotated[Status | None, BeforeValidator(_blank_is_none), Field(description="Only versions in this state")] = None


class AuditQuery(PageQuery):
    action: Annotated[str | None, BeforeValidator(_blank_is_none),
                      Field(description="Only events of this action (e.g. version.push)")] = None


# --- request bodies -------------------------------------------------------------------------------

class Preprocessing(BaseModel):
    """label_image.py settings: resize to height x width, subtract mean, divide by std."""

    model_config = ConfigDict(extra="forbid")

    input_height: int | None = Field(None, ge=1, le=8192)
    input_width: int | None = Field(None, ge=1, le=8192)
    input_mean: float | None = None
    input_std: float | None = Field(None, description="Not 0: pixels are divided by it")


def _preprocessing(value: object) -> object:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest('"preprocessing" must be an object', code="invalid_preprocessing")
    return catalog.validate_preprocessing(value)


_FLAT = "The same as preprocessing.{key}: settings may be sent flat or nested, not both with different values"
_UPDATE_FIELDS = ", ".join(PREPROCESSING_KEYS)


class VersionUpdate(Request):
    """Edit a version's preprocessing settings and/or description.  The settings may be sent flat
    ({"input_mean": 127.5}) or nested under "preprocessing", as the version shows them; a setting sent
    both ways must have the same value.  Settings left out keep theirs."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    invalid = Invalid("invalid_version_update",
                      'send a JSON object with preprocessing settings, flat ({"input_mean": 127.5, "input_std": '
                      '127.5}) or nested ({"preprocessing": {"input_mean": 127.5}}), and/or "description"')
    invalid_fields = {"description": Invalid(
        "invalid_version_update", f'"description" must be a string of at most {catalog.MAX_DESCRIPTION:,} characters')}

    preprocessing: Annotated[Preprocessing | None, _check(_preprocessing)] = None
    description: Annotated[str | None, Strict(), Field(max_length=catalog.MAX_DESCRIPTION)] = None
    input_height: int | None = Field(None, ge=1, le=8192, description=_FLAT.format(key="input_height"))
    input_width: int | None = Field(None, ge=1, le=8192, description=_FLAT.format(key="input_width"))
    input_mean: float | None = Field(None, description=_FLAT.format(key="input_mean"))
    input_std: float | None = Field(None, description=_FLAT.format(key="input_std"))

    @model_validator(mode="before")
    @classmethod
    def _flat_or_nested(cls, value: object) -> object:
        """Fold the flat settings into "preprocessing", so that a handler reads only that."""
        if value == {}:
            raise ValueError("empty")
        if not isinstance(value, dict):
            return value
        unknown = sorted(map(str, set(value) - set(cls.model_fields)))
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(map(repr, unknown))}: send {_UPDATE_FIELDS} (flat, or "
                                 'nested under "preprocessing") and/or "description"', code="invalid_version_update")
        flat = catalog.validate_preprocessing({k: value[k] for k in PREPROCESSING_KEYS if k in value})
        if not flat:
            return value
        nested = _preprocessing(value.get("preprocessing")) or {}
        for key in flat:
            if key in nested and nested[key] != flat[key]:
                raise InvalidRequest(f"{key} is sent twice with different values: {flat[key]:g} at the top level and "
                                     f'{nested[key]:g} under "preprocessing"; send each setting once, flat or nested',
                                     code="conflicting_preprocessing")
        rest = {k: v for k, v in value.items() if k not in PREPROCESSING_KEYS}
        return {**rest, "preprocessing": {**nested, **flat}}


class ModelUpdate(Request):
    """Edit a model's description (a version's is edited on the version)."""

    invalid = Invalid("invalid_model_update",
                      'send a JSON object like {"description": "Flower classifier, retrained weekly"}: a string '
                      f"of at most {catalog.MAX_DESCRIPTION:,} characters, nothing else")

    description: Annotated[str, Strict(), Field(max_length=catalog.MAX_DESCRIPTION,
                                                description="Shown with the model in listings and on its page")]


class TagsUpdate(Request):
    """Tags to set (a value) or delete (null), e.g. {"team": "vision", "old": null}; keys: 1-250 letters,
    digits, '_', '-', '.', '/' or ':'; values: at most 5,000 characters."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "minProperties": 1, "additionalProperties": {"type": ["string", "null"], "maxLength": 5000}})
    invalid = Invalid("invalid_tags", 'send a JSON object of tags, e.g. {"team": "vision", "old": null} '
                                      "(null deletes a tag)")

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, value: object) -> object:
        return catalog.validate_tags(value)

    @property
    def changes(self) -> dict[str, str | None]:
        return dict(self.model_extra or {})


class MetricsBody(Request):
    invalid = Invalid("invalid_metrics", 'send a JSON body like {"metrics": {"accuracy@val": 0.78}, "eval_set": '
                                         '"val", "step": 12000}')

    metrics: dict[str, Any] = Field(description="Names (1-128 letters, digits, _ - . / : @) and finite numbers")
    eval_set: Annotated[str | None, Field(max_length=64, description="The evaluation set they were measured on")] = None
    step: Annotated[int | None, Field(ge=0, le=MAX_INT64, description="The training step they belong to")] = None


class Metric(Answer):
    version: int
    name: str
    value: float
    eval_set: str | None
    step: int | None
    source: str = Field(description="api, or compare (recorded by a comparison with expected labels)")
    report_id: int | None = Field(description="The comparison report that measured it")
    created_by: str
    created_at: datetime


class MetricList(BaseModel):
    metrics: list[Metric] = Field(description="Oldest first")


class Tags(BaseModel):
    tags: dict[str, str] = Field(description="The tags after the write")


class PredictionOutputUpdate(Request):
    """Choose the output :label and :compare rank classes by."""

    invalid = Invalid("invalid_prediction_output",
                      'send a JSON object like {"prediction_output": "second/scores", "reason": "..."}: one of the '
                      "outputs of the version's default signature (its output_nodes)")

    prediction_output: Annotated[str, Strict(), Field(
        min_length=1, max_length=255, description="An output node of the default signature (node or node:0)")]
    reason: Annotated[str, Strict(), Field(max_length=catalog.MAX_REASON,
                                           description="Why (kept in the audit log and shown with the version)")] = ""


class AliasBody(Request):
    model_config = ConfigDict(extra="ignore")
    invalid = Invalid("invalid_alias_body",
                      f'send a JSON body like {{"version": 3}}: a version number from 1 to {MAX_INT64}')

    version: Annotated[VersionNumber, BeforeValidator(_decimal)]
    reason: Annotated[str, Strict(), Field(max_length=1000, description="Why it moves (kept in the alias's "
                                                                         "history; needed for a protected alias)")] = ""
    force: Annotated[bool, Strict(), Field(description="Move past a failing gate (admin, with a reason)")] = False


class AliasMove(Answer):
    id: int
    alias: str
    from_version: int | None = Field(description="null: the alias was created by this move")
    to_version: int | None = Field(description="null: the alias was removed by this move")
    actor: str
    reason: str
    forced: bool = Field(description="An admin moved it past its failing gate")
    at: datetime


class AliasHistory(BaseModel):
    model: str
    alias: str
    moves: list[AliasMove] = Field(description="Newest first")
    next_page_token: str | None


class AliasState(BaseModel):
    model: str
    alias: str
    version: int | None = Field(description="The version it points at (at the time asked, with at=); null: "
                                            "it did not exist then")
    at: datetime | None = Field(description="The time asked about (at=); null: now")
    move: AliasMove | None = Field(description="The move that put it there")
    protected: bool
    gate: dict[str, Any] | None


class AliasRuleBody(Request):
    invalid = Invalid("invalid_alias_rule", 'send a JSON body like {"protected": true, "gate": {"conditions": '
                                            '[{"kind": "verified"}]}} (gate: null for none)')

    protected: Annotated[bool, Strict()]
    gate: dict[str, Any] | None = None


class AliasRule(Answer):
    alias: str
    protected: bool
    gate: dict[str, Any] | None
    updated_by: str
    updated_at: datetime | None


class RollbackBody(Request):
    model_config = ConfigDict(extra="ignore")
    invalid = Invalid("invalid_rollback", 'send a JSON body like {"reason": "v7 doubles the latency"}')

    reason: Annotated[str, Strict(), Field(max_length=1000)] = ""
    force: Annotated[bool, Strict()] = False


class GateResult(BaseModel):
    condition: dict[str, Any]
    passed: bool
    measured: Any
    threshold: dict[str, Any] | None
    message: str


class AllowedOpsRequest(Request):
    invalid = Invalid("invalid_allowed_ops",
                      'send a JSON body like {"ops": ["ReadFile"], "reason": "reads its vocabulary file"} '
                      '({"ops": []} clears the list)')
    invalid_fields = {"reason": Invalid("invalid_allowed_ops", '"reason" must be a string')}

    ops: Annotated[list[OpName], _check(safety.validate_ops), Field(
        max_length=safety.MAX_ALLOWED_OPS,
        description="Op type names exactly as the safety report lists them; [] clears the list")]
    reason: Annotated[str, Strict(), Field(description="Why these ops are safe here (required unless clearing)")] = ""


def _served(value: object) -> object:
    if isinstance(value, list) and any(isinstance(v, int) and v > MAX_INT64 for v in value):
        raise InvalidRequest(f"version numbers go up to {MAX_INT64}", code="invalid_served_versions")
    return value


class ServedVersions(Request):
    """Which versions a TF Serving export serves."""

    invalid = Invalid("invalid_served_versions",
                      'send {"versions": [1, 3]} to serve those versions, {"versions": "all"} for every ready '
                      'version, or {"versions": null} for the default (every aliased version and the newest '
                      "ready one)")
    invalid_fields = {"versions": Invalid(
        "invalid_served_versions", '"versions" must be a non-empty list of version numbers, "all" for every '
        "ready version, or null for the default (every aliased version and the newest ready one)")}

    versions: Annotated[
        Annotated[list[VersionNumber], Field(min_length=1, description="these versions")]
        | Annotated[Literal["all"], Field(description="every ready version")]
        | Annotated[None, Field(description="the default: every aliased version and the newest ready one")],
        _check(_served)]


class TokenRequest(Request):
    invalid = Invalid("invalid_token_request",
                      'send a JSON object like {"name": "ci", "scope": "write"} (scope: read, write or admin; '
                      "default read)")

    name: Annotated[str, Field(pattern=auth.TOKEN_NAME_RE.pattern), Strict(),
                    _check(lambda v: auth.validate_token_name(v) if isinstance(v, str) else v)]
    scope: Annotated[Scope, _check(lambda v: auth.validate_scope(v) if isinstance(v, str) else v)] = auth.READ


def _nodes(kind: str):
    return _check(lambda value: parse_node_list(value, kind) if isinstance(value, str) or value is None else value)


_FILE_DESCRIPTIONS = {
    "meta": "model.ckpt.meta",
    "index": "model.ckpt.index",
    "data": "every model.ckpt.data-NNNNN-of-NNNNN shard",
    "graph": "inference GraphDef, binary .pb or text .pbtxt",
    "frozen": "an already-frozen GraphDef, instead of a checkpoint",
    "saved_model": "a TF2 SavedModel folder as .zip or .tar.gz, instead of a checkpoint",
    "keras": "a Keras model (.keras or .h5), instead of a checkpoint",
    "labels": "one label per line",
}
assert set(_FILE_DESCRIPTIONS) == set(FILE_FIELDS)


def _sent_as_text(schema: dict) -> None:
    """A list the form sends as one comma-separated text field."""
    schema.pop("items", None)
    schema.pop("default", None)
    schema["type"] = "string"


def _web_url(value: str, field: str) -> str:
    value = value.strip()
    if value and not value.lower().startswith(("http://", "https://")):
        raise InvalidRequest(f"{field} must be an http:// or https:// URL, not {value[:80]!r}", code="invalid_field")
    return value


def _push_tags(value: object) -> object:
    """A push's ``tags`` field: a JSON object of text values (no deletions: the version is new)."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidRequest('the tags field is not JSON: send an object like {"team": "vision"}',
                                 code="invalid_tags") from None
    tags = catalog.validate_tags(value)
    missing = [k for k, v in tags.items() if v is None]
    if missing:
        raise InvalidRequest(f"tag {missing[0]!r} has no value: a push sets tags, it deletes none", code="invalid_tags")
    return tags


def _push_version_number(value: object) -> object:
    """A push's ``version`` field: blank is the next number; anything else the service's check refuses with
    the range to use."""
    return None if value in ("", None) else catalog.check_version_number(value)


class PushForm(Request):
    """A push's text fields, validated; its files are streamed to storage as they arrive
    (``registry.uploads.multipart``) and only documented here (``file_fields``)."""

    model_config = ConfigDict(extra="ignore")
    invalid = Invalid("invalid_field", "invalid push field {name}")

    output_nodes: Annotated[list[str], _nodes("output node"),
                            Field(description="comma-separated node names", json_schema_extra=_sent_as_text)] = []
    input_nodes: Annotated[list[str], _nodes("input node"),
                           Field(description="comma-separated node names", json_schema_extra=_sent_as_text)] = []
    description: str = ""
    signature: Annotated[str, AfterValidator(str.strip),
                         Field(description="the SavedModel signature to freeze (serving_default)")] = ""
    signatures: Annotated[list[dict], _check(parse_signatures),
                          Field(description='more signatures of a checkpoint or frozen-graph push, as JSON: '
                                '[{"name": "classify", "method": "classify", "inputs": ["tf_example"], '
                                '"outputs": ["scores"]}] (inputs and outputs: node names, or {key: node})',
                                json_schema_extra=_sent_as_text)] = []
    input_height: int | None = Field(None, ge=1, le=8192)
    input_width: int | None = Field(None, ge=1, le=8192)
    input_mean: float | None = None
    input_std: float | None = None
    tags: Annotated[dict[str, str], _check(_push_tags),
                    Field(description='the version\'s tags, as JSON: {"team": "vision"}',
                          json_schema_extra=_sent_as_text)] = {}
    source_commit: str = Field("", max_length=64, description="lineage: the commit the model was trained from")
    run_url: Annotated[str, AfterValidator(lambda v: _web_url(v, "run_url")),
                       Field(max_length=2048, description="lineage: the training run's URL (http or https)")] = ""
    dataset: str = Field("", max_length=255, description="lineage: the dataset it was trained on")
    version: Annotated[Annotated[int, Field(ge=1, le=catalog.MAX_VERSION_NUMBER)] | None, _check(_push_version_number),
                       Field(description="the version number to register, above every number the model had (TF "
                                         "Serving's folder number, e.g. 123); default: the next one")] = None

    @property
    def lineage(self) -> dict[str, str]:
        return {k: v for k in ("source_commit", "run_url", "dataset") if (v := getattr(self, k).strip())}

    @model_validator(mode="before")
    @classmethod
    def _preprocessing(cls, form: object) -> object:
        if not isinstance(form, dict):
            return form
        given = {k: form[k] for k in PREPROCESSING_KEYS if form.get(k, "") != ""}
        rest = {k: v for k, v in form.items() if k not in PREPROCESSING_KEYS}
        return {**rest, **catalog.validate_preprocessing(given)}

    @property
    def preprocessing(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in PREPROCESSING_KEYS if getattr(self, k) is not None}

    @classmethod
    def file_fields(cls) -> dict[str, dict]:
        binary = {"type": "string", "format": "binary"}
        return {name: ({"type": "array", "items": binary} if name == "data" else dict(binary))
                | {"description": description} for name, description in _FILE_DESCRIPTIONS.items()}


# --- answers --------------------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: e.g. invalid_model_name, version_not_ready")
    message: str = Field(description="What went wrong and what to do instead")


class Error(BaseModel):
    """Every error of /api/v1 (rendered by ``registry.http_errors``)."""

    error: ErrorDetail


class Model(Answer):
    name: str
    description: str
    version_count: int
    latest_version: int | None = Field(description="Newest ready version")
    last_version: int = Field(description="Highest version number handed out")
    aliases: dict[str, int]
    allowed_ops: list[str] = Field(description="Ops an admin allowed for this model's graphs despite the op scan")
    served_versions: list[int] | Literal["all"] | None = Field(
        None, description='Versions a TF Serving export serves: a list, "all", or null for the default (every '
                          "aliased version and the newest ready one)")
    tags: dict[str, str] = Field(default_factory=dict, description="Key/value tags (PATCH .../tags)")
    created_at: datetime
    updated_at: datetime


class ModelList(BaseModel):
    models: list[Model]
    next_page_token: str | None


class InputNode(Free):
    name: str
    dtype: str
    shape: list[int | None] | None
    optional: bool = Field(description="PlaceholderWithDefault: feeding it is optional")


class File(Answer):
    role: Literal[FILE_FIELDS + (SAVED_MODEL_SOURCE,)]  # type: ignore[valid-type]
    filename: str
    sha256: str
    size: int


class Frozen(BaseModel):
    sha256: str
    size: int


class Verification(Free):
    status: str = Field(description="passed, failed or skipped (with its reason)")
    max_abs_diff: float | None = None
    tolerance: float | None = None


class SignatureTensor(Free):
    name: str = Field(description="The frozen graph's tensor (node:0)")
    dtype: str | None = Field(None, description="TensorFlow's name for it; absent: taken from the graph")
    shape: list[int | None] | None = Field(None, description="null dimensions take any size; null: unknown rank")
    optional: bool = Field(False, description="PlaceholderWithDefault: feeding it is optional")


class Signature(Free):
    """One named entry point into the frozen graph, as TF Serving's signature map has it."""

    method: str = Field(description="tensorflow/serving/predict, tensorflow/serving/classify or "
                                    "tensorflow/serving/regress")
    inputs: dict[str, SignatureTensor]
    outputs: dict[str, SignatureTensor]
    verification: Verification | None = Field(None, description="How the freeze checked this signature's outputs")


class Flag(Free):
    op: str
    category: Literal[CATEGORIES]  # type: ignore[valid-type]
    count: int = 0
    nodes: list[str] = []
    allowed: bool = Field(False, description="On the model's op allowlist")


class Safety(Free):
    op_histogram: dict[str, int] = {}
    flags: list[Flag] = []
    flagged: bool = Field(False, description="Some flagged op is not on the model's allowlist: never run")
    scan_flagged: bool = Field(False, description="The op scan alone flagged something")
    allowed_ops: list[str] = []
    upload_flags: list[Any] = []


class Agreement(Free):
    """Top-1 agreement with the version before, from the last comparison of the two."""

    version: int
    top1_agreement: float | None = None
    images: int = 0


_LIFTED = ("verification", "safety", "failed_signatures", "prediction_output")  # answered beside conversion


class SavedModelState(BaseModel):
    state: Literal["pending", "ready", "failed", "not_built"] | None = Field(
        description="pending: being built (downloads answer 409 with Retry-After); not_built: converted before "
                    "SavedModels followed every conversion (an export builds it); null: not ready")
    message: str = ""


def _saved_model_state(v: VersionInfo) -> dict:
    if v.file("saved_model") is not None:
        return {"state": "ready"}
    if v.status != "ready":
        return {"state": None}
    return {"state": v.saved_model_state or "not_built", "message": v.saved_model_message}


class Version(Answer):
    model: str
    version: int = Field(ge=1)
    status: Status
    status_message: str
    source: Literal[SOURCES]  # type: ignore[valid-type]
    description: str
    aliases: list[str]
    output_nodes: list[str] | None
    output_nodes_detected: bool | None
    requested_output_nodes: list[str] | None
    input_nodes: list[InputNode] | None
    preprocessing: Preprocessing = Field(description="label_image.py's settings; input_height and input_width are "
                                                     "null until the conversion reads them from the input's shape "
                                                     "(unless set at push)")
    frozen: Frozen | None
    tensorflow_version: str | None
    verification: Verification | None
    safety: Safety | None
    refusal: str | None = Field(description="Why the label service and the export refuse this ready version "
                                            "(null: they do not)")
    default_signature: str = Field(description="The signature input_nodes and output_nodes describe, and :label runs")
    signatures: dict[str, Signature] | None = Field(description="Every signature of the frozen graph, by name "
                                                                "(null until converted)")
    failed_signatures: dict[str, str] = Field(description="Signatures that could not be frozen or verified, "
                                                          "with why; they are not served")
    prediction_output: str | None = Field(description="The output :label and :compare rank classes by")
    prediction_output_reason: str | None = Field(description="Why that output: the converter's reason, or who "
                                                             "chose it (PUT .../prediction-output)")
    saved_model: SavedModelState = Field(description="The TF Serving SavedModel, built after the version is ready")
    conversion: dict[str, Any] | None
    files: list[File]
    agreement_with_previous: Agreement | None
    tags: dict[str, str] = Field(description="Key/value tags (PATCH .../tags)")
    lineage: dict[str, Any] = Field(description="global_step (read from the checkpoint), source_commit, run_url, "
                                                "dataset, where known")
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None

    @classmethod
    def of(cls, v: VersionInfo) -> Version:
        conversion = v.conversion or {}
        report = catalog.signature_report(v)
        return cls.model_validate({
            "model": v.model, "version": v.version, "status": v.status, "status_message": v.status_message,
            "source": v.source, "description": v.description, "aliases": list(v.aliases),
            "output_nodes": v.output_nodes, "output_nodes_detected": v.output_nodes_detected,
            "requested_output_nodes": v.requested_output_nodes, "input_nodes": v.input_nodes,
            "preprocessing": v.known_preprocessing,
            "frozen": {"sha256": v.frozen_sha256, "size": v.frozen_size} if v.frozen_sha256 else None,
            "tensorflow_version": v.tf_version, "verification": conversion.get("verification"),
            "safety": safety.summary(v.conversion, v.allowed_ops) if v.conversion else None,
            "refusal": v.refusal,
            **{k: report[k] for k in ("default_signature", "signatures", "failed_signatures", "prediction_output",
                                      "prediction_output_reason")},
            "saved_model": _saved_model_state(v),
            "conversion": {k: c for k, c in conversion.items() if k not in _LIFTED} or None,
            "files": v.files, "agreement_with_previous": v.agreement_with_previous,
            "tags": v.tags, "lineage": v.lineage, "created_at": v.created_at, "updated_at": v.updated_at, "ready_at": v.ready_at,
        })


class VersionList(BaseModel):
    versions: list[Version]
    next_page_token: str | None

    @classmethod
    def of(cls, page) -> VersionList:
        return cls(versions=[Version.of(v) for v in page.items], next_page_token=page.next_page_token)


class DeletedVersion(Answer):
    model: str
    version: int
    status: Status = Field(description="The status it had when deleted")
    aliases_removed: list[str] = Field(description="Aliases that pointed at it and are gone with it")
    job_cancelled: bool = Field(description="Its conversion was still queued or running")


class DeletedModel(Answer):
    model: str
    versions_deleted: int
    aliases_removed: list[str]
    jobs_cancelled: int
    last_version: int = Field(description="Highest number it had; pushing the name again goes on from here")


class Alias(BaseModel):
    model: str
    alias: str
    version: int


class LastChange(Free):
    actor: str
    at: datetime
    reason: str


class AllowedOps(Answer):
    model: str
    ops: list[str]
    last_change: LastChange | None = Field(description="The latest change, from the audit log")


class ServedVersionsAnswer(BaseModel):
    model: str
    versions: list[int] | Literal["all"] | None


class SkippedVersion(Free):
    version: int
    reason: str


class SkippedAlias(Free):
    alias: str
    version: int
    reason: str


class HeldLabel(Free):
    alias: str
    version: int
    moving_to: int


class ModelPlan(Answer):
    name: str
    served_versions_setting: list[int] | Literal["all"] | None = Field(validation_alias="setting")
    versions: list[int] = Field(description="Versions to serve")
    exported_versions: list[int] = Field(validation_alias="exported",
                                         description="Versions in the export root, as models.config lists")
    labels: dict[str, int]
    skipped_versions: list[SkippedVersion]
    skipped_aliases: list[SkippedAlias]
    held_labels: list[HeldLabel] = Field(validation_alias="held", description=(
        "Labels kept on a loaded version until the new one had REGISTRY_SERVING_LABEL_DELAY seconds to load"))
    skipped: str | None = Field(description="Why the whole model is left out")


class ServingPlan(BaseModel):
    root: str
    models: list[ModelPlan]


class Token(Answer):
    id: int
    name: str
    scope: Scope
    prefix: str = Field(description="The token's public beginning (rgt_xxxxxxxx)")
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    active: bool

    @classmethod
    def of(cls, info: auth.TokenInfo, **extra: str) -> Token:
        return cls.model_validate({**{k: getattr(info, k) for k in Token.model_fields},
                                   "prefix": auth.TOKEN_PREFIX + info.prefix, **extra})


class NewToken(Token):
    token: str = Field(description="The token itself: only in the answer to its creation")


class TokenList(BaseModel):
    tokens: list[Token]


class AuditEvent(Answer):
    id: int
    created_at: datetime
    actor: str = Field(description="Token name, or anonymous, system, cli")
    token_id: int | None
    action: str = Field(description="version.push, version.update, version.delete, model.update, model.delete, "
                                    "model.allowed_ops, model.serving, alias.set, alias.delete, token.create, "
                                    "token.revoke, ...")
    target: str
    details: dict[str, Any] | None
    remote_addr: str | None


class AuditPage(BaseModel):
    events: list[AuditEvent]
    next_page_token: str | None


# --- shadow traffic --------------------------------------------------------------------------------

class ShadowBody(Request):
    model_config = ConfigDict(extra="ignore")
    invalid = Invalid("invalid_shadow_body", 'send a JSON body like {"version": 3}: the number of a ready version '
                                             f"(1 to {MAX_INT64}) that gets a copy of the alias's traffic")

    version: Annotated[VersionNumber, BeforeValidator(_decimal)]


class ShadowQuery(Request):
    model_config = ConfigDict(extra="ignore")  # other query arguments are not ours to refuse
    invalid = Invalid("invalid_time", "{name} must be an ISO 8601 time such as 2026-11-30T06:00:00Z, not {value}")

    since: datetime | None = Field(None, description="Windows starting at or after this time (UTC unless it says); "
                                                     "default: 24 hours before until")
    until: datetime | None = Field(None, description="Windows starting before this time; default: now")


class ShadowSetting(Answer):
    model: str
    alias: str
    version: int = Field(description="The alias's version: it answers every request")
    shadow_version: int | None = Field(description="The version that gets a copy of each request; null: off")


class ShadowFigures(BaseModel):
    requests: int = Field(description="Requests answered through the alias while it had this shadow")
    compared: int = Field(description="Inputs both versions answered")
    agreed: int = Field(description="Of those, inputs where they agree (top-1 class; numbers within the tolerance)")
    agreement: float | None = Field(description="agreed / compared; null when nothing was compared")
    dropped: int = Field(description="Copies dropped because the shadow queue was full")
    errors: int = Field(description="Copies the shadow failed on")
    values: int = Field(description="Output values compared")
    mean_abs_diff: float | None = Field(description="Mean |primary - shadow| over the values compared")
    max_abs_diff: float | None = Field(description="Largest |primary - shadow|")


class ShadowWindow(ShadowFigures):
    window_start: datetime
    primary_version: int
    shadow_version: int


class ShadowSample(BaseModel):
    created_at: datetime
    primary_version: int
    shadow_version: int
    inputs: Any = Field(description="The input, by signature key, as TF Serving's JSON writes it")
    primary_outputs: Any
    shadow_outputs: Any


class ShadowReport(ShadowSetting):
    since: datetime
    until: datetime
    window_seconds: float = Field(description="The aggregation window (REGISTRY_SHADOW_WINDOW_SECONDS)")
    totals: ShadowFigures = Field(description="The windows in [since, until) added up")
    windows: list[ShadowWindow] = Field(description="Oldest first")
    samples: list[ShadowSample] = Field(description="Disagreeing inputs kept (REGISTRY_SHADOW_SAMPLES), newest first")


# --- comparison reports (registry.evaluation.reports) ---------------------------------------------

class ComparedVersion(BaseModel):
    version: int
    sha256: str | None = Field(description="The frozen graph compared")
    ref: str | None = Field(None, description="What the request named it by (a number, an alias, latest)")
    deleted: bool = Field(description="Deleted (or replaced) since the comparison: the report stays readable")


class ComparedSet(BaseModel):
    name: str
    revision: int | None
    deleted: bool = Field(description="The set revision was deleted since the comparison")


class Comparison(Answer):
    id: int
    model: str
    url: str = Field(description="This report's permalink")
    status: Literal["queued", "running", "done", "failed"]
    trigger: str = Field(description="manual, or auto (a version became ready)")
    eval_set: ComparedSet | None = Field(description="null: compared on uploaded inputs")
    signature: str = Field(description="The signature asked for (empty: each version's default)")
    versions: list[ComparedVersion]
    settings: dict[str, Any] = Field(description="top_k, tolerance, kind")
    done: int = Field(description="Inputs every version has run on so far")
    total: int = Field(description="Inputs to compare on")
    report: dict[str, Any] | None = Field(description="The figures, once done: per version accuracy, confusion "
                                                      "matrix, latency; agreement or differences per pair")
    error: str | None
    created_by: str
    created_at: datetime
    finished_at: datetime | None


class AutoCompare(Request):
    invalid = Invalid("invalid_auto_compare", 'send {"sets": ["holdout"], "reference": "production"} (reference '
                                              'defaults to production), or {"sets": null} to turn it off')

    sets: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        description="Evaluation sets each newly ready version is compared on (null: off)")
    reference: Annotated[str | None, Field(max_length=64, description="The alias whose version it is compared "
                                                                      "with (default production)")] = None


class AutoCompareSetting(BaseModel):
    sets: list[str] | None = Field(description="Evaluation sets each newly ready version is compared on (null: off)")
    reference: str | None = Field(description="The alias whose version it is compared with")


class ComparisonList(BaseModel):
    comparisons: list[Comparison] = Field(description="Newest first")
    next_page_token: str | None


# --- evaluation sets (registry.evaluation.sets) ----------------------------------------------------

EvalSetName = Annotated[str, Field(pattern=eval_sets.SET_NAME_RE.pattern,
                                   description="Evaluation set name: 1-64 letters, digits, '_', '-' or '.'")]


class EvalSetForm(Request):
    """An evaluation set upload's text fields; its file (``file``) streams to storage as it arrives and is
    only documented here (``file_fields``)."""

    model_config = ConfigDict(extra="ignore")  # a page's form also carries its csrf_token
    invalid = Invalid("invalid_field", "invalid evaluation set field {name}")

    label_feature: str = Field("", description="For a TFRecord set: the tf.Example feature holding each "
                                               "record's expected label or value")
    description: str = ""

    @classmethod
    def file_fields(cls) -> dict[str, dict]:
        return {"file": {"type": "string", "format": "binary", "description": (
            "The set: a .zip/.tar/.tar.gz of images (optional expected.txt, one label per image in sorted "
            "member order, or a file,label CSV), JSON Lines (.jsonl) of instances with optional \"expected\", "
            ".npz arrays keyed by input name (optional \"expected\"), or a .tfrecord of tf.Examples")}}


class EvalSet(Answer):
    model: str
    name: str
    revision: int
    ref: str = Field(description="NAME@REVISION, as :compare's eval_set takes it")
    format: Literal[eval_formats]  # type: ignore[valid-type]
    filename: str = Field(description="The uploaded file's name")
    sha256: str
    size: int
    count: int = Field(description="Inputs in the set")
    summary: dict[str, Any] = Field(description=(
        "What the set holds: inputs (name -> dtype, shape), expected (whether it has expected values), "
        "labels (its distinct expected labels), images (count per format), features and label_feature "
        "(TFRecord)"))
    description: str
    created_by: str
    created_at: datetime


class EvalSetSummary(EvalSet):
    revisions: int = Field(description="Live (not deleted) revisions of the set")


class EvalSetList(BaseModel):
    model: str
    eval_sets: list[EvalSetSummary] = Field(description="Each set's latest revision, by name")


class EvalSetRevisions(BaseModel):
    model: str
    name: str
    revisions: list[EvalSet] = Field(description="Newest first")


class DeletedEvalSet(BaseModel):
    model: str
    name: str
    revisions_deleted: list[int]


# --- webhooks --------------------------------------------------------------------------------------

def _webhook_url(value: object) -> object:
    return webhook_hooks.validate_url(value) if isinstance(value, str) else value


def _webhook_events(value: object) -> object:
    return webhook_hooks.validate_events(value) if isinstance(value, list) else value


class WebhookBody(Request):
    invalid = Invalid("invalid_webhook", 'send a JSON body like {"url": "https://ci.example.com/hook", "events": '
                                         '["version.ready", "alias.moved"], "model": "cnn"} (model: optional)')

    url: Annotated[str, Strict(), _check(_webhook_url), Field(
        max_length=2000, description="http:// or https://; a private or loopback address is refused unless "
                                     "REGISTRY_WEBHOOK_ALLOW_PRIVATE=true")]
    events: Annotated[list[Literal[WEBHOOK_EVENTS]], _check(_webhook_events),  # type: ignore[valid-type]
                      Field(min_length=1, description="The events to send")]
    model: Annotated[ModelName | None, Field(description="Only this model's events (default: every model)")] = None
    secret: Annotated[str | None, Strict(), Field(
        min_length=16, max_length=128, description="The HMAC-SHA256 key of the signatures (default: one made "
                                                   "for the hook, shown only in this answer)")] = None
    description: Annotated[str, Strict(), Field(max_length=1000)] = ""


class Webhook(Answer):
    id: int
    url: str
    events: list[str]
    model: str | None = Field(description="null: every model")
    description: str
    active: bool
    created_by: str
    created_at: datetime
    deleted_at: datetime | None


class NewWebhook(Webhook):
    secret: str = Field(description="The signing secret: only in the answer to the hook's creation")


class WebhookList(BaseModel):
    webhooks: list[Webhook]


class WebhookDelivery(Answer):
    id: int = Field(description="The delivery id (X-Registry-Delivery)")
    webhook_id: int
    event_id: int
    event: str
    model: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime = Field(description="When a pending delivery is tried next")
    last_status_code: int | None = Field(description="The receiver's last HTTP status (null: no answer)")
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any] = Field(description="The event's fields (delivery_id and timestamp are added when sent)")


class WebhookDeliveryPage(BaseModel):
    deliveries: list[WebhookDelivery] = Field(description="Newest first")
    next_page_token: str | None
