"""Alembic environment: runs against the engine the registry hands over, or
the URL in the config when run from the ``alembic`` command line."""

from alembic import context
import sqlalchemy as sa

from registry.models import Base

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK = 0x7265_6769  # any constant shared by every registry process ("regi")


def run_migrations() -> None:
    engine = config.attributes.get("engine") or sa.create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Several processes (servers, workers, containers) may start at once on an
                # empty database: one migrates, the others wait here and then find it at head.
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            context.run_migrations()
        connection.commit()


run_migrations()
