"""models.served_versions: which versions a TensorFlow Serving export serves (null: the default);
model_versions.signature: the SavedModel signature a pushed SavedModel is frozen from

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("served_versions", sa.JSON(), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("signature", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("signature")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("served_versions")
