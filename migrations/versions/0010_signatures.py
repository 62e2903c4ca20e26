"""model_versions.signatures, requested_signatures and prediction_output: every signature of a version

Existing versions get the one signature they served, serving_default (or the SavedModel signature
they were frozen from), built from their input and output nodes as the label service keyed them.

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PREDICT = "tensorflow/serving/predict"


def _key(node: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in node)


def _tensor(node: str) -> str:
    return node if ":" in node else f"{node}:0"


def one_signature(input_nodes, output_nodes) -> dict:
    """The predict signature a version converted before this migration served (as of 0010)."""
    inputs = {}
    for spec in input_nodes or []:
        entry = {"name": _tensor(spec["name"]), "dtype": spec.get("dtype"), "shape": spec.get("shape")}
        if spec.get("optional"):
            entry["optional"] = True
        inputs[_key(spec["name"])] = entry
    return {"method": PREDICT, "inputs": inputs,
            "outputs": {_key(node): {"name": _tensor(node)} for node in output_nodes or []}}


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("requested_signatures", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("signatures", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("prediction_output", sa.String(length=255), nullable=True))
    versions = sa.table("model_versions", sa.column("id", sa.Integer), sa.column("signature", sa.String),
                        sa.column("input_nodes", sa.JSON), sa.column("output_nodes", sa.JSON),
                        sa.column("signatures", sa.JSON))
    connection = op.get_bind()
    rows = connection.execute(sa.select(versions.c.id, versions.c.signature, versions.c.input_nodes,
                                        versions.c.output_nodes).where(versions.c.output_nodes.is_not(None)))
    for row in rows.fetchall():
        signatures = {row.signature or "serving_default": one_signature(row.input_nodes, row.output_nodes)}
        connection.execute(versions.update().where(versions.c.id == row.id).values(signatures=signatures))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("prediction_output")
        batch.drop_column("signatures")
        batch.drop_column("requested_signatures")
