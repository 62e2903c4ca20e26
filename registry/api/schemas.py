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

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator

from registry import auth, catalog, safety
from registry.converter.ops import CATEGORIES
from registry.entities import PREPROCESSING_KEYS, SAVED_MODEL_SOURCE, SOURCES, VERSION_STATUSES, VersionInfo
from registry.errors import InvalidRequest
from registry.pagination import DEFAULT_PAGE_SIZE, MAX_INT64, MAX_PAGE_SIZE, checked_token
from registry.uploads.checks import parse_node_list, parse_signatures
from registry.uploads.files import FILE_FIELDS


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
            "created_at": v.created_at, "updated_at": v.updated_at, "ready_at": v.ready_at,
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
