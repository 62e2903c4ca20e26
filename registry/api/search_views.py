"""Tags on models and versions, version metrics, and search across versions (issue 17): thin handlers
over ``registry.catalog.tags``, ``registry.catalog.metrics`` and ``registry.search``."""

from __future__ import annotations

from registry import catalog
from registry.api import bp, schemas
from registry.api.spec import Json, Param, operation
from registry.auth.access import current_actor
from registry.catalog import metrics
from registry.context import get_registry
from registry.search import search_versions

NAME = Param("name", "Model name")
REF = Param("ref", "Version number (3 or v3), 'latest' or an alias")


@bp.get("/versions")
@operation("searchVersions", summary="Versions of every model that match a filter, with their aliases and tags",
           query=schemas.VersionSearch, answers={200: Json(schemas.VersionList, "A page of versions"),
                                                 400: "A malformed filter (the message names its column), an "
                                                      "unknown field or operator, a bad order_by or page"})
def search(query: schemas.VersionSearch):
    page = search_versions(get_registry().db, query.filter, order_by=query.order_by, page_size=query.page_size,
                           page_token=query.page_token)
    return schemas.VersionList.of(page)


@bp.patch("/models/<name>/tags")
@operation("setModelTags", summary="Set, change or delete (null) the model's tags (audited)", path=(NAME,),
           body=schemas.TagsUpdate, answers={200: Json(schemas.Tags, "The model's tags after the write"),
                                             400: "A key outside the pattern, a value over 5,000 characters",
                                             404: "No such model"})
def set_model_tags(name: str, body: schemas.TagsUpdate):
    return schemas.Tags(tags=catalog.set_tags(get_registry().db, name, body.changes, actor=current_actor()))


@bp.patch("/models/<name>/versions/<ref>/tags")
@operation("setVersionTags", summary="Set, change or delete (null) a version's tags (audited)", path=(NAME, REF),
           body=schemas.TagsUpdate, answers={200: Json(schemas.Tags, "The version's tags after the write"),
                                             400: "A key outside the pattern, a value over 5,000 characters",
                                             404: "No such model or version"})
def set_version_tags(name: str, ref: str, body: schemas.TagsUpdate):
    return schemas.Tags(tags=catalog.set_tags(get_registry().db, name, body.changes, ref=ref,
                                              actor=current_actor()))


@bp.post("/models/<name>/versions/<ref>/metrics")
@operation("recordMetrics", summary="Record named metrics of a version, e.g. accuracy@imagenet-val-1k (audited)",
           path=(NAME, REF), body=schemas.MetricsBody, answers={
               201: Json(schemas.MetricList, "The metrics recorded"), 400: "A bad name or a value that is no number",
               404: "No such model or version"})
def record_metrics(name: str, ref: str, body: schemas.MetricsBody):
    made = metrics.record_metrics(get_registry().db, name, ref, body.metrics, eval_set=body.eval_set, step=body.step,
                                  actor=current_actor())
    return schemas.MetricList(metrics=[schemas.Metric.model_validate(m) for m in made]), 201


@bp.get("/models/<name>/versions/<ref>/metrics")
@operation("listMetrics", summary="A version's metrics, oldest first", path=(NAME, REF),
           answers={200: Json(schemas.MetricList, "Its metrics"), 400: "Invalid model name",
                    404: "No such model or version"})
def list_metrics(name: str, ref: str):
    return schemas.MetricList(metrics=[schemas.Metric.model_validate(m)
                                       for m in metrics.list_metrics(get_registry().db, name, ref)])
