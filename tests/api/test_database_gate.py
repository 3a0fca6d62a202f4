"""A stuck database never stalls the API: requests that need it get 503 with Retry-After within
``settings.database.wait_timeout_s``, and liveness, which needs no database, still answers.

The database is made stuck for real, on both backends, by a transaction of the test's own that
holds what every write to a tenant needs (SQLite's write lock; PostgreSQL's lock on the table),
against a real uvicorn serving the app with two request slots.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy

import api.db
from api.app import create_app
from api.db import Database, PoolLimits
from api.errors import Unavailable
from gpufair.compose import api_config
from tests.api.conftest import ADMIN_TOKEN, make_settings
from tests.servers import BackgroundServer
from tests.waiting import wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WAIT_S = 0.5
SLOTS = 2
WRITERS = 6  # more than the slots: some wait for a slot, some for the lock


@contextmanager
def stuck(db_url: str) -> Iterator[None]:
    """Hold, until the end of the block, what every write to ``tenants`` must wait for."""
    if db_url.startswith("sqlite"):
        writer = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        return
    engine = sqlalchemy.create_engine(db_url)
    with engine.connect() as connection:
        connection.exec_driver_sql("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            connection.rollback()
    engine.dispose()


Patch = Callable[[int], httpx.Response]


@contextmanager
def served_tenant(
    db_url: str, wait_s: float
) -> Iterator[tuple[httpx.Client, dict[str, Any], str, str, Patch, Database]]:
    """A served app with SLOTS request slots and one tenant: an admin client, the tenant, its
    URL and ETag, a PATCH of its weight with that ETag on a connection of its own, and the
    app's database gate."""
    settings = make_settings(db_url, database={"pool_size": SLOTS, "wait_timeout_s": wait_s})
    app = create_app(api_config(settings))
    with (
        BackgroundServer(app) as server,
        httpx.Client(base_url=server.url, headers=ADMIN, timeout=20) as client,
    ):
        tenant = client.post("/v1/tenants", json={"name": "ads"}).json()
        url = f"/v1/tenants/{tenant['id']}"
        etag = client.get(url).headers["ETag"]

        def patch(weight: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, headers=ADMIN, timeout=20) as own:
                return own.patch(url, json={"weight": weight}, headers={"If-Match": etag})

        yield client, tenant, url, etag, patch, app.state.gpufair.db


def test_stuck_database_gives_503_with_retry_after_and_liveness_answers(db_url: str) -> None:
    with served_tenant(db_url, WAIT_S) as (client, tenant, url, etag, patch, _):

        with stuck(db_url), ThreadPoolExecutor(WRITERS) as pool:
            replies = list(pool.map(patch, range(2, WRITERS + 2)))
            assert client.get("/healthz").status_code == 200
        assert [r.status_code for r in replies] == [503] * WRITERS, [r.text for r in replies]
        for reply in replies:
            assert reply.json()["error"]["code"] == "unavailable"
            assert int(reply.headers["Retry-After"]) >= 1
        # Nothing was written, and the database serves again once released.
        assert client.get(url).json()["revision"] == tenant["revision"]
        assert client.patch(url, json={"weight": 3}, headers={"If-Match": etag}).status_code == 200
        assert client.get("/readyz").json()["status"] == "ok"


def test_sqlite_writers_waiting_for_the_lock_leave_every_slot_to_readers(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite takes one writer at a time: writers queued behind its lock wait for their turn
    without a slot, so reads are still answered while more writers wait than there are slots
    (PostgreSQL's writers do not queue on one lock, and its table lock here would stop reads)."""
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's single writer")
    with served_tenant(db_url, 5.0) as (client, _, url, _, patch, db):
        gate, writers_at_gate = db.slot, []

        @asynccontextmanager
        async def counted(*, write: bool = False) -> AsyncIterator[None]:
            if write:
                writers_at_gate.append(1)  # on the serving loop, before it waits its turn
            async with gate(write=write):
                yield

        monkeypatch.setattr(db, "slot", counted)
        with ThreadPoolExecutor(WRITERS) as pool:
            with stuck(db_url):
                writes = [pool.submit(patch, weight) for weight in range(2, WRITERS + 2)]
                # Every writer has arrived at the gate: one holds the writer's turn (and a
                # slot), stuck on the lock for up to 5 s; the others wait for that turn.
                # (The guard is within the 5 s they wait before giving up with 503.)
                wait_until(lambda: len(writers_at_gate) == WRITERS, "every writer at the gate",
                           timeout_s=4.0)  # fmt: skip
                reads = [client.get(url) for _ in range(3)]
                assert not any(w.done() for w in writes)
            statuses = sorted(w.result().status_code for w in writes)
        assert [r.status_code for r in reads] == [200] * 3, [r.text for r in reads]
        # Once the lock is free the writers go one after another: one wins, the rest hold a
        # stale ETag.
        assert statuses == [200] + [412] * (WRITERS - 1)


def test_liveness_and_readiness(db_url: str) -> None:
    settings = make_settings(db_url, database={"pool_size": 1, "wait_timeout_s": WAIT_S})
    with (
        BackgroundServer(create_app(api_config(settings))) as server,
        httpx.Client(base_url=server.url, timeout=20) as client,
    ):
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["status"] == "ok" and ready["schema_revision"] is not None
    # A database that is gone: the process is alive, not ready.
    settings = make_settings(
        "postgresql+psycopg://nobody@127.0.0.1:9/none",
        database={"pool_size": 1, "wait_timeout_s": WAIT_S},
    )
    with (
        BackgroundServer(create_app(api_config(settings))) as server,
        httpx.Client(base_url=server.url, timeout=20) as client,
    ):
        assert client.get("/healthz").status_code == 200
        reply = client.get("/readyz")
        assert reply.status_code == 503 and "Retry-After" in reply.headers
        assert reply.json()["error"]["code"] == "unavailable"


def test_a_sqlite_write_from_a_thread_of_its_own_waits_for_the_writers_turn(db_url: str) -> None:
    """The solve's writes run in threads of their own, not under a request's slot: on SQLite
    they take the same writer's turn as requests, so they never meet a request's write in
    SQLite's busy handler; they wait while a request holds it, go as soon as it is given back,
    and get 503 (Unavailable) when it does not come within the wait timeout."""
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's single writer")
    db = Database(db_url, pool=PoolLimits(size=SLOTS, wait_timeout_s=WAIT_S))
    order: list[str] = []

    def thread_write() -> None:
        with db.session(write=True) as session:
            session.execute(sqlalchemy.text("SELECT 1"))
            order.append("thread wrote")

    async def main() -> None:
        async with db.slot(write=True):
            waiting = asyncio.create_task(asyncio.to_thread(thread_write))
            await asyncio.sleep(WAIT_S / 2)
            order.append("request gave its turn back")
        await waiting
        # Held past the wait timeout: the thread's write is refused, not queued for ever.
        async with db.slot(write=True):
            with pytest.raises(Unavailable):
                await asyncio.to_thread(thread_write)

    try:
        asyncio.run(main())
    finally:
        db.dispose()
    assert order == ["request gave its turn back", "thread wrote"]


def test_a_postgres_connection_that_died_while_idle_is_replaced_before_use(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pooled connections are not pinged on every checkout, but one idle longer than
    PING_AFTER_IDLE_S is: if its server session ended meanwhile (a restart, an idle timeout),
    the pool opens another and the caller never sees the dead one."""
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's pooled connections")
    monkeypatch.setattr(api.db, "PING_AFTER_IDLE_S", 0.0)
    db = Database(db_url, pool=PoolLimits(size=1, wait_timeout_s=WAIT_S))
    killer = sqlalchemy.create_engine(db_url)
    try:
        with db.connection() as connection:
            first = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with killer.connect() as connection:
            # Waits (up to 5 s) until the session is gone.
            assert connection.exec_driver_sql(
                f"SELECT pg_terminate_backend({first}, 5000)"
            ).scalar()
        with db.connection() as connection:
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() != first
    finally:
        killer.dispose()
        db.dispose()
