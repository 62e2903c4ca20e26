"""models.version_count: how many versions a model has, kept with its counter

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("version_count", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE models SET version_count = "
        "(SELECT count(*) FROM model_versions WHERE model_versions.model_id = models.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("version_count")
