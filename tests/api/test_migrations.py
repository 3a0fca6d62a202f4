"""The migrations are the schema: up and down on SQLite and PostgreSQL, matching the ORM."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient

import migrations
from api.app import create_app, ensure_schema
from api.db import TOOL_CONNECT_TIMEOUT_S
from api.errors import SchemaNotReady
from api.models import Base
from executor.wire.heartbeat import MAX_COUNT, parse_heartbeat
from gpufair.commands import db as db_command
from gpufair.commands import serve as serve_command
from gpufair.compose import api_config
from gpufair.settings import ApiSettings, DatabaseSettings, Settings
from tests.api.conftest import ADMIN_TOKEN, make_settings, pg_url
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
        ensure_schema(api_config(prod))
    dev = Settings(database=DatabaseSettings(url=url), api=ApiSettings(dev_mode=True))
    ensure_schema(api_config(dev))
    assert "tenants" in _tables(url)
    ensure_schema(api_config(prod))  # at head now: nothing to do, no error


def test_serve_refuses_a_schema_behind(empty_url: str) -> None:
    migrations.upgrade(empty_url)
    migrations.downgrade(empty_url, "base")
    settings = Settings(database=DatabaseSettings(url=empty_url), api=ApiSettings(dev_mode=True))
    if empty_url.startswith("sqlite"):
        ensure_schema(api_config(settings))  # an empty SQLite in dev mode is the first start
    else:
        with pytest.raises(SchemaNotReady, match=f"needs {migrations.head_revision()}"):
            ensure_schema(api_config(settings))


def test_sla_samples_revision_up_and_down_keeps_data(empty_url: str) -> None:
    """0002 adds the SLA samples table and its downgrade removes it, on a database with rows."""
    migrations.upgrade(empty_url, "0001")
    assert "sla_samples" not in _tables(empty_url)
    engine = sqlalchemy.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO nodes (name, token_hash, created_at) "
                "VALUES ('n1', 'h', '2026-11-23 10:00:00+00:00')"
            )
        migrations.upgrade(empty_url)
        assert _tables(empty_url) == set(Base.metadata.tables) | {"alembic_version"}
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO sla_samples (node_id, tenant, at, received, within_sla) "
                "VALUES (1, 'ads', '2026-11-23 10:00:05+00:00', 4294967296, 4294967295)"
            )
            # 64-bit counts and ids: a busy cluster outgrows 32 bits.
            assert connection.exec_driver_sql(
                "SELECT received - within_sla, id FROM sla_samples"
            ).one() == (1, 1)
        migrations.downgrade(empty_url, "0001")
        assert "sla_samples" not in _tables(empty_url)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT name FROM nodes").scalars().all() == ["n1"]
    finally:
        engine.dispose()


def test_ids_revision_keeps_data_and_moves_sequences_past_referenced_ids(empty_url: str) -> None:
    """0003 keeps every row and id; on SQLite the next tenant and model ids lie past every id
    that a stored allocation or plan names, even of rows deleted before the migration."""
    migrations.upgrade(empty_url, "0002")
    seats = [{"replica": {"model_id": "7", "tenant": "gone"}}, {"replica": None}]
    plan = {"devices": [{"seats": seats}]}
    engine = sqlalchemy.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO tenants (name, weight, criterion, revision, created_at) "
                "VALUES ('ads', 1.0, 'ef1', 1, '2026-11-23 10:00:00+00:00')"
            )
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO allocations (id, version, objective, created_at, solve_seconds, "
                    "certificate, tenant_ids) VALUES (1, 1, 'utilitarian', "
                    "'2026-11-23 10:00:00+00:00', 0.1, '{}', :ids)"
                ),
                {"ids": json.dumps({"ads": 1, "gone": 4})},
            )
            connection.exec_driver_sql(
                "INSERT INTO nodes (name, token_hash, created_at) "
                "VALUES ('n1', 'h', '2026-11-23 10:00:00+00:00')"
            )
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO node_plans (allocation_id, node_id, version, plan) "
                    "VALUES (1, 1, 1, :plan)"
                ),
                {"plan": json.dumps(plan)},
            )
        migrations.upgrade(empty_url)
        with engine.begin() as connection:
            assert connection.exec_driver_sql("SELECT id, name FROM tenants").all() == [(1, "ads")]
            tenant = connection.exec_driver_sql(
                "INSERT INTO tenants (name, weight, criterion, revision, created_at) "
                "VALUES ('new', 1.0, 'ef1', 1, '2026-11-23 11:00:00+00:00') RETURNING id"
            ).scalar_one()
            model = connection.exec_driver_sql(
                "INSERT INTO models (tenant_id, name, artifact, memory_mb, replicas_wanted, "
                "sla_p99_ms, demand_qps, revision, created_at) VALUES (1, 'm', 'zoo:rmc1', 1, "
                "1, 10.0, 1.0, 1, '2026-11-23 11:00:00+00:00') RETURNING id"
            ).scalar_one()
        if empty_url.startswith("sqlite"):
            assert (tenant, model) == (5, 8)
        else:
            assert tenant > 1 and model >= 1  # a PostgreSQL sequence never goes back anyway
        migrations.downgrade(empty_url, "0002")
        with engine.connect() as connection:
            names = connection.exec_driver_sql("SELECT name FROM tenants ORDER BY id").scalars()
            assert names.all() == ["ads", "new"]
    finally:
        engine.dispose()


def test_footprints_revision_up_and_down(empty_url: str) -> None:
    """0004 adds the footprints table (measured replica memory) and its downgrade removes it."""
    migrations.upgrade(empty_url, "0003")
    assert "footprints" not in _tables(empty_url)
    migrations.upgrade(empty_url)
    assert "footprints" in _tables(empty_url)
    migrations.downgrade(empty_url, "0003")
    assert "footprints" not in _tables(empty_url)


def _old_row(criterion: str, holds: bool, slack: float, lam: float) -> dict[str, object]:
    """An agent's row as gpufair wrote it before the strict certificate (issue 12)."""
    return {"alpha": 0.5, "criterion": criterion, "weight": 1.0, "holds": holds, "slack": slack,
            "lambda": lam, "factor": 0.5 + lam / 2, "value": 0.4, "normalised_value": 0.4,
            "total": 1.0, "envy": {}}


# A certificate in the old format: the top-level "holds", every EF-type row checked at one
# applied λ (here 0.5) and PROP-type rows at another (0).
OLD_CERTIFICATE: dict[str, Any] = {
    "fair": False, "holds": False, "violations": 1,
    "agents": {
        "exact": _old_row("prop", True, 0.1, 0.0),
        "failed": _old_row("prop1", False, -0.2, 0.0),
        "relaxed": _old_row("ef1", True, 0.05, 0.5),
    },
    "objective": "utilitarian", "objective_value": 1.2, "unconstrained_value": 1.5,
    "ratio": 0.8, "lambda": 0.5, "lambda_prop": 0.0, "solver": "highs", "status": "optimal",
    "gap": 0.0, "time_s": 0.3, "notes": ["estimated throughput: model 1 on n1/cuda:0"],
}


def test_certificates_revision_makes_old_allocations_readable(empty_url: str) -> None:
    """An allocation stored with the old certificate format reads through the API after 0005,
    each row stating only what its stored figures prove; the downgrade restores the old
    format."""
    migrations.upgrade(empty_url, "0004")
    engine = sqlalchemy.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO allocations (id, version, objective, created_at, solve_seconds, "
                    "certificate, tenant_ids) VALUES (1, 1, 'utilitarian', "
                    "'2026-11-23 10:00:00+00:00', 0.3, :certificate, '{}')"
                ),
                {"certificate": json.dumps(OLD_CERTIFICATE)},
            )
        migrations.upgrade(empty_url)
        migrations.upgrade(empty_url)  # at head: nothing to do, nothing rewritten twice
        with TestClient(create_app(api_config(make_settings(empty_url)))) as client:
            r = client.get("/v1/allocations/1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200, r.text
        certificate = r.json()["certificate"]
        assert "holds" not in certificate and certificate["guarantee"] is None
        rows = certificate["agents"]
        # Checked exactly and held: exact, least λ 0.
        assert (rows["exact"]["holds"], rows["exact"]["slack"], rows["exact"]["lambda"]) == (
            True, 0.1, 0.0)
        # Checked exactly and failed: the exact slack, the least λ unknown (null: pessimistic).
        assert (rows["failed"]["holds"], rows["failed"]["slack"], rows["failed"]["lambda"]) == (
            False, -0.2, None)
        # Checked only at λ = 0.5: exact figures unknown, 0.5 an upper bound on the least λ.
        assert (rows["relaxed"]["holds"], rows["relaxed"]["slack"], rows["relaxed"]["lambda"]) \
            == (False, None, 0.5)
        assert not any(row["guaranteed"] for row in rows.values())
        assert (certificate["fair"], certificate["relaxed"], certificate["violations"]) == (
            False, True, 1)
        assert (certificate["lambda"], certificate["lambda_prop"]) == (0.5, 0.0)
        assert certificate["notes"][0] == OLD_CERTIFICATE["notes"][0]
        assert "'failed', 'relaxed'" in certificate["notes"][1]
        migrations.downgrade(empty_url, "0004")
        with engine.connect() as connection:
            stored = connection.exec_driver_sql("SELECT certificate FROM allocations").scalar_one()
        old = json.loads(stored) if isinstance(stored, str) else stored
        assert old["holds"] is False and "relaxed" not in old
        assert old["agents"]["exact"] == OLD_CERTIFICATE["agents"]["exact"]
        assert old["notes"] == OLD_CERTIFICATE["notes"]
    finally:
        engine.dispose()


def test_model_weight_revision_gives_existing_models_an_equal_split(empty_url: str) -> None:
    """0008 keeps every model and profile: existing models get weight 1 (an equal split, how
    they were valued before) and existing profiles no measured bound (the model's own SLA);
    the next model id still lies past every id used."""
    migrations.upgrade(empty_url, "0007")
    engine = sqlalchemy.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO tenants (name, weight, criterion, revision, created_at) "
                "VALUES ('ads', 1.0, 'ef1', 1, '2026-12-06 10:00:00+00:00')"
            )
            for name in ("a", "b"):
                connection.exec_driver_sql(
                    "INSERT INTO models (tenant_id, name, artifact, memory_mb, replicas_wanted, "
                    f"sla_p99_ms, demand_qps, revision, created_at) VALUES (1, '{name}', "
                    "'zoo:rmc1', 1, 1, 10.0, 1.0, 1, '2026-12-06 10:00:00+00:00')"
                )
            connection.exec_driver_sql("DELETE FROM models WHERE name = 'b'")
            connection.exec_driver_sql(
                "INSERT INTO nodes (name, token_hash, created_at) "
                "VALUES ('n1', 'h', '2026-12-06 10:00:00+00:00')"
            )
            connection.exec_driver_sql(
                "INSERT INTO devices (node_id, device, kind, memory_mb, streams, seats) "
                "VALUES (1, 'cuda:0', 'gpu', 1000, 2, 1)"
            )
            connection.exec_driver_sql(
                "INSERT INTO profiles (model_id, device_id, qps, measured_at) "
                "VALUES (1, 1, '[1.0, 2.0]', '2026-12-06 10:00:00+00:00')"
            )
        migrations.upgrade(empty_url)
        with engine.begin() as connection:
            assert connection.exec_driver_sql("SELECT id, weight FROM models").all() == [(1, 1.0)]
            assert connection.exec_driver_sql("SELECT sla_p99_ms FROM profiles").all() == [
                (None,)
            ]
            model = connection.exec_driver_sql(
                "INSERT INTO models (tenant_id, name, artifact, memory_mb, replicas_wanted, "
                "sla_p99_ms, demand_qps, revision, created_at) VALUES (1, 'c', 'zoo:rmc1', 1, "
                "1, 10.0, 1.0, 1, '2026-12-06 11:00:00+00:00') RETURNING id"
            ).scalar_one()
        assert model == 3  # the deleted model's id 2 is not handed out again
        migrations.downgrade(empty_url, "0007")
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT id FROM models").scalars().all() == [1, 3]
    finally:
        engine.dispose()


def test_sla_sample_tenant_id_revision_attributes_samples_as_the_old_read_did(
    empty_url: str,
) -> None:
    """0009 gives each existing sample the id of the tenant the old read showed it to: the
    tenant that has its name and was created before it was taken; the others get null (the
    admin's only). Its downgrade keeps every sample."""
    migrations.upgrade(empty_url, "0008")
    engine = sqlalchemy.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO tenants (name, weight, criterion, revision, created_at) "
                "VALUES ('ads', 1.0, 'ef1', 1, '2026-12-07 10:00:00+00:00')"
            )
            connection.exec_driver_sql(
                "INSERT INTO nodes (name, token_hash, created_at) "
                "VALUES ('n1', 'h', '2026-12-07 09:00:00+00:00')"
            )
            for tenant, at in [("ads", "09:30"), ("ads", "10:30"), ("gone", "10:30")]:
                connection.exec_driver_sql(
                    "INSERT INTO sla_samples (node_id, tenant, at, received, within_sla) "
                    f"VALUES (1, '{tenant}', '2026-12-07 {at}:00+00:00', 1, 1)"
                )
        migrations.upgrade(empty_url, "0009")
        with engine.connect() as connection:
            assert connection.exec_driver_sql(
                "SELECT tenant, tenant_id FROM sla_samples ORDER BY id"
            ).all() == [("ads", None), ("ads", 1), ("gone", None)]
        migrations.downgrade(empty_url, "0008")
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM sla_samples").scalar() == 3
    finally:
        engine.dispose()


def test_heartbeat_reports_revision_bounds_stored_reports_and_keeps_their_counts(
    empty_url: str,
) -> None:
    """0010 makes every stored report one the heartbeat contract reads back (GET /v1/nodes,
    the next heartbeat's base): replica keys it does not name go, counters past its bounds
    are capped, and the cumulative SLA counts are kept as they were."""
    migrations.upgrade(empty_url, "0009")
    sla = [{"tenant": "ads", "model": "1", "received": 10, "within_sla": 9}]
    replica = {"device": "cuda:0", "seat": 0, "model_id": "1", "tenant": "ads", "completed": 7}
    reports = {
        "junk": {"plan_version": 1, "sla": sla, "replicas": [
            {**replica, "junk": "a" * 1000, "nested": {"k": [1, 2]}, "rejected": 10**40}]},
        "clean": {"plan_version": 1, "sla": sla, "replicas": [replica]},
    }  # fmt: skip
    engine = sqlalchemy.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            for name, report in reports.items():
                connection.execute(
                    sqlalchemy.text(
                        "INSERT INTO nodes (name, token_hash, created_at, report) "
                        "VALUES (:name, :name, '2026-12-07 10:00:00+00:00', :report)"
                    ),
                    {"name": name, "report": json.dumps(report)},
                )
        migrations.upgrade(empty_url, "0010")
        with engine.connect() as connection:
            stored = {
                name: json.loads(report) if isinstance(report, str) else report
                for name, report in connection.exec_driver_sql("SELECT name, report FROM nodes")
            }
    finally:
        engine.dispose()
    assert stored["clean"] == reports["clean"]
    assert stored["junk"] == {**reports["junk"],
                              "replicas": [{**replica, "rejected": MAX_COUNT}]}  # fmt: skip
    for report in stored.values():
        parse_heartbeat(report)


def test_idempotency_etag_revision_up_and_down_keeps_records(empty_url: str) -> None:
    """0011 adds the ETag of a stored reply, null for the records kept from before."""
    migrations.upgrade(empty_url, "0010")
    engine = sqlalchemy.create_engine(empty_url)
    insert = (
        "INSERT INTO idempotency_keys (owner, key, fingerprint, status, body, created_at) "
        "VALUES ('admin', 'k', 'f', 201, '{}', '2026-12-07 10:00:00+00:00')"
    )
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(insert)
        migrations.upgrade(empty_url, "0011")
        with engine.connect() as connection:
            assert connection.exec_driver_sql(
                "SELECT key, etag FROM idempotency_keys"
            ).all() == [("k", None)]
        migrations.downgrade(empty_url, "0010")
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT key FROM idempotency_keys").all() == [
                ("k",)
            ]
    finally:
        engine.dispose()


def _version(url: str) -> list[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(
                connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars()
            )
    finally:
        engine.dispose()


def _columns(url: str, table: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        return {column["name"] for column in sqlalchemy.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_a_run_that_fails_half_way_leaves_schema_and_version_as_they_were(empty_url: str) -> None:
    """An upgrade over several revisions is one transaction, on SQLite as on PostgreSQL: when
    a step fails (here the version update to 0009, refused by a trigger: a crash, a full disk
    or a bad row alike), no revision's change stays behind, and once the cause is gone the
    same upgrade succeeds. pysqlite used to commit each DDL statement on its own: 0008's and
    0009's new columns stayed under version 0007 or 0008, and every later upgrade failed on
    "duplicate column name"."""
    migrations.upgrade(empty_url, "0007")
    engine = sqlalchemy.create_engine(empty_url)
    sqlite = empty_url.startswith("sqlite")
    try:
        with engine.begin() as connection:
            if sqlite:
                connection.exec_driver_sql(
                    "CREATE TRIGGER refuse BEFORE UPDATE ON alembic_version "
                    "WHEN NEW.version_num = '0009' BEGIN SELECT RAISE(ABORT, 'injected'); END"
                )
            else:
                connection.exec_driver_sql(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'injected'; END $$"
                )
                connection.exec_driver_sql(
                    "CREATE TRIGGER refuse BEFORE UPDATE ON alembic_version FOR EACH ROW "
                    "WHEN (NEW.version_num = '0009') EXECUTE FUNCTION refuse()"
                )
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="injected"):
            migrations.upgrade(empty_url)
        assert _version(empty_url) == ["0007"]
        assert "weight" not in _columns(empty_url, "models")
        assert "tenant_id" not in _columns(empty_url, "sla_samples")
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "DROP TRIGGER refuse" if sqlite else "DROP TRIGGER refuse ON alembic_version"
            )
        migrations.upgrade(empty_url)
        assert _version(empty_url) == [migrations.head_revision()]
    finally:
        engine.dispose()


def test_upgrades_started_at_once_run_one_after_the_other(empty_url: str) -> None:
    """Three `gpufair db upgrade` of one empty database at once (a Kubernetes Job retried while
    the first still runs): each waits for the migration lock, the first migrates, the others
    find the database at head; none fails, and the schema and version table are whole. They
    used to run the same steps side by side: all but one failed ("table allocations already
    exists"), and on SQLite a batch's temporary table could stay behind."""
    command = [sys.executable, "-m", "gpufair.cli", "db", "--url", empty_url, "upgrade"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]  # fmt: skip
    for run in runs:
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err[-2000:]
        assert "(up to date)" in out
    assert _version(empty_url) == [migrations.head_revision()]
    assert _tables(empty_url) == set(Base.metadata.tables) | {"alembic_version"}


def test_downgrades_that_rebuild_a_sqlite_table_keep_its_ids_unused(empty_url: str) -> None:
    """A downgrade that drops a column rebuilds the SQLite table, which used to restart its
    AUTOINCREMENT sequence at the largest id left: after 0011, 0009, 0008 and 0006 were undone
    and redone, a deleted key's, model's, profile's, sample's or record's id was handed out
    again (what migration 0003 exists to prevent: stored plans name model ids). The sequences
    now never go back."""
    migrations.upgrade(empty_url)
    engine = sqlalchemy.create_engine(empty_url)
    at = "'2026-12-07 10:00:00+00:00'"
    rows = {
        "api_keys": "(tenant_id, prefix, token_hash, created_at) VALUES (1, 'gf_', '{n}', {at})",
        "models": "(tenant_id, name, artifact, memory_mb, replicas_wanted, sla_p99_ms, "
        "demand_qps, revision, created_at) VALUES (1, '{n}', 'zoo:rmc1', 1, 1, 10.0, 1.0, 1, {at})",
        "profiles": "(model_id, device_id, qps, measured_at) VALUES ({n}, 1, '[1.0]', {at})",
        "sla_samples": "(node_id, tenant, at, received, within_sla) VALUES (1, 'ads', {at}, 1, 1)",
        "idempotency_keys": "(owner, key, fingerprint, status, created_at) "
        "VALUES ('admin', '{n}', 'f', 201, {at})",
    }

    def insert(connection: sqlalchemy.Connection, table: str, n: int) -> int:
        sql = f"INSERT INTO {table} {rows[table].format(n=n, at=at)} RETURNING id"
        return int(connection.exec_driver_sql(sql).scalar_one())

    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO tenants (name, weight, criterion, revision, created_at) "
                f"VALUES ('ads', 1.0, 'ef1', 1, {at})"
            )
            connection.exec_driver_sql(
                f"INSERT INTO nodes (name, token_hash, created_at) VALUES ('n1', 'h', {at})"
            )
            connection.exec_driver_sql(
                "INSERT INTO devices (node_id, device, kind, memory_mb, streams, seats) "
                "VALUES (1, 'cuda:0', 'gpu', 1000, 2, 1)"
            )
        # 0005 and back rebuilds all but idempotency_keys, which it drops: 0010 and back for it.
        rebuilt = {"0005": ["api_keys", "models", "profiles", "sla_samples"],
                   "0010": ["idempotency_keys"]}  # fmt: skip
        for target, tables in rebuilt.items():
            with engine.begin() as connection:
                for table in tables:  # parents first: a profile names model n
                    assert [insert(connection, table, n) for n in (1, 2)] == [1, 2]
                for table in reversed(tables):  # the newest row of each goes
                    connection.exec_driver_sql(f"DELETE FROM {table} WHERE id = 2")
            migrations.downgrade(empty_url, target)
            migrations.upgrade(empty_url)
        with engine.begin() as connection:
            assert {table: insert(connection, table, 3) for table in rows} == dict.fromkeys(rows, 3)
    finally:
        engine.dispose()


def test_db_upgrade_makes_the_folder_of_a_new_sqlite_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gpufair db upgrade` on a fresh install: the default database, var/gpufair.db, lies in a
    folder that does not exist yet. The migrations make it as every other command does
    (api.db.make_engine); they used to fail with "unable to open database file"."""
    url = f"sqlite:///{tmp_path / 'var' / 'gpufair.db'}"
    assert db_command.main(["--url", url, "upgrade"]) == 0
    assert capsys.readouterr().out.startswith(f"database at {migrations.head_revision()};")


def test_db_current_says_a_database_of_a_newer_gpufair_is_ahead(
    empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a rollback of the code, the database is at a revision the code has no migration
    for: `gpufair db current` says so, where it used to advise `gpufair db upgrade`, which
    then fails ("Can't locate revision")."""
    migrations.upgrade(empty_url)
    engine = sqlalchemy.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    finally:
        engine.dispose()
    assert db_command.main(["--url", empty_url, "current"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("database at 9999;") and "(ahead:" in out, out
    assert "gpufair db upgrade" not in out
    # `gpufair serve` refuses it alike, without advising the upgrade that cannot help.
    settings = Settings(database=DatabaseSettings(url=empty_url), api=ApiSettings(dev_mode=False))
    with pytest.raises(SchemaNotReady, match="at 9999, which a newer gpufair migrated") as refused:
        ensure_schema(api_config(settings))
    assert "gpufair db upgrade" not in str(refused.value)


def test_serve_refuses_a_malformed_database_url_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL whose port is not a number stops `gpufair serve` with one line that does not show
    the password, like an unreachable database; it used to end in a ValueError traceback."""
    monkeypatch.setenv("GPUFAIR_DATABASE_URL", "postgresql+psycopg://gf:s3cret@db:port/gpufair")
    monkeypatch.setenv("GPUFAIR_API_ADMIN_TOKEN", ADMIN_TOKEN)
    assert serve_command.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpufair serve: database error: malformed database URL"), err
    assert len(err.splitlines()) == 1 and "s3cret" not in err


@pytest.mark.slow
def test_db_against_a_host_that_drops_connections_gives_up_in_seconds() -> None:
    """A PostgreSQL host that drops packets (here: a listener whose accept queue is full, so
    its kernel drops new connections' SYNs) kept `gpufair db current` waiting for the operating
    system to give up, minutes: the command gives up after its connect timeout, one line."""
    with socket.socket() as silent, socket.socket() as queued:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        queued.connect(silent.getsockname())
        url = f"postgresql+psycopg://gpufair@127.0.0.1:{silent.getsockname()[1]}/gpufair"
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "gpufair.cli", "db", "--url", url, "current"],
            capture_output=True, text=True, timeout=TOOL_CONNECT_TIMEOUT_S + 50,
        )  # fmt: skip
        waited = time.monotonic() - began
    assert done.returncode == 1, done
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "timeout" in done.stderr.lower(), done.stderr
    assert waited < TOOL_CONNECT_TIMEOUT_S + 30
