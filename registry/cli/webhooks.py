"""``registry webhook``: register webhooks, read their delivery log and send a delivery again, through the
registry's HTTP API (an admin token)."""

from __future__ import annotations

import click

from registry.cli.options import connect, url_option
from registry.cli.output import table
from registry.webhooks import EVENTS  # the names only: no database layer


@click.group()
def webhook() -> None:
    """Webhooks: URLs the registry POSTs signed events to (version.ready, alias.moved, ...)."""


@webhook.command("add")
@click.argument("target", metavar="URL")
@click.option("--event", "events", multiple=True, required=True, type=click.Choice(EVENTS),
              help="An event to send (repeatable).")
@click.option("--model", default=None, metavar="NAME", help="Only this model's events (default: every model).")
@click.option("--secret", default=None, metavar="SECRET",
              help="The signing secret, 16-128 characters (default: one the registry makes, shown once).")
@click.option("--description", default="", help="What the hook is for (kept with it).")
@url_option
def add(target: str, events: tuple[str, ...], model: str | None, secret: str | None, description: str,
        url: str | None) -> None:
    """Register URL for the --event events; prints the hook's id and its signing secret (shown only now)."""
    hook = connect(url).add_webhook(target, list(events), model=model, secret=secret, description=description)
    click.echo(f"webhook {hook['id']}: {hook['url']} ({', '.join(hook['events'])}"
               + (f"; model {hook['model']}" if hook.get("model") else "") + ")")
    click.echo(f"secret: {hook['secret']}")
    click.echo("  keep it: it is not shown again; receivers check X-Registry-Signature with it")


@webhook.command("ls")
@url_option
def ls(url: str | None) -> None:
    """List the webhooks (never their secrets)."""
    rows = [(str(h["id"]), h["url"], ",".join(h["events"]), h.get("model") or "*", h["created_by"],
             h["created_at"][:19]) for h in connect(url).list_webhooks()]
    table(("ID", "URL", "EVENTS", "MODEL", "BY", "CREATED"), rows)
    if not rows:
        click.echo("no webhooks: add one with 'registry webhook add URL --event version.ready'", err=True)


@webhook.command("deliveries")
@click.argument("hook_id", metavar="ID", type=int)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Deliveries to show.")
@url_option
def deliveries(hook_id: int, limit: int, url: str | None) -> None:
    """A webhook's delivery log, newest first: status, attempts, the receiver's last answer."""
    rows = [(str(d["id"]), d["event"], d["model"], str(d["payload"].get("version") or "-"), d["status"],
             str(d["attempts"]), str(d["last_status_code"] or "-"), (d["last_error"] or "-")[:60],
             d["created_at"][:19]) for d in connect(url).webhook_deliveries(hook_id, limit=limit)]
    table(("DELIVERY", "EVENT", "MODEL", "VERSION", "STATUS", "ATTEMPTS", "CODE", "ERROR", "CREATED"), rows)
    if not rows:
        click.echo(f"webhook {hook_id} has no deliveries yet", err=True)


@webhook.command("redeliver")
@click.argument("hook_id", metavar="ID", type=int)
@click.argument("delivery_id", metavar="DELIVERY", type=int)
@url_option
def redeliver(hook_id: int, delivery_id: int, url: str | None) -> None:
    """Send delivery DELIVERY's event to webhook ID again (a new delivery, after its pending ones)."""
    made = connect(url).redeliver_webhook(hook_id, delivery_id)
    click.echo(f"delivery {made['id']}: {made['event']} of {made['model']} queued for webhook {hook_id}")


@webhook.command("delete")
@click.argument("hook_id", metavar="ID", type=int)
@url_option
def delete(hook_id: int, url: str | None) -> None:
    """Delete webhook ID: it gets no new events and its pending deliveries fail; its log stays readable."""
    hook = connect(url).delete_webhook(hook_id)
    click.echo(f"deleted webhook {hook['id']} ({hook['url']})")
