"""The credential cache (api.credential_cache): a token found is not looked up again for about a
second, and never outlives a change to it — revoked, rotated or expired here is refused at the
next request, revoked elsewhere within the second."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy
from sqlalchemy import event

from api.auth import Principal
from api.credential_cache import KEPT_S, CredentialCache
from tests.api.conftest import Api, install_clock

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@contextmanager
def _statements(api: Api) -> Iterator[list[str]]:
    """The SQL statements the app's database runs inside the block."""
    engine = api.client.app.state.gpufair.db.engine  # type: ignore[attr-defined]
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _key_lookups(statements: list[str]) -> int:
    return sum("api_keys.token_hash" in s for s in statements)


def test_a_tenant_key_is_looked_up_once_for_requests_within_the_second(api: Api) -> None:
    _, key = api.tenant("ads")
    with _statements(api) as first:
        assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 200
    with _statements(api) as next_ones:
        for _ in range(5):
            assert api.client.get("/v1/models", headers=api.bearer(key)).status_code == 200
    assert _key_lookups(first) == 1
    assert _key_lookups(next_ones) == 0


def test_a_heartbeat_or_a_new_weight_keeps_what_was_found(api: Api) -> None:
    tenant, key = api.tenant("ads")
    _, token = api.node("n1", gpus=1, seats=2)
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 200
    beat = api.client.post(
        "/v1/nodes/n1/heartbeat", json={"plan_version": 0}, headers=api.bearer(token)
    )
    assert beat.status_code == 200
    etag = api.client.get(f"/v1/tenants/{tenant['id']}", headers=api.admin).headers["ETag"]
    weighted = api.client.patch(
        f"/v1/tenants/{tenant['id']}", json={"weight": 3}, headers={**api.admin, "If-Match": etag}
    )
    assert weighted.status_code == 200
    with _statements(api) as after:
        assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 200
    assert _key_lookups(after) == 0


def test_a_key_revoked_here_is_refused_at_the_next_request(api: Api) -> None:
    tenant, key = api.tenant("ads")
    _, other = api.tenant("news")  # a second tenant's cached key is forgotten too, harmlessly
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 200
    assert api.client.get("/v1/tenants/me", headers=api.bearer(other)).status_code == 200
    (row,) = api.client.get(f"/v1/tenants/{tenant['id']}/keys", headers=api.admin).json()
    revoked = api.client.delete(f"/v1/tenants/{tenant['id']}/keys/{row['id']}", headers=api.admin)
    assert revoked.status_code == 200
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 401
    assert api.client.get("/v1/tenants/me", headers=api.bearer(other)).status_code == 200


def test_a_rotated_node_token_is_refused_at_the_next_request(api: Api) -> None:
    _, token = api.node("n1", gpus=1, seats=2)
    beat = {"plan_version": 0}
    url = "/v1/nodes/n1/heartbeat"
    assert api.client.post(url, json=beat, headers=api.bearer(token)).status_code == 200
    rotated = api.client.post("/v1/nodes/n1/token", headers=api.admin)
    assert rotated.status_code == 200
    assert api.client.post(url, json=beat, headers=api.bearer(token)).status_code == 401
    fresh = rotated.json()["token"]
    assert api.client.post(url, json=beat, headers=api.bearer(fresh)).status_code == 200


def test_a_cached_key_is_refused_once_it_expired(api: Api) -> None:
    tenant, _ = api.tenant("ads")
    clock = install_clock(api.client.app, T0)
    key = api.client.post(
        f"/v1/tenants/{tenant['id']}/keys", json={"expires_in_s": 60}, headers=api.admin
    ).json()["key"]
    for _ in range(2):  # the second is answered from the cache
        assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 200
    clock.advance(61)
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 401


def test_a_key_revoked_by_another_process_is_refused_within_the_second(
    api: Api, db_url: str
) -> None:
    _, key = api.tenant("ads")
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 200
    # Another API process: its own engine, so this app's sessions never see the change.
    elsewhere = sqlalchemy.create_engine(db_url)
    with elsewhere.begin() as connection:
        connection.execute(
            sqlalchemy.text("UPDATE api_keys SET revoked_at = :now"), {"now": datetime.now(UTC)}
        )
    elsewhere.dispose()
    time.sleep(KEPT_S + 0.1)
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 401


# --- the cache alone -----------------------------------------------------------------------------

ADS = Principal(role="tenant", id=1, name="ads", key_id=7)


class _Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_kept_for_kept_s_and_never_past_the_keys_expiry() -> None:
    ticks = _Ticks()
    cache = CredentialCache(kept_s=1.0, clock=ticks)
    cache.keep("gft_a", ADS, key_expires_at=T0 + timedelta(seconds=10), generation=0)
    assert cache.get("gft_a", T0) == ADS
    assert cache.get("gft_a", T0 + timedelta(seconds=10)) is None  # the key expired
    cache.keep("gft_a", ADS, key_expires_at=None, generation=0)
    ticks.now = 0.99
    assert cache.get("gft_a", T0) == ADS
    ticks.now = 1.0
    assert cache.get("gft_a", T0) is None


def test_a_lookup_that_raced_a_change_is_not_kept_and_the_admin_never_is() -> None:
    cache = CredentialCache()
    generation = cache.generation
    cache.forget_all()  # a change committed while the lookup ran
    cache.keep("gft_a", ADS, key_expires_at=None, generation=generation)
    assert cache.get("gft_a", T0) is None
    cache.keep("admin-token", Principal(role="admin"), key_expires_at=None,
               generation=cache.generation)  # fmt: skip
    assert cache.get("admin-token", T0) is None


def test_the_cache_holds_at_most_its_capacity() -> None:
    cache = CredentialCache(capacity=3)
    for n in range(5):
        cache.keep(f"gft_{n}", ADS, key_expires_at=None, generation=cache.generation)
    assert [cache.get(f"gft_{n}", T0) is not None for n in range(5)] == [False, False] + [True] * 3
