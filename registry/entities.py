"""Plain records the services hand out; ORM rows never leave the services."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from registry import safety, signatures as sigs

READY, QUEUED, CONVERTING, FAILED = "ready", "queued", "converting", "failed"
VERSION_STATUSES = (QUEUED, CONVERTING, READY, FAILED)
# A version's conversion job (registry.jobs): its kind, and the statuses it adds to QUEUED and FAILED.
CONVERT = "convert"
RUNNING, SUCCEEDED = "running", "succeeded"
# How TensorFlow Serving names these states (ModelVersionStatus.State), for its REST and gRPC APIs.
TF_SERVING_STATE = {QUEUED: "START", CONVERTING: "LOADING", READY: "AVAILABLE", FAILED: "END"}

# What a version was pushed as.
SOURCE_META = "checkpoint+meta"
SOURCE_GRAPH = "checkpoint+graph"
SOURCE_FROZEN = "frozen"
SOURCE_SAVED_MODEL = "saved_model"  # a TF2 SavedModel folder, pushed as a .zip or .tar.gz
SOURCE_KERAS = "keras"  # a .keras or .h5 file
SOURCES = (SOURCE_META, SOURCE_GRAPH, SOURCE_FROZEN, SOURCE_SAVED_MODEL, SOURCE_KERAS)

# The version file holding the TF Serving SavedModel built from the frozen graph: a plain .tar (float
# weights do not compress; versions built before stored a .tar.gz).
SAVED_MODEL = "saved_model"
SAVED_MODEL_FILENAME = "saved_model.tar"
# The follow-on job that builds it once the version is ready, and the states the version shows meanwhile.
SAVED_MODEL_JOB = "saved_model"
SAVED_MODEL_PENDING, SAVED_MODEL_FAILED = "pending", "failed"
SAVED_MODEL_STATES = (SAVED_MODEL_PENDING, READY, SAVED_MODEL_FAILED)
COMPARE_JOB = "compare"  # a comparison of versions (Job.report_id), run by the same workers
SAVED_MODEL_SOURCE = "saved_model_src"  # the version file of a pushed SavedModel archive


# label_image.py's defaults; height and width come from the input's shape when it has one.
DEFAULT_IMAGE_SIZE = 299
DEFAULT_INPUT_MEAN = 0.0
DEFAULT_INPUT_STD = 255.0
PREPROCESSING_KEYS = ("input_height", "input_width", "input_mean", "input_std")
# Ops by which a graph decodes an encoded image it is given as a string.
IMAGE_DECODE_OPS = ("DecodeJpeg", "DecodeAndCropJpeg", "DecodePng", "DecodeBmp", "DecodeGif", "DecodeImage")


def label_lines(text: bytes | str) -> list[str]:
    """A labels file's labels, one per line, each stripped as label_image.py strips them, without the
    blank lines that end the file: an editor's extra newline at the end is not a class (counted as one,
    it made a 1001-line ImageNet list look like a background line plus 1001 classes, and shifted every
    label by one)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


@dataclass(frozen=True)
class FileInfo:
    role: str
    filename: str
    sha256: str
    size: int


@dataclass(frozen=True)
class VersionInfo:
    id: int
    model: str
    version: int
    status: str
    status_message: str
    source: str
    description: str
    requested_output_nodes: list[str] | None
    requested_input_nodes: list[str] | None
    output_nodes: list[str] | None
    output_nodes_detected: bool | None
    input_nodes: list[dict[str, Any]] | None
    frozen_sha256: str | None
    frozen_size: int | None
    tf_version: str | None
    conversion: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None
    preprocessing_settings: dict[str, Any] | None = None
    signature: str | None = None
    files: list[FileInfo] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    # {"version", "top1_agreement", "images"} from the last comparison with the version before, if any
    agreement_with_previous: dict[str, Any] | None = None
    # The model's admin-set op allowlist (see registry.safety), read with the version.
    allowed_ops: list[str] = field(default_factory=list)
    signatures: dict[str, Any] | None = None  # registry.signatures: every signature of the frozen graph
    requested_signatures: list[dict[str, Any]] | None = None  # declared with the push
    prediction_output: str | None = None  # set at conversion or by a user; None: the first output
    saved_model_state: str | None = None  # pending, ready or failed; None: built before the state was kept
    saved_model_message: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    # lineage: the checkpoint's global_step, and what the push said about where it came from
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def default_signature(self) -> str:
        """The signature input_nodes and output_nodes describe, and :label runs."""
        return self.signature or sigs.DEFAULT

    @property
    def signature_map(self) -> dict[str, Any]:
        """Every signature, by name; a version converted before signatures were recorded has one."""
        if self.signatures:
            return self.signatures
        if not self.output_nodes:
            return {}
        return {self.default_signature: sigs.from_nodes(self.input_nodes, self.output_nodes)}

    @property
    def prediction_node(self) -> str | None:
        """The output :label and :compare rank classes by."""
        outputs = self.output_nodes or []
        if self.prediction_output in outputs:
            return self.prediction_output
        return outputs[0] if outputs else None

    def file(self, role: str) -> FileInfo | None:
        return next((f for f in self.files if f.role == role), None)

    @property
    def image_input(self) -> dict[str, Any] | None:
        """The input an image is fed to: a float tensor [batch, height, width, 3]."""
        required = [i for i in self.input_nodes or [] if not i.get("optional")]
        if len(required) != 1:
            return None
        spec = required[0]
        shape = spec.get("shape")
        if not spec["dtype"].startswith(("float", "bfloat")) or shape is None or len(shape) != 4:
            return None
        return spec if shape[3] in (None, 3) else None

    @property
    def image_bytes_input(self) -> dict[str, Any] | None:
        """The input an encoded image is fed to as it is, a graph that decodes it itself (TF Serving's
        ResNet export): its one required input, a string vector [batch]."""
        required = [i for i in self.input_nodes or [] if not i.get("optional")]
        if len(required) != 1 or required[0]["dtype"] != "string" or required[0].get("shape") != [None]:
            return None
        histogram = ((self.conversion or {}).get("safety") or {}).get("op_histogram") or {}
        return required[0] if any(op in histogram for op in IMAGE_DECODE_OPS) else None  # not tf.Examples

    @property
    def preprocessing(self) -> dict[str, float | int]:
        """Effective label_image.py settings: what was set, else the input's shape, else the defaults."""
        shape = (self.image_input or {}).get("shape") or [None] * 4
        settings = {
            "input_height": shape[1] or DEFAULT_IMAGE_SIZE,
            "input_width": shape[2] or DEFAULT_IMAGE_SIZE,
            "input_mean": DEFAULT_INPUT_MEAN,
            "input_std": DEFAULT_INPUT_STD,
        }
        settings.update(self.preprocessing_settings or {})
        return settings

    def class_labels(self, lines: list[str]) -> list[str]:
        """The label of each class from a labels file's ``lines``: all of them, or all but the first when
        the file has one line more than the prediction output has classes (a background line first, as
        TF-slim's 1001-line ImageNet list has it for a 1000-class ResNet or VGG)."""
        recorded = (self.conversion or {}).get("prediction_output") or {}
        classes = recorded.get("classes") if recorded.get("node") == self.prediction_output else None
        return lines[1:] if classes and len(lines) == classes + 1 else lines

    @property
    def known_preprocessing(self) -> dict[str, float | int | None]:
        """:attr:`preprocessing` as far as it is known: until the version is ready, an input size not set
        at push is None, since it comes from the input's shape, which the conversion reads."""
        settings: dict[str, float | int | None] = dict(self.preprocessing)
        if self.status != READY:
            for key in ("input_height", "input_width"):
                if key not in (self.preprocessing_settings or {}):
                    settings[key] = None
        return settings

    @property
    def refusal(self) -> str | None:
        """Why the registry will not run this ready version's graph (None: it will, or it is not ready)."""
        if self.status != READY or self.conversion is None:  # listings leave the report out
            return None
        return safety.refusal(self)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    version_count: int
    latest_version: int | None  # newest ready version
    last_version: int  # highest number ever handed out
    aliases: dict[str, int]
    created_at: datetime
    updated_at: datetime
    allowed_ops: list[str] = field(default_factory=list)
    served_versions: list[int] | str | None = None  # what a TF Serving export serves; "all"; None: the default
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_page_token: str | None


@dataclass(frozen=True)
class NewFile:
    """An uploaded file already stored as a blob, to be attached to a version."""

    role: str
    filename: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DeletedVersion:
    """What deleting a version removed with it."""

    model: str
    version: int
    status: str
    aliases_removed: list[str]
    job_cancelled: bool


@dataclass(frozen=True)
class DeletedModel:
    """What deleting a model removed; its version numbers stay used."""

    model: str
    versions_deleted: int
    aliases_removed: list[str]
    jobs_cancelled: int
    last_version: int
