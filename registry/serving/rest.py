"""TensorFlow Serving's REST API (``/v1/models/...``) plus ``:label`` and ``:compare``.

Paths, bodies and the error shape ``{"error": "..."}`` follow TF Serving's
``api_rest.md``, so a client written for TF Serving works unchanged.  Importing
this module does not load TensorFlow; the first request that runs a graph does.
Every request for a known method is counted and timed (``registry.metrics``,
api ``rest``), and TF Serving's ``/monitoring/prometheus/metrics`` answers here,
in a label service alone as in the whole registry.
"""

from __future__ import annotations

import functools
import re

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from registry import catalog, metrics
from registry.context import get_registry
from registry.entities import FAILED, READY, TF_SERVING_STATE
from registry.errors import InvalidRequest, NotFound, RegistryError
from registry.http_errors import SERVING_PATHS
from registry.jobs import queue
from registry.signatures import METHODS

bp = Blueprint("serving", __name__)

PATH = re.compile(
    r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?$"
)
MAX_REQUEST_BYTES = 256 * 1024 * 1024
POST_METHODS = frozenset({"predict", "classify", "regress", "label", "compare"})


def label_service():
    return get_registry().label_service()


@bp.errorhandler(RegistryError)
def _error(exc: RegistryError):
    response = jsonify({"error": exc.message})
    response.status_code = exc.status
    response.headers.update(exc.headers)
    return response


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge):
    response = jsonify({"error": f"the body is larger than the {MAX_REQUEST_BYTES >> 20} MB a request may be"})
    response.status_code = 413
    return response


@bp.before_request
def _limit_body() -> None:
    request.max_content_length = MAX_REQUEST_BYTES


def _parse(spec: str) -> tuple[str, str | None, bool, str | None]:
    match = PATH.match(spec)
    if not match:
        raise NotFound(f"no such path /v1/models/{spec}: use {SERVING_PATHS}", code="not_found")
    name, version, label = match["name"], match["version"], match["label"]
    if version is not None and not (version.isascii() and version.isdecimal()):  # '²'.isdigit() but int('²') fails
        raise InvalidRequest(f"version must be a number written with the digits 0-9, not {version!r} "
                             f"(use /labels/{version} for an alias)", code="invalid_version")
    return name, version or label, bool(match["metadata"]), match["verb"]


def _version_status(version) -> dict:
    failed = version.status == FAILED
    return {"version": str(version.version), "state": TF_SERVING_STATE[version.status],
            "status": {"error_code": "UNKNOWN" if failed else "OK",
                       "error_message": version.status_message if failed else ""}}


@bp.get("/v1/models")
def list_models():
    """Every model with its servable (ready) versions, in GetModelStatus's shape.  Stock TF Serving has no
    such call; its users have asked for one since 2018 (tensorflow/serving#795)."""
    with metrics.observe_request("rest", "status"):
        db = get_registry().db
        models, token = [], None
        while True:
            page = catalog.list_models(db, page_size=catalog.MAX_PAGE_SIZE, page_token=token)
            for model in page.items:
                ready = _all_versions(db, model.name, READY)
                if ready:
                    models.append({"name": model.name, "model_version_status": [_version_status(v) for v in ready]})
            token = page.next_page_token
            if not token:
                return jsonify({"models": models})


def _all_versions(db, name: str, status: str) -> list:
    versions, token = [], None
    while True:
        page = catalog.list_versions(db, name, page_size=catalog.MAX_PAGE_SIZE, page_token=token, status=status,
                                     summary=True)
        versions += page.items
        token = page.next_page_token
        if not token:
            return versions


@bp.get("/v1/models/<path:spec>")
def get_model(spec: str):
    name, ref, metadata, verb = _parse(spec)
    if verb:
        raise InvalidRequest(f":{verb} takes a POST", code="method_not_allowed", status=405)
    with metrics.observe_request("rest", "metadata" if metadata else "status"):
        return jsonify(_metadata(name, ref) if metadata else _status(name, ref))


def _metadata(name: str, ref: str | None) -> dict:
    service = label_service()
    version = service.resolve(name, ref)
    from registry.serving.signature import metadata_json  # TensorFlow: not in the web process until asked

    return metadata_json(name, version, service.graph(version))


def _status(name: str, ref: str | None) -> dict:
    db = get_registry().db
    if ref is not None:
        version = catalog.get_version(db, name, ref)
        metrics.served(name, version.version)
        return {"model_version_status": [_version_status(version)]}
    versions = catalog.list_versions(db, name, page_size=1000).items
    metrics.served(name)
    return {"model_version_status": [_version_status(v) for v in versions]}


def _images_from_request() -> list:
    from registry.serving.service import Image  # numpy: not in the web process until a label request

    if request.mimetype.startswith("image/") or request.mimetype == "application/octet-stream":
        return [Image("image", request.get_data(cache=False))]
    if request.mimetype == "multipart/form-data":
        return [Image(f.filename or f"image{i + 1}", f.read()) for i, f in enumerate(request.files.getlist("image"))]
    raise InvalidRequest("send the image as the raw body with an image content type (image/jpeg, image/png, ...) "
                         "or as multipart field 'image'", code="invalid_content_type")


def _values(name: str) -> list[str] | None:
    """A list parameter: repeated fields, or one field of comma- or newline-separated values."""
    raw = request.form.getlist(name) if request.mimetype == "multipart/form-data" else []
    raw += request.args.getlist(name)
    if not raw:
        return None
    if len(raw) == 1:
        raw = [v for v in re.split(r"[\n,]", raw[0])]
    return [v.strip() for v in raw if v.strip()]


@bp.post("/v1/models/<path:spec>")
def post_model(spec: str):
    name, ref, metadata, verb = _parse(spec)
    if verb not in POST_METHODS:  # refused below: counted under no method
        return _post(name, ref, verb)
    with metrics.observe_request("rest", verb):
        answer = _post(name, ref, verb)
        return answer if isinstance(answer, Response) else jsonify(answer)


def _post(name: str, ref: str | None, verb: str | None) -> dict:
    from registry.serving.service import validate_top_k  # numpy: not in the web process until a label request

    service = label_service()
    top_k_arg = request.args.get("top_k") or (request.form.get("top_k") if request.mimetype == "multipart/form-data"
                                              else None)
    if verb == "label":
        version = service.resolve(name, ref)  # refusals first: they matter more than the body
        images = _images_from_request()
        if len(images) != 1:
            raise InvalidRequest(f"send exactly one image to :label (got {len(images)}); use :compare for several",
                                 code="invalid_image")
        return service.label(version, images[0], validate_top_k(top_k_arg), ref=ref)  # ref: for a shadow
    if verb == "compare":
        if ref is not None:
            raise InvalidRequest("compare runs on the model: POST /v1/models/NAME:compare with versions=1,2,...")
        from registry.auth.access import current_actor
        from registry.serving import compare_requests as http  # comparisons, stored as reports

        if request.mimetype == "application/json":
            return http.compare_json(service, name, request.get_data(cache=False), actor=current_actor())
        return http.compare_images(service, name, _images_from_request(), refs=_values("versions"),
                                   expected=_values("expected"), top_k=validate_top_k(top_k_arg),
                                   actor=current_actor())
    if verb in ("predict", "classify", "regress"):
        # numpy: not in the web process until a predict request
        from registry.serving.tfs_json import EXAMPLES_BODY, PREDICT_BODY, load_body

        max_elements = get_registry().settings.predict_max_elements
        # TF Serving ignores the content type; the body is measured before it is parsed.
        body = load_body(request.get_data(cache=False), max_elements,
                         shape=PREDICT_BODY if verb == "predict" else EXAMPLES_BODY)
        if verb == "predict":
            version = service.resolve(name, ref)  # an alias's shadow gets a copy (registry.serving.shadow)
            return service.shadow.predict(service.graph(version), version, ref, body, max_elements)
        from registry.serving.examples import answer_json, input_from_json  # TensorFlow's protos, lazily

        signature, examples = input_from_json(body)  # the whole body first, as TF Serving reads it
        del body
        version = service.resolve(name, ref)
        graph = service.graph(version)
        return answer_json(graph, METHODS[verb], signature, examples, max_elements,
                           offer=functools.partial(service.shadow.offer, graph, version, ref))
    raise NotFound(f"unknown method :{verb or ''}; use :predict, :classify, :regress, :label or :compare",
                   code="not_found")


@bp.get(metrics.PATH)
def prometheus_metrics():
    """Prometheus's text format: every server process's counts, and the job queue counted now."""
    db = get_registry().db
    body = metrics.exposition([metrics.QueueDepth(lambda: queue.depth(db))])
    return Response(body, content_type=metrics.CONTENT_TYPE)
