"""Evaluation sets, comparison reports, version metrics, auto-comparison settings and shadow traffic

- ``eval_sets``: a model's named evaluation sets; each upload of a name is a new immutable revision
  (a content-addressed blob), deleted ones kept as tombstones so reports that name them stay readable;
- ``comparison_reports``: every comparison (by hand or automatic): versions with their sha256, the set
  revision, the signature, status and progress while it runs as a job, and the report;
- ``jobs.report_id``: a comparison job runs a report (``jobs.version_id`` names its candidate version);
- ``version_metrics``: named numeric metrics per version (``accuracy@SET``), from comparisons or the API;
- ``models.auto_compare``: the sets and the reference alias a ready version is compared on;
- ``aliases.shadow_version_id``: the version that gets a copy of the alias's traffic;
- ``shadow_windows``: primary/shadow agreement and output differences aggregated per time window;
- ``shadow_samples``: a bounded sample of inputs on which primary and shadow disagreed (off by default).

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "eval_sets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False, server_default=""),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("deleted_at", UTC, nullable=True),
        sa.UniqueConstraint("model_id", "name", "revision", name="uq_eval_sets_revision"),
    )
    op.create_index("ix_eval_sets_sha256", "eval_sets", ["sha256"])
    op.create_table(
        "comparison_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False, server_default="manual"),
        sa.Column("eval_set_id", sa.Integer(), sa.ForeignKey("eval_sets.id", ondelete="SET NULL"), nullable=True),
        sa.Column("eval_set_name", sa.String(64), nullable=True),
        sa.Column("eval_set_revision", sa.Integer(), nullable=True),
        sa.Column("signature", sa.String(128), nullable=False, server_default=""),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=True),
        sa.Column("done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("total", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("finished_at", UTC, nullable=True),
    )
    op.create_index("ix_comparison_reports_model_created", "comparison_reports", ["model_id", "created_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("report_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_jobs_report_id", "comparison_reports", ["report_id"], ["id"],
                                 ondelete="CASCADE")
    op.create_table(
        "version_metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version_id", sa.Integer(), sa.ForeignKey("model_versions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("eval_set", sa.String(64), nullable=True),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("source", sa.String(32), nullable=False, server_default="api"),
        sa.Column("report_id", sa.Integer(), sa.ForeignKey("comparison_reports.id", ondelete="SET NULL"),
                  nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("created_at", UTC, nullable=False),
    )
    op.create_index("ix_version_metrics_version_name", "version_metrics", ["version_id", "name"])
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("auto_compare", sa.JSON(), nullable=True))
    with op.batch_alter_table("aliases") as batch:
        batch.add_column(sa.Column("shadow_version_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_aliases_shadow_version_id", "model_versions", ["shadow_version_id"], ["id"],
                                 ondelete="SET NULL")
    op.create_table(
        "shadow_windows",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("primary_version", sa.Integer(), nullable=False),
        sa.Column("shadow_version", sa.Integer(), nullable=False),
        sa.Column("window_start", UTC, nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("compared", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("agreed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("dropped", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("errors", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("values", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("sum_abs_diff", sa.Float(), nullable=False, server_default="0"),
        sa.Column("max_abs_diff", sa.Float(), nullable=False, server_default="0"),
        sa.UniqueConstraint("model_id", "alias", "primary_version", "shadow_version", "window_start",
                            name="uq_shadow_windows_window"),
    )
    op.create_table(
        "shadow_samples",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("primary_version", sa.Integer(), nullable=False),
        sa.Column("shadow_version", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("primary_outputs", sa.JSON(), nullable=True),
        sa.Column("shadow_outputs", sa.JSON(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
    )
    op.create_index("ix_shadow_samples_model_alias", "shadow_samples", ["model_id", "alias", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_shadow_samples_model_alias", table_name="shadow_samples")
    op.drop_table("shadow_samples")
    op.drop_table("shadow_windows")
    with op.batch_alter_table("aliases") as batch:
        batch.drop_constraint("fk_aliases_shadow_version_id", type_="foreignkey")
        batch.drop_column("shadow_version_id")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("auto_compare")
    op.drop_index("ix_version_metrics_version_name", table_name="version_metrics")
    op.drop_table("version_metrics")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_report_id", type_="foreignkey")
        batch.drop_column("report_id")
    op.drop_index("ix_comparison_reports_model_created", table_name="comparison_reports")
    op.drop_table("comparison_reports")
    op.drop_index("ix_eval_sets_sha256", table_name="eval_sets")
    op.drop_table("eval_sets")
