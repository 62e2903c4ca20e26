"""Alembic migrations build exactly the schema the models describe, on SQLite
and (with REGISTRY_TEST_DATABASE_URL) on PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from registry.db import Database, migrate
from registry.models import Base



def schema_differences(engine: sa.Engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_sqlite_migrated_to_head_matches_the_models(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    assert schema_differences(engine) == []


def test_migrating_twice_is_harmless(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.upgrade()
    db.upgrade()
    with db.engine.connect() as connection:
        assert connection.execute(sa.text("select version_num from alembic_version")).scalar() == "0013"


@pytest.fixture
def postgres_engine(pg_url):
    engine = sa.create_engine(pg_url)
    yield engine
    engine.dispose()


def test_postgresql_migrated_to_head_matches_the_models(postgres_engine):
    migrate(postgres_engine)
    assert schema_differences(postgres_engine) == []
