"""The migrations are the schema: up and down on SQLite and PostgreSQL, matching the ORM."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import migrations
from api.app import ensure_schema
from api.errors import SchemaNotReady
from api.models import Base
from gpufair.settings import ApiSettings, DatabaseSettings, Settings
from tests.api.conftest import pg_url
from tests.conftest import POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a new SQLite file, or a new PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    schema = f"gf_mig_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield pg_url(schema)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def _tables(url: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    expected = set(Base.metadata.tables)
    migrations.upgrade(empty_url)
    assert _tables(empty_url) == expected | {"alembic_version"}
    migrations.downgrade(empty_url, "base")
    assert _tables(empty_url) - {"alembic_version"} == set()
    migrations.upgrade(empty_url)
    assert _tables(empty_url) == expected | {"alembic_version"}


def test_migrated_schema_matches_the_orm(empty_url: str) -> None:
    migrations.upgrade(empty_url)
    engine = sqlalchemy.create_engine(empty_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_serve_upgrades_only_an_empty_sqlite_in_dev_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'gpufair.db'}"  # the folder does not exist yet
    prod = Settings(database=DatabaseSettings(url=url), api=ApiSettings(dev_mode=False))
    with pytest.raises(SchemaNotReady, match="gpufair db upgrade"):
        ensure_schema(prod)
    ensure_schema(Settings(database=DatabaseSettings(url=url), api=ApiSettings(dev_mode=True)))
    assert "tenants" in _tables(url)
    ensure_schema(prod)  # at head now: nothing to do, no error


def test_serve_refuses_a_schema_behind(empty_url: str) -> None:
    migrations.upgrade(empty_url)
    migrations.downgrade(empty_url, "base")
    settings = Settings(database=DatabaseSettings(url=empty_url), api=ApiSettings(dev_mode=True))
    if empty_url.startswith("sqlite"):
        ensure_schema(settings)  # an empty SQLite in dev mode is the first start
    else:
        with pytest.raises(SchemaNotReady, match="needs 0001"):
            ensure_schema(settings)
