"""Webhooks (issue 17): registering hooks, their delivery log and redelivery; admin scope, thin handlers
over ``registry.webhooks.hooks``."""

from __future__ import annotations

from registry.api import bp, schemas
from registry.api.spec import Json, Param, operation
from registry.auth.access import current_actor
from registry.context import get_registry
from registry.webhooks import hooks

HOOK = Param("hook_id", "The webhook's id (`registry webhook ls`)", int)
DELIVERY = Param("delivery_id", "The delivery's id (X-Registry-Delivery)", int)


@bp.post("/webhooks")
@operation("createWebhook", summary="Register a webhook; the answer is the only place its secret is shown",
           body=schemas.WebhookBody, answers={
               201: Json(schemas.NewWebhook, "The hook, with its signing `secret`"),
               400: "A URL that is not http(s) or is on a private or loopback address, an unknown event, a bad "
                    "model name or secret"})
def create_webhook(body: schemas.WebhookBody):
    registry = get_registry()
    info, secret = hooks.create_hook(registry.db, body.url, body.events, model=body.model, secret=body.secret,
                                     description=body.description,
                                     allow_private=registry.settings.webhook_allow_private, actor=current_actor())
    return schemas.NewWebhook.model_validate({**vars(info), "secret": secret}), 201


@bp.get("/webhooks")
@operation("listWebhooks", summary="The webhooks (never their secrets)",
           answers={200: Json(schemas.WebhookList, "Every webhook not deleted")})
def list_webhooks():
    return schemas.WebhookList(webhooks=[schemas.Webhook.model_validate(h)
                                         for h in hooks.list_hooks(get_registry().db)])


@bp.get("/webhooks/<int:hook_id>")
@operation("getWebhook", summary="A webhook (a deleted one too: deleted_at says when)", path=(HOOK,),
           answers={200: Json(schemas.Webhook, "The hook"), 404: "No such webhook"})
def get_webhook(hook_id: int):
    return schemas.Webhook.model_validate(hooks.get_hook(get_registry().db, hook_id))


@bp.delete("/webhooks/<int:hook_id>")
@operation("deleteWebhook", summary="Delete a webhook: no new events, its pending deliveries fail (audited)",
           path=(HOOK,), answers={200: Json(schemas.Webhook, "The deleted hook"), 404: "No such webhook"})
def delete_webhook(hook_id: int):
    return schemas.Webhook.model_validate(hooks.delete_hook(get_registry().db, hook_id, current_actor()))


@bp.get("/webhooks/<int:hook_id>/deliveries")
@operation("listWebhookDeliveries", summary="A webhook's delivery log, newest first", path=(HOOK,),
           query=schemas.PageQuery, answers={200: Json(schemas.WebhookDeliveryPage, "A page of deliveries"),
                                             400: "Bad page size or token", 404: "No such webhook"})
def list_webhook_deliveries(hook_id: int, query: schemas.PageQuery):
    page = hooks.list_deliveries(get_registry().db, hook_id, page_size=query.page_size, page_token=query.page_token)
    return schemas.WebhookDeliveryPage(deliveries=[schemas.WebhookDelivery.model_validate(d) for d in page.items],
                                       next_page_token=page.next_page_token)


@bp.post("/webhooks/<int:hook_id>/deliveries/<int:delivery_id>/redeliver")
@operation("redeliverWebhook", summary="Send a delivery's event again, as a new delivery (audited)",
           path=(HOOK, DELIVERY), answers={201: Json(schemas.WebhookDelivery, "The new, pending delivery"),
                                           404: "No such webhook or delivery", 409: "The webhook was deleted"})
def redeliver_webhook(hook_id: int, delivery_id: int):
    registry = get_registry()
    made = hooks.redeliver(registry.db, hook_id, delivery_id, current_actor())
    return schemas.WebhookDelivery.model_validate(made), 201
