"""What a stock ``tensorflow_model_server`` is told to serve, read as it reads it.

``registry model-server`` (``registry.cli.model_server``) takes TF Serving's own
flags: a model is ``--model_name`` + ``--model_base_path``, or each entry of a
``--model_config_file`` (a ``tensorflow.serving.ModelServerConfig`` in protobuf
text format).  Under a base path, each version is a folder named by its number
(``00000123`` is version 123) holding ``saved_model.pb`` (or ``.pbtxt``); the
model's version policy picks which of them are served (the newest one by
default).  Reading these needs TF Serving's config protos, not TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

from registry.catalog import MAX_VERSION_NUMBER

LATEST, ALL, SPECIFIC = "latest", "all", "specific"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


class ConfigError(Exception):
    """A config or flag TF Serving would refuse too; the message is what it prints, plus what to do."""


@dataclass(frozen=True)
class ModelSource:
    """One model to serve: its name, base path, version policy and version labels."""

    name: str
    base_path: str
    policy: str = LATEST
    latest: int = 1  # LATEST: how many of the newest versions
    versions: frozenset[int] = frozenset()  # SPECIFIC: which
    labels: dict[str, int] = field(default_factory=dict, hash=False)

    def chosen(self, folders: dict[int, Path]) -> dict[int, Path]:
        """The version folders this model's policy serves, of ``folders`` (``version_folders``)."""
        if self.policy == ALL:
            return dict(folders)
        if self.policy == SPECIFIC:
            return {n: p for n, p in folders.items() if n in self.versions}
        return {n: folders[n] for n in sorted(folders)[-self.latest:]}


def from_flags(name: str, base_path: str) -> list[ModelSource]:
    """``--model_name`` and ``--model_base_path``: one model, its newest version served."""
    return [ModelSource(name=name, base_path=_local(name, base_path))]


def read_config(path: str) -> list[ModelSource]:
    """The models of a ``--model_config_file``, checked as TF Serving checks them."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the model config file {path}: {exc.strerror or exc}") from exc
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"Error parsing text-format tensorflow.serving.ModelServerConfig: {exc} (in {path}; "
                          "see TF Serving's model_server_config.proto for the format)") from exc
    refusal = config_refusal(config)
    if refusal:
        raise ConfigError(f"{path}: {refusal}")
    return [_source(model) for model in config.model_config_list.config]


def config_refusal(config) -> str | None:
    """Why TF Serving would refuse a ``ModelServerConfig``'s model list, if it would: no
    ``model_config_list``, a model without a name or named twice, a platform other than tensorflow.
    (A config file read here, and one a gRPC ``HandleReloadConfigRequest`` sends.)"""
    if config.WhichOneof("config") != "model_config_list":
        return ("the config has no model_config_list (custom_model_config is not supported): list the models as "
                "model_config_list { config { name: ... base_path: ... } }")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            return "a model config has no name: give each config a name"
        if model.name in seen:
            return f"model {model.name!r} is configured twice: give each model one config"
        seen.add(model.name)
        if model.model_platform not in ("", "tensorflow"):
            return f"model {model.name!r}: platform {model.model_platform!r} is not supported (tensorflow)"
    return None


def _source(model) -> ModelSource:
    base_path = _local(model.name, model.base_path)
    policy = model.model_version_policy
    labels = dict(model.version_labels)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return ModelSource(model.name, base_path, ALL, labels=labels)
    if choice == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"model {model.name!r}: its specific version policy names no versions")
        return ModelSource(model.name, base_path, SPECIFIC, versions=frozenset(policy.specific.versions),
                           labels=labels)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return ModelSource(model.name, base_path, LATEST, latest=count, labels=labels)


def _local(name: str, base_path: str) -> str:
    if not base_path:
        raise ConfigError(f"model {name!r} has no base path: set --model_base_path (or base_path in the config)")
    if "://" in base_path:
        raise ConfigError(f"model {name!r}: base path {base_path} is not a local folder; the registry's model "
                          "server reads local folders only (copy the versions here, or push them with "
                          "'registry push')")
    return os.path.abspath(base_path)


def version_folders(base_path: str) -> tuple[dict[int, Path], list[str]]:
    """Version number -> folder, for each folder under ``base_path`` named by a number and holding a
    SavedModel (as TF Serving finds them: other folders and files are left alone); and the names of
    the version folders whose number a registry version cannot take (0, or above 2**31 - 1)."""
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return {}, []  # not there (yet): TF Serving waits for it too
    found: dict[int, Path] = {}
    unnumbered: list[str] = []
    for entry in entries:
        if not entry.name.isdigit() or not entry.is_dir():
            continue
        number = int(entry.name)
        if not 0 < number <= MAX_VERSION_NUMBER:
            unnumbered.append(entry.name)
        elif any(os.path.isfile(os.path.join(entry.path, name)) for name in SAVED_MODEL_FILES):
            found[number] = Path(entry.path)
    return found, sorted(unnumbered)


def _monitoring_message():
    """TF Serving's ``MonitoringConfig`` (monitoring_config.proto, which tensorflow-serving-api does not
    ship): ``prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }``."""
    proto = descriptor_pb2.FileDescriptorProto(name="registry_monitoring_config.proto", package="tensorflow.serving",
                                               syntax="proto3")
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig",
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def read_monitoring(path: str) -> str | None:
    """The Prometheus path a ``--monitoring_config_file`` turns on (None: off)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the monitoring config file {path}: {exc.strerror or exc}") from exc
    config = _monitoring_message()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"Error parsing text-format tensorflow.serving.MonitoringConfig: {exc} (in {path})") from exc
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or "/monitoring/prometheus/metrics"


def channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """``--grpc_channel_arguments``: ``name=value`` pairs, comma-separated; numbers become integers."""
    arguments: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--grpc_channel_arguments: {item!r} is not name=value "
                              "(e.g. grpc.max_connection_age_ms=2000)")
        value = value.strip()
        arguments.append((name.strip(), int(value) if value.lstrip("-").isdigit() else value))
    return arguments
