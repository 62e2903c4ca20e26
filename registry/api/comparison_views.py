"""Stored comparison reports: a model's list, newest first, and one report by its permalink (status and
progress while its job runs, the figures once done)."""

from __future__ import annotations

from registry.api import bp, schemas
from registry.api.spec import Json, Param, operation
from registry.api.views import NAME
from registry.context import get_registry
from registry.auth.access import current_actor
from registry.evaluation import auto, reports

REPORT = Param("report_id", "The report's number (from :compare's answer, or the list)", int)


@bp.get("/models/<name>/comparisons")
@operation("listComparisons", summary="Comparison reports, newest first", path=(NAME,), query=schemas.PageQuery,
           answers={200: Json(schemas.ComparisonList, "A page of reports"), 400: "Bad page size or token",
                    404: "No such model"})
def list_comparisons(name: str, query: schemas.PageQuery):
    page = reports.list_reports(get_registry().db, name, page_size=query.page_size, page_token=query.page_token)
    return schemas.ComparisonList(comparisons=[schemas.Comparison.model_validate(r) for r in page.items],
                                  next_page_token=page.next_page_token)


@bp.get("/models/<name>/comparisons/<int:report_id>")
@operation("getComparison", summary="A comparison report: status, progress and figures", path=(NAME, REPORT),
           description="Versions or a set deleted since the comparison are marked deleted; the report stays.",
           answers={200: Json(schemas.Comparison, "The report"), 400: "Invalid model name",
                    404: "No such model or report"})
def get_comparison(name: str, report_id: int):
    return schemas.Comparison.model_validate(reports.get(get_registry().db, name, report_id))


@bp.get("/models/<name>/auto-compare")
@operation("getAutoCompare", summary="The sets and reference alias each newly ready version is compared on",
           path=(NAME,), answers={200: Json(schemas.AutoCompareSetting, "The setting (sets: null when off)"),
                                  400: "Invalid model name", 404: "No such model"})
def get_auto_compare(name: str):
    setting = auto.get_auto_compare(get_registry().db, name) or {}
    return schemas.AutoCompareSetting(sets=setting.get("sets"), reference=setting.get("reference"))


@bp.put("/models/<name>/auto-compare")
@operation("setAutoCompare", summary="Compare each newly ready version with an alias's on evaluation sets "
                                     "(audited; {\"sets\": null} turns it off)", path=(NAME,),
           body=schemas.AutoCompare, answers={200: Json(schemas.AutoCompareSetting, "The setting"),
                                              400: "Invalid model name, an unknown set or a bad alias",
                                              404: "No such model"})
def set_auto_compare(name: str, body: schemas.AutoCompare):
    setting = None if body.sets is None else {"sets": body.sets, "reference": body.reference}
    stored = auto.set_auto_compare(get_registry().db, name, setting, actor=current_actor()) or {}
    return schemas.AutoCompareSetting(sets=stored.get("sets"), reference=stored.get("reference"))
