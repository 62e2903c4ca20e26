"""TensorFlow Serving's gRPC API (``PredictionService``, ``ModelService``) for the label service.

Clients written for TF Serving (``tensorflow-serving-api`` stubs, port 8500)
work unchanged: ``Predict`` (any signature, ``output_filter``), ``Classify``,
``Regress`` and ``MultiInference`` (tf.Examples, ``example_list`` or
``example_list_with_context``), ``GetModelMetadata`` with every signature,
``GetModelStatus`` from the catalog.  Versions are chosen as TF Serving chooses
them (``model_spec.version``, or ``model_spec.version_label`` for our aliases,
else the latest ready one); every answer echoes the model_spec it ran (name,
version, signature).  Registry errors become gRPC status codes.  The handlers
reuse what REST runs (``signature``, ``examples``), so both APIs give the same
answers.

Importing this module loads TensorFlow; only the label service imports it.

Just over 400 lines: both services share the error mapping, the model_spec handling and the server
set-up above them; splitting ``ModelService`` off would leave its module importing all of those back.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

# gRPC core reads GRPC_EXPERIMENTS once, as it loads: before its import (see new_server)
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_listener")

import grpc
import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from registry import catalog, metrics
from registry import signatures as sigs
from registry.entities import FAILED, TF_SERVING_STATE, VersionInfo
from registry.errors import Conflict, InvalidRequest, NotFound, RegistryError
from registry.serving import examples, tensors
from registry.serving.grpc_auth import TokenCheck
from registry.serving.signature import find, signature_def_map
from registry.tfserving import has_version, reload_folder
from registry.tfserving.sources import config_refusal

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # as much as a REST :predict body may carry
SIGNATURE_DEF_FIELD = "signature_def"

_State = get_model_status_pb2.ModelVersionStatus.State

Handler = TypeVar("Handler", bound=Callable[..., Any])


def _grpc_code(exc: RegistryError) -> grpc.StatusCode:
    """The gRPC status of a registry error: its own when it names one (TF Serving's FAILED_PRECONDITION
    answered 400 over REST), else by the one mapping the metrics count with too; a status with no gRPC
    counterpart is INTERNAL."""
    name = getattr(exc, "grpc_code", None) or metrics.status_name(exc.status)
    return grpc.StatusCode.INTERNAL if name in ("OK", "UNKNOWN") else grpc.StatusCode[name]


def _answer_errors(metered: str | None) -> Callable[[Handler], Handler]:
    """Turn a RegistryError into its gRPC status, and anything else into INTERNAL (logged); count
    and time the call as method ``metered`` (``registry.metrics``, api ``grpc``; None: not counted)."""

    def decorate(method: Handler) -> Handler:
        @functools.wraps(method)
        def wrapper(self, request, context: grpc.ServicerContext):
            with (metrics.observe_request("grpc", metered) if metered else contextlib.nullcontext()) as observed:
                try:
                    return method(self, request, context)
                except RegistryError as exc:
                    code = _grpc_code(exc)
                    if code is grpc.StatusCode.INTERNAL:
                        log.error("gRPC %s failed: %s", method.__name__, exc.message)
                    message = exc.message
                except Exception as exc:
                    log.exception("gRPC %s failed", method.__name__)
                    code = grpc.StatusCode.INTERNAL
                    message = f"internal error ({type(exc).__name__}); see the server log"
                if observed is not None:
                    observed.status = code.name
            context.abort(code, message)

        return wrapper  # type: ignore[return-value]

    return decorate


def _model_name(spec: model_pb2.ModelSpec) -> str:
    if not spec.name:
        raise InvalidRequest("model_spec.name is required", code="missing_model_name")
    return spec.name


def _ref(spec: model_pb2.ModelSpec) -> str | None:
    """The catalog ref for ``model_spec``'s version choice; None means the latest ready version."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        if spec.version.value < 1:
            raise NotFound(f"model {spec.name!r} has no version {spec.version.value}: versions start at 1",
                           code="version_not_found")
        return str(spec.version.value)
    if choice == "version_label" and spec.version_label:
        if spec.version_label.isdigit():
            raise InvalidRequest(f"version_label {spec.version_label!r} is a number: set model_spec.version "
                                 "for a version number", code="invalid_version_label")
        return spec.version_label
    return None


def _fill_spec(out: model_pb2.ModelSpec, version: VersionInfo, signature: str) -> None:
    out.name = version.model
    out.version.value = version.version
    out.signature_name = signature


_input_maps: dict[int, tuple] = {}  # id(signature) -> (signature, its inputs by key and node name, their keys)


def _inputs_by_key(signature) -> tuple[dict, str]:
    """A signature's inputs by key and by node name, and their keys for messages (made once per
    loaded signature: every Predict asks)."""
    cached = _input_maps.get(id(signature))
    if cached is not None and cached[0] is signature:
        return cached[1], cached[2]
    by_key = {s.key: s for s in signature.inputs}
    by_key.update({s.name.rsplit(":", 1)[0]: s for s in signature.inputs})
    valid = ", ".join(s.key for s in signature.inputs) or "none"
    if len(_input_maps) >= 1024:  # versions come and go: start again rather than keep unloaded ones
        _input_maps.clear()
    _input_maps[id(signature)] = (signature, by_key, valid)
    return by_key, valid


def _feeds(signature, inputs) -> dict[str, np.ndarray]:
    """Feeds keyed by tensor name from ``request.inputs`` (keyed by signature key or node name)."""
    by_key, valid = _inputs_by_key(signature)
    unknown = sorted(key for key in inputs if key not in by_key)
    if unknown:
        raise InvalidRequest(f"input tensor alias not found in signature: {', '.join(unknown)}. The inputs of "
                             f"{signature.name} are: {valid}", code="invalid_input")
    feeds: dict[str, np.ndarray] = {}
    for key, proto in inputs.items():
        spec = by_key[key]
        if spec.name in feeds:
            raise InvalidRequest(f"input {spec.key} is given twice (by signature key and by node name)",
                                 code="invalid_input")
        feeds[spec.name] = tensors.to_array(key, proto, spec)
    if len(feeds) < len(signature.inputs):
        missing = [s.key for s in signature.inputs if not s.optional and s.name not in feeds]
        if missing:
            raise InvalidRequest(f"missing input(s) {', '.join(missing)}; the inputs of {signature.name} are: "
                                 f"{valid}", code="invalid_input")
    return feeds


def _fetch(signature, output_filter) -> list:
    """The output specs to compute: all of them, or those ``output_filter`` names (key or node name)."""
    if not output_filter:
        return list(signature.outputs)
    by_key = {s.key: s for s in signature.outputs}
    by_key.update({s.name.rsplit(":", 1)[0]: s for s in signature.outputs})
    chosen = []
    for key in output_filter:
        spec = by_key.get(key)
        if spec is None:
            raise InvalidRequest(f"output tensor alias not found in signature: {key}. Outputs expected to be in "
                                 f"the set {{{','.join(sorted(s.key for s in signature.outputs))}}} (the outputs "
                                 f"of {signature.name})", code="invalid_output_filter")
        if spec in chosen:
            raise InvalidRequest(f"duplicate output tensor alias: {spec.key}: name each output once",
                                 code="invalid_output_filter")
        chosen.append(spec)
    return chosen


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService`` on every signature of a version."""

    def __init__(self, registry) -> None:
        self.registry = registry

    def _graph(self, spec: model_pb2.ModelSpec):
        name = _model_name(spec)
        service = self.registry.label_service()
        version = service.resolve(name, _ref(spec))
        return version, service.graph(version)

    @_answer_errors("predict")
    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        version, graph = self._graph(request.model_spec)
        signature = find(graph, request.model_spec.signature_name, api="predict")
        feeds = _feeds(signature, request.inputs)
        specs = _fetch(signature, request.output_filter)
        results = graph.run(feeds, [s.name for s in specs])
        # an alias's shadow gets a copy (registry.serving.shadow)
        self.registry.label_service().shadow.offer(graph, version, _ref(request.model_spec), signature, feeds, results)
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, version, signature.name)
        for spec in specs:
            tensors.to_proto(results[spec.name], spec.dtype, response.outputs[spec.key])
        return response

    @_answer_errors("metadata")
    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        _model_name(request.model_spec)
        if not request.metadata_field:
            raise InvalidRequest(f"metadata_field is empty: ask for {SIGNATURE_DEF_FIELD!r}",
                                 code="invalid_metadata_field")
        unsupported = [f for f in request.metadata_field if f != SIGNATURE_DEF_FIELD]
        if unsupported:
            raise InvalidRequest(f"metadata field(s) {', '.join(map(repr, unsupported))} not supported: "
                                 f"only {SIGNATURE_DEF_FIELD!r}", code="invalid_metadata_field")
        version, graph = self._graph(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, version, "")
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(graph))
        return response

    def _examples(self, request, method: str):
        """Classify or Regress: the version, the signature it ran, and its result."""
        version, graph = self._graph(request.model_spec)
        task = examples.task(graph, request.model_spec.signature_name, method)
        # an alias's shadow gets a copy (registry.serving.shadow)
        offer = functools.partial(self.registry.label_service().shadow.offer, graph, version, _ref(request.model_spec))
        (result,) = examples.run(graph, [task], request.input, offer=offer)
        return version, task, result

    @_answer_errors("classify")
    def Classify(self, request: classification_pb2.ClassificationRequest,
                 context) -> classification_pb2.ClassificationResponse:
        version, task, result = self._examples(request, sigs.CLASSIFY)
        response = classification_pb2.ClassificationResponse(result=examples.classification_result(result))
        _fill_spec(response.model_spec, version, task.signature.name)
        return response

    @_answer_errors("regress")
    def Regress(self, request: regression_pb2.RegressionRequest, context) -> regression_pb2.RegressionResponse:
        version, task, result = self._examples(request, sigs.REGRESS)
        response = regression_pb2.RegressionResponse(result=examples.regression_result(result))
        _fill_spec(response.model_spec, version, task.signature.name)
        return response

    @_answer_errors("multi_inference")
    def MultiInference(self, request: inference_pb2.MultiInferenceRequest,
                       context) -> inference_pb2.MultiInferenceResponse:
        """Several classify and regress signatures of one version on the same examples, in one run."""
        if not request.tasks:
            raise InvalidRequest("MultiInference has no tasks: add one per signature to run, with its model_spec "
                                 "and method_name", code="invalid_tasks")
        spec = request.tasks[0].model_spec
        for task in request.tasks:
            if not task.model_spec.name:
                raise InvalidRequest("Found ModelSpec with an empty model name: give every task's "
                                     "model_spec.name", code="missing_model_name")
            if (task.model_spec.name, _ref(task.model_spec)) != (spec.name, _ref(spec)):
                raise InvalidRequest("All ModelSpecs in a MultiInferenceRequest must access the same model name "
                                     "(and version): run the others in a request of their own",
                                     code="invalid_tasks")
        version, graph = self._graph(spec)
        tasks = examples.multi_tasks(graph, [(t.model_spec.signature_name, t.method_name) for t in request.tasks])
        metrics.served_signature("")  # several signatures: counted under none
        response = inference_pb2.MultiInferenceResponse()
        for task, result in zip(tasks, examples.run(graph, tasks, request.input)):
            entry = response.results.add()
            entry.CopyFrom(examples.inference_result(task, result))
            _fill_spec(entry.model_spec, version, task.signature.name)
        return response


def _version_status(version: VersionInfo) -> get_model_status_pb2.ModelVersionStatus:
    status = get_model_status_pb2.ModelVersionStatus(version=version.version, state=_State.Value(TF_SERVING_STATE[version.status]))
    if version.status == FAILED:
        status.status.error_code = 2  # tensorflow.error.UNKNOWN, as REST reports it
        status.status.error_message = version.status_message or "conversion failed"
    return status


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: version states from the catalog; config reloads."""

    def __init__(self, registry) -> None:
        self.registry = registry

    @_answer_errors("status")
    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context) -> get_model_status_pb2.GetModelStatusResponse:
        name = _model_name(request.model_spec)
        ref = _ref(request.model_spec)
        db = self.registry.db
        if ref is not None:
            versions = [catalog.get_version(db, name, ref)]
        else:
            versions, token = [], None
            while True:
                page = catalog.list_versions(db, name, page_size=catalog.MAX_PAGE_SIZE, page_token=token)
                versions += page.items
                token = page.next_page_token
                if not token:
                    break
        metrics.served(name, versions[0].version if ref is not None else None)
        return get_model_status_pb2.GetModelStatusResponse(
            model_version_status=[_version_status(v) for v in versions])

    @_answer_errors(None)
    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,
                                  context) -> model_management_pb2.ReloadConfigResponse:
        """Check a config as TF Serving does, keep it as the served model list, and log that list.

        Refused like TF Serving refuses them: no ``model_config_list``, a model
        without a name or named twice, a platform other than tensorflow, and a
        version label for a version the config does not serve or (for a local
        ``base_path``) that is not on disk yet.  A ``base_path`` must lie under
        the export root (``serving_export.reload_folder``): nothing outside it is
        looked at, so the answer never tells whether a server path exists.
        """
        config = request.config
        refusal = config_refusal(config)
        if refusal:
            raise InvalidRequest(refusal, code="invalid_config")
        for model in config.model_config_list.config:
            folder = reload_folder(self.registry.settings, model.base_path)  # None: an S3 root
            policy = model.model_version_policy
            served = set(policy.specific.versions) if policy.WhichOneof("policy_choice") == "specific" else None
            for label, number in model.version_labels.items():
                if served is not None and number not in served:
                    raise Conflict(f"model {model.name!r}: label {label!r} points at version {number}, "
                                   "which the config does not serve", code="label_for_unavailable_version")
                if folder is not None and not has_version(folder, number):
                    raise Conflict(f"model {model.name!r}: label {label!r} points at version {number}, "
                                   f"which is not available (no {model.base_path.rstrip('/')}/{number}/"
                                   "saved_model.pb)", code="label_for_unavailable_version")
        self.registry.serving_config = config
        log.info("reloaded serving config: %s", "; ".join(
            f"{m.name} versions {list(m.model_version_policy.specific.versions)} labels {dict(m.version_labels)}"
            for m in config.model_config_list.config) or "no models")
        return model_management_pb2.ReloadConfigResponse(status={"error_code": 0, "error_message": ""})


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def new_server(max_workers: int = 16, options: list[tuple[str, int | str]] | tuple = (), **kwargs) -> grpc.Server:
    """The label service's sync gRPC server.  Where this module is what loads gRPC, gRPC core serves with
    its classic poller (``-event_engine_listener`` in GRPC_EXPERIMENTS, unless the operator set their own):
    it reads connections in the thread that polls the completion queue, where the default EventEngine
    listener reads in a pool of its own and hands each message over (0.15-0.2 ms more a call back to back
    here, about 0.03-0.08 ms spaced out; README, "Performance").  ``options``: more channel arguments
    (``--grpc_channel_arguments``), which win over these."""
    defaults = {"grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
                "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
                "grpc.so_reuseport": 0}  # a second server on a taken port must fail, not share it
    return grpc.server(ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-serving"),
                       options=list({**defaults, **dict(options)}.items()), **kwargs)


def start_grpc_server(registry, host: str = "127.0.0.1", port: int = 8500, max_workers: int = 16, *,
                      unix_socket: str | None = None,
                      options: list[tuple[str, int | str]] | tuple = ()) -> tuple[grpc.Server, int]:
    """Serve TF Serving's gRPC API for ``registry`` on ``host:port`` (0: any free port), and on the Unix
    socket ``unix_socket`` too when given (TF Serving's ``--grpc_socket_path``).

    Returns the started server and the port it is bound to; raises RuntimeError
    when the address cannot be bound (port taken, or host not an address here).
    """
    server = new_server(max_workers, options, interceptors=[TokenCheck(registry)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), server)
    address = _address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        server.stop(None)
        raise RuntimeError(f"cannot serve gRPC on {address}: {exc} (is the port in use? pick another, "
                           "or 0 for any free port)") from exc
    if not bound:
        server.stop(None)
        raise RuntimeError(f"cannot serve gRPC on {address}: the port is in use or the host is not an address "
                           "of this machine (pick another port, or 0 for any free port)")
    if unix_socket and not server.add_insecure_port(f"unix:{unix_socket}"):
        server.stop(None)
        raise RuntimeError(f"cannot serve gRPC on the Unix socket {unix_socket}: is its folder there and writable?")
    server.start()
    log.info("TensorFlow Serving gRPC API on %s", _address(host, bound))
    return server, bound
