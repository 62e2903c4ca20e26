"""Tags, alias history, protected aliases and gates, webhooks, lineage (issue 17)

- ``model_tags`` / ``version_tags``: key/value tags; (key, first 128 characters of the value) is
  indexed for search (a whole 5,000-character value would not fit a PostgreSQL btree entry);
- ``alias_history``: every alias move (from, to, who, when, why, forced);
- ``alias_rules``: a model's protected aliases and their promotion gates;
- ``webhooks``, ``webhook_events`` (the outbox, written in the change's transaction) and
  ``webhook_deliveries`` (one per hook and event: attempts, next attempt, last answer);
- ``model_versions``: lineage (checkpoint global_step, source commit, training-run URL, dataset).

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_tags",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(250), primary_key=True),
        sa.Column("value", sa.String(5000), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("updated_at", UTC, nullable=False),
    )
    op.create_index("ix_model_tags_key_value", "model_tags", ["key", sa.text("substr(value, 1, 128)")])
    op.create_table(
        "version_tags",
        sa.Column("version_id", sa.Integer(), sa.ForeignKey("model_versions.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("key", sa.String(250), primary_key=True),
        sa.Column("value", sa.String(5000), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("updated_at", UTC, nullable=False),
    )
    op.create_index("ix_version_tags_key_value", "version_tags", ["key", sa.text("substr(value, 1, 128)")])
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False, server_default=""),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("forced", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", UTC, nullable=False),
    )
    op.create_index("ix_alias_history_model_alias", "alias_history", ["model_id", "alias", "id"])
    _history_from_the_audit_log()
    op.create_table(
        "alias_rules",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("gate", sa.JSON(), nullable=True),
        sa.Column("updated_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("updated_at", UTC, nullable=False),
        sa.UniqueConstraint("model_id", "alias", name="uq_alias_rules_model_alias"),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("deleted_at", UTC, nullable=True),
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("webhook_id", sa.Integer(), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("event_id", sa.Integer(), sa.ForeignKey("webhook_events.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTC, nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", UTC, nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("delivered_at", UTC, nullable=True),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_hook", "webhook_deliveries", ["webhook_id", "id"])
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("global_step", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("source_commit", sa.String(64), nullable=True))
        batch.add_column(sa.Column("run_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("dataset", sa.String(255), nullable=True))
    op.create_index("ix_model_versions_created_at", "model_versions", ["created_at"])
    op.create_index("ix_model_versions_status_id", "model_versions", ["status", "id"])


def _history_from_the_audit_log() -> None:
    """The moves made before this revision, as the audit log recorded them (alias.set: version and
    previous; alias.delete: version), so "which version held production then?" has an answer."""
    events = sa.table("audit_events", sa.column("id", sa.Integer), sa.column("created_at", UTC),
                      sa.column("actor", sa.String), sa.column("action", sa.String), sa.column("target", sa.String),
                      sa.column("details", sa.JSON))
    models = sa.table("models", sa.column("id", sa.Integer), sa.column("name", sa.String))
    history = sa.table("alias_history", sa.column("model_id", sa.Integer), sa.column("alias", sa.String),
                       sa.column("from_version", sa.Integer), sa.column("to_version", sa.Integer),
                       sa.column("actor", sa.String), sa.column("created_at", UTC))
    bind = op.get_bind()
    ids = dict(bind.execute(sa.select(models.c.name, models.c.id)).all())
    rows = []
    for action, target, details, actor, at in bind.execute(
            sa.select(events.c.action, events.c.target, events.c.details, events.c.actor, events.c.created_at)
            .where(events.c.action.in_(["alias.set", "alias.delete"])).order_by(events.c.id)):
        name, _, alias = (target or "").partition(":")
        details = details or {}
        if name not in ids or not alias:
            continue
        moved = action == "alias.set"
        rows.append({"model_id": ids[name], "alias": alias, "actor": actor or "", "created_at": at,
                     "from_version": details.get("previous") if moved else details.get("version"),
                     "to_version": details.get("version") if moved else None})
    if rows:
        op.bulk_insert(history, rows)


def downgrade() -> None:
    op.drop_index("ix_model_versions_status_id", table_name="model_versions")
    op.drop_index("ix_model_versions_created_at", table_name="model_versions")
    with op.batch_alter_table("model_versions") as batch:
        for column in ("dataset", "run_url", "source_commit", "global_step"):
            batch.drop_column(column)
    op.drop_index("ix_webhook_deliveries_hook", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_events")
    op.drop_table("webhooks")
    op.drop_table("alias_rules")
    op.drop_index("ix_alias_history_model_alias", table_name="alias_history")
    op.drop_table("alias_history")
    op.drop_index("ix_version_tags_key_value", table_name="version_tags")
    op.drop_table("version_tags")
    op.drop_index("ix_model_tags_key_value", table_name="model_tags")
    op.drop_table("model_tags")
