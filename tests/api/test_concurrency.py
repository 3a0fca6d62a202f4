"""Concurrent writers against a real server: ETags make exactly one of them win, and a writer
that loses to a deletion is told what was deleted."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy

from tests.api.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRITERS = 6


def test_parallel_patches_with_one_etag_one_wins(live_url: str) -> None:
    with httpx.Client(base_url=live_url, headers=ADMIN, timeout=60) as client:
        tenant = client.post("/v1/tenants", json={"name": "ads"}).json()
        url = f"/v1/tenants/{tenant['id']}"
        etag = client.get(url).headers["ETag"]

    def patch(weight: int) -> tuple[int, int]:
        with httpx.Client(base_url=live_url, headers=ADMIN, timeout=60) as client:
            r = client.patch(url, json={"weight": weight}, headers={"If-Match": etag})
            return r.status_code, weight

    with ThreadPoolExecutor(WRITERS) as pool:
        results = list(pool.map(patch, range(2, WRITERS + 2)))  # 1 is the current weight
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [412] * (WRITERS - 1), results
    winner = next(weight for status, weight in results if status == 200)
    with httpx.Client(base_url=live_url, headers=ADMIN, timeout=60) as client:
        after = client.get(url).json()
    assert after["weight"] == winner and after["revision"] == tenant["revision"] + 1


def test_parallel_creates_of_one_name_one_wins(live_url: str) -> None:
    def create(_: int) -> int:
        with httpx.Client(base_url=live_url, headers=ADMIN, timeout=60) as client:
            return client.post("/v1/tenants", json={"name": "same"}).status_code

    with ThreadPoolExecutor(WRITERS) as pool:
        statuses = sorted(pool.map(create, range(WRITERS)))
    assert statuses == [201] + [409] * (WRITERS - 1)


def _wait_until_blocked_by(engine: sqlalchemy.Engine, blocker: int) -> None:
    """Return once another backend waits for a lock that backend ``blocker`` holds (the
    request under test is blocked behind the test's open transaction)."""
    deadline = time.monotonic() + 30
    query = sqlalchemy.text(
        "SELECT count(*) FROM pg_stat_activity WHERE :blocker = ANY(pg_blocking_pids(pid))"
    )
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.scalar(query, {"blocker": blocker}):
                return
        time.sleep(0.01)
    raise AssertionError(f"no request blocked behind backend {blocker}")


def test_a_key_issued_while_its_tenant_is_deleted_is_404(db_url: str, live_url: str) -> None:
    """A key issued for a tenant whose deletion commits while the insert waits on the tenant's
    row is refused by the foreign key. That is 404, the tenant is gone, not 409 blaming a
    taken name that the request never sent (PostgreSQL: its writers run at once)."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite's writers run one at a time: the request reads the tenant gone")
    with httpx.Client(base_url=live_url, headers=ADMIN, timeout=60) as client:
        tenant = client.post("/v1/tenants", json={"name": "ads"}).json()
    engine = sqlalchemy.create_engine(db_url)
    try:
        with ThreadPoolExecutor(1) as pool, engine.connect() as deleting:
            blocker = deleting.scalar(sqlalchemy.text("SELECT pg_backend_pid()"))
            deleting.execute(sqlalchemy.text("DELETE FROM tenants WHERE id = :id"),
                             {"id": tenant["id"]})  # fmt: skip

            def issue() -> httpx.Response:
                with httpx.Client(base_url=live_url, headers=ADMIN, timeout=60) as client:
                    return client.post(f"/v1/tenants/{tenant['id']}/keys")

            issued = pool.submit(issue)
            _wait_until_blocked_by(engine, blocker)
            deleting.commit()
            r = issued.result()
    finally:
        engine.dispose()
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    assert "deleted" in r.json()["error"]["message"], r.text
