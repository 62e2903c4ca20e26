"""model_versions.saved_model_state and saved_model_message: the SavedModel is built after the version is ready

Versions that already have their SavedModel are marked ready; the others stay unset (built on first
need by an export, or by 'registry saved-models').

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("saved_model_state", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("saved_model_message", sa.Text(), nullable=False, server_default=""))
    versions = sa.table("model_versions", sa.column("id", sa.Integer), sa.column("saved_model_state", sa.String))
    files = sa.table("version_files", sa.column("version_id", sa.Integer), sa.column("role", sa.String))
    built = sa.select(files.c.version_id).where(files.c.role == "saved_model")
    op.get_bind().execute(versions.update().where(versions.c.id.in_(built)).values(saved_model_state="ready"))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("saved_model_message")
        batch.drop_column("saved_model_state")
