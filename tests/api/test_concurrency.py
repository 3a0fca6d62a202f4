"""Concurrent writers against a real server: ETags make exactly one of them win."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

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
