"""Alembic migrations build exactly the schema the models describe, on SQLite
and (with REGISTRY_TEST_DATABASE_URL) on PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from registry.db import Database, migrate
from registry.models import Base

PG_URL = os.environ.get("REGISTRY_TEST_DATABASE_URL")


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
        assert connection.execute(sa.text("select version_num from alembic_version")).scalar() == "0004"


@pytest.fixture
def postgres_engine():
    if not PG_URL:
        pytest.skip("set REGISTRY_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test to run")
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"registry_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = sa.create_engine(sa.make_url(PG_URL).set(database=name))
    yield engine
    engine.dispose()
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_postgresql_migrated_to_head_matches_the_models(postgres_engine):
    migrate(postgres_engine)
    assert schema_differences(postgres_engine) == []
