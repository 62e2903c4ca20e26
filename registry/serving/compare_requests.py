"""``POST /v1/models/NAME:compare``'s two bodies, read and answered (the label service's blueprint calls
these): multipart images as :compare has always taken them, or JSON naming an evaluation set or
carrying TF Serving inputs.  A small comparison answers 200 with its stored report; a larger one 202
with the report's permalink, and runs as a job."""

from __future__ import annotations

import math
import re
from typing import Any

from flask import Response, jsonify

from registry.errors import InvalidRequest
from registry.evaluation.sets import get_eval_set
from registry.serving import comparisons as compare

JSON_FIELDS = {"versions", "eval_set", "signature_name", "top_k", "tolerance", "kind", "expected", "instances",
               "inputs", "examples"}
EVAL_SET_RE = re.compile(r"^(?P<name>[^@\s]+)(?:@(?P<revision>\d+))?$")


def _answer(info, ran: bool) -> Response:
    if not ran:
        response = jsonify({"report": info.id, "status": info.status, "url": info.url, "total": info.total})
        response.status_code = 202
        response.headers["Location"] = info.url
        return response
    return jsonify({**info.report, "report": info.id, "status": info.status, "url": info.url})


def compare_images(service, name: str, images: list, *, refs: list[str] | None, expected: list[str] | None,
                   top_k: int, actor) -> Response:
    """Uploaded images, as :compare has always taken them (expected labels not checked against the
    labels files: a wrong one counts as wrong)."""
    settings = service.settings
    if not images:
        raise InvalidRequest("send at least one image (multipart field 'image'), or a JSON body naming an "
                             "eval_set or carrying instances", code="missing_image")
    if len(images) > settings.compare_max_images:
        raise InvalidRequest(f"compare at most {settings.compare_max_images} images at once "
                             "(REGISTRY_COMPARE_MAX_IMAGES): store them as an evaluation set and compare on it",
                             code="too_many_images")
    if expected is not None and len(expected) != len(images):
        raise InvalidRequest(f"expected has {len(expected)} labels for {len(images)} images: give one per image",
                             code="invalid_expected")
    source = compare.uploaded_images(images, expected)
    return _answer(*compare.request_comparison(service, name, source, refs=refs, top_k=top_k, strict_labels=False,
                                               actor=actor))


def _refs(value: Any) -> list[str] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise InvalidRequest('"versions" must be a list of version numbers, aliases or "latest"',
                             code="invalid_versions")
    refs = [str(v).strip() for v in value if str(v).strip()]
    return refs or None


def _tolerance(value: Any) -> float:
    if value is None:
        return 1e-6
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidRequest(f'"tolerance" must be a number of 0 or more, not {value!r}', code="invalid_tolerance")
    return float(value)


def parse_eval_set(value: Any) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@REVISION``."""
    match = EVAL_SET_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise InvalidRequest(f'"eval_set" must be NAME or NAME@REVISION (e.g. "holdout@3"), not {value!r}',
                             code="invalid_eval_set")
    return match["name"], int(match["revision"]) if match["revision"] else None


def compare_json(service, name: str, data: bytes, *, actor) -> Response:
    """A JSON body: ``{"versions", "eval_set": "NAME[@REV]" | "instances"/"inputs"/"examples",
    "signature_name", "top_k", "tolerance", "kind", "expected"}``."""
    from registry.serving.service import validate_top_k
    from registry.serving.tfs_json import load_body

    body = load_body(data, service.settings.predict_max_elements,
                     shape='{"versions": [...], "eval_set": "NAME[@REV]"} or {"versions": [...], "instances": [...]}')
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object: {"versions": [...], "eval_set": "NAME[@REV]"}',
                             code="invalid_compare_request")
    unknown = sorted(set(body) - JSON_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}: a comparison takes "
                             f"{', '.join(sorted(JSON_FIELDS))}", code="invalid_compare_request")
    signature = body.get("signature_name") or ""
    if not isinstance(signature, str):
        raise InvalidRequest('"signature_name" must be a string', code="invalid_compare_request")
    options = dict(refs=_refs(body.get("versions")), signature=signature, top_k=validate_top_k(body.get("top_k")),
                   tolerance=_tolerance(body.get("tolerance")), kind=body.get("kind"), actor=actor)
    if "eval_set" in body:
        if any(k in body for k in ("instances", "inputs", "examples", "expected")):
            raise InvalidRequest('send either "eval_set" or inputs ("instances", "inputs", "examples"), not both',
                                 code="invalid_compare_request")
        set_name, revision = parse_eval_set(body["eval_set"])
        source = compare.eval_set_source(service.storage, get_eval_set(service.db, name, set_name, revision))
    else:
        source = compare.uploaded_json(body)
    return _answer(*compare.request_comparison(service, name, source, **options))
