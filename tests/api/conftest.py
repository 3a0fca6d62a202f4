"""Fixtures of the control-plane tests: a fresh database per test, on SQLite and PostgreSQL.

Every route test runs twice, once per database (the ``db_url`` fixture is parametrised; the
PostgreSQL run is marked ``postgres`` and skips when the server is unreachable). The schema is
made by the real migrations once per session: SQLite tests copy a migrated template file, and
PostgreSQL tests share one schema of their own (``gf_test_<random>``, dropped at the end) that
is truncated between tests. Route tests cannot run inside one rolled-back transaction: they
drive the app through HTTP, where each request commits on its own connection, and the
concurrency tests need those connections to be real and separate.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

import migrations
from allocator import DevicePlan, ModelReplica, NodePlan, SeatPlan, parse_certificate
from api.app import create_app
from api.models import (
    AllocationRow,
    Base,
    DeviceRow,
    NodePlanRow,
    NodeRow,
    ProfileRow,
    TenantRow,
)
from gpufair.compose import api_config
from gpufair.settings import AllocatorSettings, ApiSettings, DatabaseSettings, Settings
from tests.conftest import POSTGRES_URL
from tests.servers import BackgroundServer

ADMIN_TOKEN = "test-admin-token-0123456789"


def pg_url(schema: str) -> str:
    """POSTGRES_URL with every connection's search_path set to ``schema``."""
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "gpufair.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    schema = f"gf_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        migrations.upgrade(pg_url(schema))
        yield schema
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def _truncate_postgres(url: str) -> None:
    engine = sqlalchemy.create_engine(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name != "solve_lock")
    with engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        connection.exec_driver_sql("UPDATE solve_lock SET holder = NULL, expires_at = NULL")
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "gpufair.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = pg_url(request.getfixturevalue("pg_schema"))
    _truncate_postgres(url)
    return url


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    """A session on the test database whose transaction is rolled back at the end, for
    service-level tests that need no HTTP layer."""
    engine = sqlalchemy.create_engine(db_url)
    with engine.connect() as connection:
        outer = connection.begin()
        with Session(bind=connection, join_transaction_mode="create_savepoint") as session:
            yield session
        outer.rollback()
    engine.dispose()


def make_settings(url: str, database: dict[str, Any] | None = None, **api: Any) -> Settings:
    """Settings of a test app; apps are built from them through gpufair.compose.api_config, the
    very composition `gpufair serve` runs."""
    return Settings(
        database=DatabaseSettings(url=url, **(database or {})),
        api=ApiSettings(
            admin_token=ADMIN_TOKEN,
            dev_mode=False,
            max_body_bytes=api.pop("max_body_bytes", 256 * 1024),
            max_long_poll_s=api.pop("max_long_poll_s", 2.0),
            # Tests present many bad tokens from one address (the authorisation matrix);
            # tests of the limit set their own.
            failed_credentials_per_minute=api.pop("failed_credentials_per_minute", 100_000),
            **api,
        ),
        allocator=AllocatorSettings(time_limit_s=5.0),
    )


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_config(settings)), raise_server_exceptions=False) as test_client:
        yield test_client


def seat_on_node(url: str, node: str, pairs: Iterable[tuple[str, str]]) -> None:
    """Store a plan seating each (tenant, model id) pair on ``node``'s ``cuda:0``, in the newest
    allocation (one with an empty certificate when there is none yet), for tests whose
    heartbeats report SLA counts without a solve: a node may report only what one of its
    recent plans seats (api.services.nodes). The node must have no plan in that allocation.
    The allocation names the seated tenants that exist by their ids, as a solve would (their
    samples are stored under those ids); a name no tenant has stays unnamed."""
    pairs = list(pairs)
    seats = tuple(
        SeatPlan(k, ModelReplica(model, tenant, "zoo:rmc1?scale=0.05&seed=1", 20.0), 0, 0.0)
        for k, (tenant, model) in enumerate(pairs)
    )
    engine = sqlalchemy.create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            allocation = session.scalar(
                sqlalchemy.select(AllocationRow).order_by(AllocationRow.version.desc()).limit(1)
            )
            if allocation is None:
                certificate = parse_certificate(EMPTY_CERTIFICATE).model_dump()
                allocation = AllocationRow(id=1, version=1, objective="utilitarian",
                                           solve_seconds=0.0, certificate=certificate,
                                           tenant_ids={})
                session.add(allocation)
            ids = session.execute(
                sqlalchemy.select(TenantRow.name, TenantRow.id).where(
                    TenantRow.name.in_({tenant for tenant, _ in pairs})
                )
            )
            allocation.tenant_ids = {**{name: id_ for name, id_ in ids}, **allocation.tenant_ids}
            session.flush()
            node_id = session.scalar(sqlalchemy.select(NodeRow.id).where(NodeRow.name == node))
            assert node_id is not None, node
            plan = NodePlan(node, allocation.version, allocation.id,
                            (DevicePlan("cuda:0", "gpu", len(seats) + 1, 1, seats),))
            session.add(NodePlanRow(allocation_id=allocation.id, node_id=node_id,
                                    version=allocation.version, plan=plan.to_dict()))
    finally:
        engine.dispose()


def store_profiles(url: str, node: str, curves: dict[tuple[int, str], list[float]]) -> None:
    """Store measured curves, (model id, device of ``node``) -> QPS with 1, 2, … streams, as a
    node's upload stores them, for tests of what the allocator makes of curves of models no
    plan has seated yet (which a node may not upload: api.services.nodes)."""
    engine = sqlalchemy.create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            rows = session.execute(
                sqlalchemy.select(DeviceRow.device, DeviceRow.id)
                .join(NodeRow, NodeRow.id == DeviceRow.node_id)
                .where(NodeRow.name == node)
            )
            devices = {device: device_id for device, device_id in rows}
            session.add_all(
                ProfileRow(model_id=model_id, device_id=devices[device], qps=qps)
                for (model_id, device), qps in curves.items()
            )
    finally:
        engine.dispose()


# What a certificate of an allocation without agents says.
EMPTY_CERTIFICATE: dict[str, Any] = {
    "fair": True, "relaxed": False, "violations": 0, "lambda": 0.0, "lambda_prop": 0.0,
    "lambda_lower_bound": None, "guarantee": None, "agents": {}, "objective": "utilitarian",
    "objective_value": None, "unconstrained_value": None, "ratio": None, "solver": "none",
    "status": "unknown", "gap": None, "time_s": 0.0, "notes": [],
}


class Api:
    """Shortcuts over a client: register the things most tests need."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def tenant(self, name: str, **fields: Any) -> tuple[dict[str, Any], str]:
        """Create a tenant and one API key; return (tenant, key)."""
        r = self.client.post("/v1/tenants", json={"name": name, **fields}, headers=self.admin)
        assert r.status_code == 201, r.text
        tenant = r.json()
        r = self.client.post(f"/v1/tenants/{tenant['id']}/keys", headers=self.admin)
        assert r.status_code == 201, r.text
        return tenant, r.json()["key"]

    def model(self, key: str, name: str, **fields: Any) -> dict[str, Any]:
        body = {
            "name": name,
            "artifact": "zoo:rmc1?scale=0.05&seed=1",
            "memory_mb": 500,
            "replicas_wanted": 2,
            "sla_p99_ms": 20.0,
            "demand_qps": 400.0,
            **fields,
        }
        r = self.client.post("/v1/models", json=body, headers=self.bearer(key))
        assert r.status_code == 201, r.text
        return r.json()

    def node(
        self, name: str, gpus: int = 2, seats: int = 2, streams: int = 6
    ) -> tuple[dict[str, Any], str]:
        devices = [
            {
                "device": f"cuda:{k}",
                "kind": "gpu",
                "memory_mb": 16000,
                "streams": streams,
                "seats": seats,
            }
            for k in range(gpus)
        ]
        r = self.client.post(
            "/v1/nodes", json={"name": name, "devices": devices}, headers=self.admin
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return body, body["token"]

    def solve(self, **body: Any) -> dict[str, Any]:
        r = self.client.post("/v1/allocations", json=body or None, headers=self.admin)
        assert r.status_code == 201, r.text
        return r.json()


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client)


class FakeClock:
    """A settable stand-in for the app's clock (``AppState.clock``): heartbeats stamped at
    chosen times lay down minutes of SLA history in a test that takes seconds."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def install_clock(app: Any, now: datetime) -> FakeClock:
    """Make a FakeClock at ``now`` the clock of ``app`` (a FastAPI app, e.g. a TestClient's)."""
    clock = FakeClock(now)
    app.state.gpufair.clock = clock
    return clock


@pytest.fixture
def live_app(settings: Settings) -> FastAPI:
    """The app ``live_url`` serves, for tests that reach into its state (e.g. its clock)."""
    return create_app(api_config(settings))


@pytest.fixture
def live_url(live_app: FastAPI) -> Iterator[str]:
    """The app served by a real uvicorn on 127.0.0.1 (in a thread), for truly parallel clients."""
    with BackgroundServer(live_app) as server:
        yield server.url
