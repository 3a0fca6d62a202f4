"""``Idempotency-Key`` on creating POSTs (api/idempotency.py), on both backends."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

import allocator
import api.routes.allocations as allocation_routes
from tests.api.conftest import ADMIN_TOKEN, Api, install_clock
from tests.waiting import Signalling

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def test_a_retry_gets_the_first_reply_and_creates_nothing_twice(api: Api) -> None:
    clock = install_clock(api.client.app, T0)
    headers = {**api.admin, "Idempotency-Key": "create-ads"}
    first = api.client.post("/v1/tenants", json={"name": "ads", "weight": 2}, headers=headers)
    again = api.client.post("/v1/tenants", json={"name": "ads", "weight": 2}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert [t["name"] for t in api.client.get("/v1/tenants", headers=api.admin).json()] == ["ads"]
    # The same key for another request is refused, naming the header.
    other = api.client.post("/v1/tenants", json={"name": "feed"}, headers=headers)
    assert other.status_code == 422 and other.json()["error"]["field"] == "Idempotency-Key"
    # A tenant's keys are its own: the admin's key names nothing for it.
    r = api.client.post(f"/v1/tenants/{first.json()['id']}/keys", headers=api.admin)
    tenant = {"Authorization": f"Bearer {r.json()['key']}", "Idempotency-Key": "create-ads"}
    body = {"name": "m", "artifact": "zoo:rmc1", "memory_mb": 10, "sla_p99_ms": 20,
            "demand_qps": 5}
    models = [api.client.post("/v1/models", json=body, headers=tenant) for _ in range(2)]
    assert [m.status_code for m in models] == [201, 201]
    assert models[0].json() == models[1].json()
    assert len(api.client.get("/v1/models", headers=tenant).json()) == 1
    # After a day the key is forgotten: the same request creates again (here: name taken).
    clock.advance(25 * 3600)
    late = api.client.post("/v1/tenants", json={"name": "ads", "weight": 2}, headers=headers)
    assert late.status_code == 409 and late.json()["error"]["field"] == "name"


def test_a_secret_is_never_replayed(api: Api) -> None:
    headers = {**api.admin, "Idempotency-Key": "node-n1"}
    devices = [{"device": "cpu:0", "kind": "cpu", "memory_mb": 1000, "streams": 2, "seats": 1}]
    first = api.client.post("/v1/nodes", json={"name": "n1", "devices": devices},
                            headers=headers)
    assert first.status_code == 201 and first.json()["token"]
    again = api.client.post("/v1/nodes", json={"name": "n1", "devices": devices},
                            headers=headers)
    assert again.status_code == 409 and "secret shown once" in again.json()["error"]["message"]
    assert first.json()["token"] not in again.text
    assert len(api.client.get("/v1/nodes", headers=api.admin).json()) == 1


def test_a_retried_solve_is_not_solved_again(api: Api) -> None:
    _, key = api.tenant("ads")
    api.model(key, "m", replicas_wanted=1)
    api.node("n1", gpus=1)
    headers = {**api.admin, "Idempotency-Key": "solve-1"}
    first = api.client.post("/v1/allocations", headers=headers)
    again = api.client.post("/v1/allocations", headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["version"] == first.json()["version"] == 1
    assert len(api.client.get("/v1/allocations", headers=api.admin).json()) == 1


def test_concurrent_requests_with_one_key_create_once(live_url: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": "same"}

    def create(_: int) -> int:
        with httpx.Client(base_url=live_url, timeout=60) as client:
            return client.post("/v1/tenants", json={"name": "once"}, headers=headers).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(create, range(8)))
    assert set(statuses) <= {201, 409} and 201 in statuses, statuses
    with httpx.Client(base_url=live_url, timeout=60) as client:
        names = [t["name"] for t in client.get("/v1/tenants", headers=headers).json()]
    assert names == ["once"]


def test_concurrent_solves_with_one_key_solve_once(
    live_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``POST /v1/allocations`` with one key at once: the key is looked for under the solve
    lock, so the second waits for the first solve and replays its reply; one allocation is
    stored, and no caller is told of a conflict."""
    honest, solves = allocator.allocate_cluster, []
    # Each request's first step in the route, before it waits for the solve lock.
    arrivals = Signalling(allocation_routes.fingerprint)

    def slow(*args: Any, **kwargs: Any) -> allocator.ClusterAllocation:
        solves.append(1)
        arrivals.wait(2)  # both requests arrive while the first solves
        return honest(*args, **kwargs)

    monkeypatch.setattr(allocator, "allocate_cluster", slow)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=live_url, headers=admin, timeout=60) as client:
        api = Api.__new__(Api)
        api.client, api.admin = client, admin  # type: ignore[assignment]
        _, key = api.tenant("ads")
        api.model(key, "m", replicas_wanted=1)
        api.node("n1", gpus=1)
    monkeypatch.setattr(allocation_routes, "fingerprint", arrivals)

    def solve(_: int) -> httpx.Response:
        with httpx.Client(base_url=live_url, timeout=60) as client:
            return client.post("/v1/allocations", headers={**admin, "Idempotency-Key": "once"})

    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(solve, range(2)))
    assert [r.status_code for r in replies] == [201, 201], [r.text for r in replies]
    assert replies[0].json() == replies[1].json()
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in replies) == ["", "true"]
    assert len(solves) == 1 and len(arrivals.returned) == 2
    with httpx.Client(base_url=live_url, headers=admin, timeout=60) as client:
        assert [a["version"] for a in client.get("/v1/allocations").json()] == [1]


def test_a_replayed_create_carries_the_first_replys_etag(api: Api) -> None:
    headers = {**api.admin, "Idempotency-Key": "create-ads"}
    first = api.client.post("/v1/tenants", json={"name": "ads"}, headers=headers)
    again = api.client.post("/v1/tenants", json={"name": "ads"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["ETag"] == first.headers["ETag"] == '"r1"'
    key = api.client.post(f"/v1/tenants/{first.json()['id']}/keys", headers=api.admin)
    tenant = {"Authorization": f"Bearer {key.json()['key']}", "Idempotency-Key": "create-m"}
    body = {"name": "m", "artifact": "zoo:rmc1", "memory_mb": 10, "sla_p99_ms": 20,
            "demand_qps": 5}  # fmt: skip
    models = [api.client.post("/v1/models", json=body, headers=tenant) for _ in range(2)]
    assert [m.status_code for m in models] == [201, 201]
    assert models[1].headers["ETag"] == models[0].headers["ETag"] == '"r1"'
