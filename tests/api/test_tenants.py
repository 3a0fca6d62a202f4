"""Route tests of /v1/tenants: the admin's CRUD, ETags, keys; a tenant's view of itself."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.errors import TooManyRequests
from api.ratelimit import FailedCredentials
from gpufair.compose import api_config
from gpufair.settings import Settings
from tests.api.conftest import ADMIN_TOKEN, Api, install_clock, make_settings

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def test_create_list_read_update_delete(api: Api) -> None:
    c, admin = api.client, api.admin
    r = c.post("/v1/tenants", json={"name": "ads", "weight": 2, "criterion": "ef1"}, headers=admin)
    assert r.status_code == 201
    tenant = r.json()
    assert (tenant["name"], tenant["weight"], tenant["criterion"]) == ("ads", 2.0, "ef1")
    assert r.headers["ETag"] == f'"r{tenant["revision"]}"'
    assert [t["name"] for t in c.get("/v1/tenants", headers=admin).json()] == ["ads"]

    etag = r.headers["ETag"]
    r = c.patch(f"/v1/tenants/{tenant['id']}", json={"weight": 3},
                headers={**admin, "If-Match": etag})
    assert r.status_code == 200 and r.json()["weight"] == 3.0
    assert r.json()["revision"] == tenant["revision"] + 1

    r = c.delete(f"/v1/tenants/{tenant['id']}", headers={**admin, "If-Match": r.headers["ETag"]})
    assert r.status_code == 204
    assert c.get(f"/v1/tenants/{tenant['id']}", headers=admin).status_code == 404
    assert c.get("/v1/tenants", headers=admin).json() == []


def test_duplicate_name_is_409_naming_the_field(api: Api) -> None:
    api.tenant("ads")
    r = api.client.post("/v1/tenants", json={"name": "ads"}, headers=api.admin)
    assert r.status_code == 409
    assert r.json()["error"]["field"] == "name"


def test_stale_if_match_is_412_and_changes_nothing(api: Api) -> None:
    tenant, _ = api.tenant("ads")
    url = f"/v1/tenants/{tenant['id']}"
    etag = api.client.get(url, headers=api.admin).headers["ETag"]
    first = api.client.patch(url, json={"weight": 2}, headers={**api.admin, "If-Match": etag})
    assert first.status_code == 200
    stale = api.client.patch(url, json={"weight": 5}, headers={**api.admin, "If-Match": etag})
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "stale_etag"
    assert api.client.get(url, headers=api.admin).json()["weight"] == 2.0
    gone = api.client.delete(url, headers={**api.admin, "If-Match": etag})
    assert gone.status_code == 412


def test_a_change_without_if_match_is_428_and_changes_nothing(api: Api) -> None:
    """One rule on both backends (this test runs on each): every PATCH and DELETE of a tenant
    or a model names the revision it read, or ``*`` to overwrite whatever is there."""
    tenant, key = api.tenant("ads")
    model = api.model(key, "ranker")
    for url, headers, change, deletable in [
        (f"/v1/tenants/{tenant['id']}", api.admin, {"weight": 5}, True),
        ("/v1/tenants/me", api.bearer(key), {"criterion": "efm"}, False),
        (f"/v1/models/{model['id']}", api.bearer(key), {"demand_qps": 1}, True),
    ]:
        before = api.client.get(url, headers=headers).json()
        replies = [api.client.patch(url, json=change, headers=headers)]
        if deletable:
            replies.append(api.client.delete(url, headers=headers))
        for r in replies:
            assert r.status_code == 428, (url, r.text)
            assert r.json()["error"] == {
                "code": "etag_required", "field": "If-Match",
                "message": r.json()["error"]["message"]}
        assert api.client.get(url, headers=headers).json() == before
        r = api.client.patch(url, json=change, headers={**headers, "If-Match": "*"})
        assert r.status_code == 200, r.text
        assert r.json()["revision"] == before["revision"] + 1


def test_bad_fields_are_422_with_the_field_named(api: Api) -> None:
    c, admin = api.client, api.admin
    for body, field in [
        ({"name": "Bad Name"}, "name"),
        ({"name": "ok", "weight": 0}, "weight"),
        ({"name": "ok", "criterion": "envy-free-ish"}, "criterion"),
        ({"name": "ok", "colour": "blue"}, "colour"),
    ]:
        r = c.post("/v1/tenants", json=body, headers=admin)
        assert r.status_code == 422, body
        assert r.json()["error"]["field"] == field
        assert r.json()["error"]["code"] == "invalid"


def test_keys_are_shown_once_stored_hashed_and_revocable(api: Api) -> None:
    tenant, key = api.tenant("ads")
    me = api.client.get("/v1/tenants/me", headers=api.bearer(key))
    assert me.status_code == 200 and me.json()["id"] == tenant["id"]
    keys = api.client.get(f"/v1/tenants/{tenant['id']}/keys", headers=api.admin).json()
    assert len(keys) == 1 and "key" not in keys[0] and key.startswith(keys[0]["prefix"])
    revoked = api.client.delete(
        f"/v1/tenants/{tenant['id']}/keys/{keys[0]['id']}", headers=api.admin
    )
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 401


def test_tenant_changes_its_criterion_but_not_its_weight(api: Api) -> None:
    _, key = api.tenant("ads", weight=2)
    auth = {**api.bearer(key), "If-Match": '"r1"'}
    r = api.client.patch("/v1/tenants/me", json={"criterion": "efm"}, headers=auth)
    assert r.status_code == 200 and r.json()["criterion"] == "efm"
    r = api.client.patch("/v1/tenants/me", json={"weight": 9}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["field"] == "weight"


def test_tenant_revokes_only_its_own_keys(api: Api) -> None:
    tenant_a, key_a = api.tenant("a")
    # A second key, so that revoking the first one is not revoking its last.
    assert api.client.post(f"/v1/tenants/{tenant_a['id']}/keys", headers=api.admin).is_success
    tenant_b, key_b = api.tenant("b")
    b_keys = api.client.get("/v1/tenants/me/keys", headers=api.bearer(key_b)).json()
    r = api.client.delete(f"/v1/tenants/me/keys/{b_keys[0]['id']}", headers=api.bearer(key_a))
    assert r.status_code == 404
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key_b)).status_code == 200
    own = api.client.get("/v1/tenants/me/keys", headers=api.bearer(key_a)).json()
    assert (
        api.client.delete(
            f"/v1/tenants/me/keys/{own[0]['id']}", headers=api.bearer(key_a)
        ).status_code
        == 200
    )
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key_a)).status_code == 401


def test_deleting_a_tenant_deletes_its_models_and_keys(api: Api) -> None:
    tenant, key = api.tenant("ads")
    api.model(key, "ranker")
    r = api.client.delete(f"/v1/tenants/{tenant['id']}", headers={**api.admin, "If-Match": "*"})
    assert r.status_code == 204
    assert api.client.get("/v1/models", headers=api.bearer(key)).status_code == 401


def _keys(api: Api, key: str) -> dict[int, dict[str, Any]]:
    keys = api.client.get("/v1/tenants/me/keys", headers=api.bearer(key)).json()
    return {k["id"]: k for k in keys}


def test_an_expiring_key_is_refused_once_it_expired(api: Api) -> None:
    tenant, _ = api.tenant("ads")
    clock = install_clock(api.client.app, T0)
    r = api.client.post(
        f"/v1/tenants/{tenant['id']}/keys", json={"expires_in_s": 60}, headers=api.admin
    )
    assert r.status_code == 201 and r.json()["expires_at"] is not None, r.text
    key = r.json()["key"]
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 200
    clock.advance(61)
    r = api.client.get("/v1/tenants/me", headers=api.bearer(key))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    for bad in (0, 59, 10**9):
        r = api.client.post(
            f"/v1/tenants/{tenant['id']}/keys", json={"expires_in_s": bad}, headers=api.admin
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "expires_in_s", r.text


def test_a_tenant_rotates_its_key_with_and_without_grace(api: Api) -> None:
    _, old = api.tenant("ads")
    clock = install_clock(api.client.app, T0)
    r = api.client.post("/v1/tenants/me/keys/rotate", json={"grace_s": 120},
                        headers=api.bearer(old))
    assert r.status_code == 201, r.text
    new = r.json()["key"]
    assert r.headers["Cache-Control"] == "no-store"  # a new secret: never cached
    old_row = next(k for k in _keys(api, new).values() if old.startswith(k["prefix"]))
    assert old_row["revoked_at"] is None and old_row["expires_at"] is not None
    clock.advance(119)
    assert api.client.get("/v1/tenants/me", headers=api.bearer(old)).status_code == 200
    clock.advance(2)
    assert api.client.get("/v1/tenants/me", headers=api.bearer(old)).status_code == 401
    # Without grace (no body), the key presented is refused at once.
    r = api.client.post("/v1/tenants/me/keys/rotate", headers=api.bearer(new))
    assert r.status_code == 201, r.text
    assert api.client.get("/v1/tenants/me", headers=api.bearer(new)).status_code == 401
    newest = r.json()["key"]
    assert api.client.get("/v1/tenants/me", headers=api.bearer(newest)).status_code == 200
    assert [k["revoked_at"] is None for k in _keys(api, newest).values()] == [True, False, True]


def test_a_tenant_cannot_revoke_its_last_usable_key(api: Api) -> None:
    tenant, key = api.tenant("ads")
    [only] = _keys(api, key)
    r = api.client.delete(f"/v1/tenants/me/keys/{only}", headers=api.bearer(key))
    assert r.status_code == 409 and "last usable key" in r.json()["error"]["message"], r.text
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 200
    # A second key, expired by now, does not count as one to fall back on.
    clock = install_clock(api.client.app, T0)
    r = api.client.post(
        f"/v1/tenants/{tenant['id']}/keys", json={"expires_in_s": 60}, headers=api.admin
    )
    clock.advance(61)
    r = api.client.delete(f"/v1/tenants/me/keys/{only}", headers=api.bearer(key))
    assert r.status_code == 409, r.text
    # The admin may revoke it (and issue another).
    r = api.client.delete(f"/v1/tenants/{tenant['id']}/keys/{only}", headers=api.admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert api.client.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 401


def test_a_key_about_to_expire_does_not_let_a_tenant_revoke_its_lasting_one(api: Api) -> None:
    """After a rotation with grace, the old key still works for the grace; revoking the new key
    with it would leave the tenant no key once the grace ends: 409. A revocation is allowed
    when another key lasts at least as long as the one revoked."""
    tenant, old = api.tenant("ads")
    clock = install_clock(api.client.app, T0)
    r = api.client.post("/v1/tenants/me/keys/rotate", json={"grace_s": 5},
                        headers=api.bearer(old))  # fmt: skip
    assert r.status_code == 201, r.text
    new = r.json()
    r = api.client.delete(f"/v1/tenants/me/keys/{new['id']}", headers=api.bearer(old))
    assert r.status_code == 409 and "last usable key" in r.json()["error"]["message"], r.text
    clock.advance(6)
    assert api.client.get("/v1/tenants/me", headers=api.bearer(new["key"])).status_code == 200
    # Two expiring keys: the one that expires sooner may go, the one that lasts longer not.
    issued = [
        api.client.post(f"/v1/tenants/{tenant['id']}/keys", json={"expires_in_s": seconds},
                        headers=api.admin).json()
        for seconds in (600, 1200)
    ]  # fmt: skip
    auth = api.bearer(new["key"])
    r = api.client.delete(f"/v1/tenants/me/keys/{new['id']}", headers=auth)
    assert r.status_code == 409, r.text  # the others expire; this one does not
    r = api.client.delete(f"/v1/tenants/me/keys/{issued[0]['id']}", headers=auth)
    assert r.status_code == 200, r.text  # the never-expiring one outlasts it
    soon, late = api.bearer(issued[0]["key"]), issued[1]
    assert api.client.get("/v1/tenants/me", headers=soon).status_code == 401
    r = api.client.post("/v1/tenants/me/keys/rotate", headers=auth)  # new -> a fresh key
    fresh = r.json()
    r = api.client.delete(f"/v1/tenants/me/keys/{fresh['id']}",
                          headers=api.bearer(late["key"]))  # fmt: skip
    assert r.status_code == 409, r.text
    r = api.client.delete(f"/v1/tenants/me/keys/{late['id']}", headers=api.bearer(fresh["key"]))
    assert r.status_code == 200, r.text


def test_failed_credentials_are_rate_limited_per_address(db_url: str) -> None:
    """After 3 unknown tokens within a minute, every request of that address that presents a
    token gets 429 with Retry-After — the right admin token too — and one without a token is
    still 401; another address is not affected."""
    settings = make_settings(db_url, failed_credentials_per_minute=3)
    with TestClient(create_app(api_config(settings))) as client:
        for k in range(3):
            r = client.get("/v1/tenants/me", headers={"Authorization": f"Bearer gft_guess{k}"})
            assert r.status_code == 401
        for token in ("gft_guess9", ADMIN_TOKEN):
            r = client.get("/v1/tenants", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert client.get("/v1/tenants").status_code == 401
    with TestClient(create_app(api_config(settings)), client=("10.0.0.7", 5000)) as other:
        r = other.get("/v1/tenants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200


def test_the_limiter_forgets_after_its_window_and_stays_bounded() -> None:
    now = [0.0]
    limiter = FailedCredentials(2, window_s=60, max_addresses=100, clock=lambda: now[0])
    limiter.failed("a")
    limiter.failed("a")
    with pytest.raises(TooManyRequests) as refused:
        limiter.check("a")
    assert refused.value.retry_after_s == 60
    now[0] = 30.0
    limiter.check("b")  # another address
    now[0] = 60.5  # both failures are a minute old
    limiter.check("a")
    for k in range(10_000):  # a flood from many addresses never grows the table past its bound
        limiter.failed(f"10.{k}")
    assert limiter.tracked() == 100


@contextmanager
def _replica_holding(api: Api, settings: Settings, key: str) -> Iterator[TestClient]:
    """A second API replica whose credential cache holds ``key`` as valid (kept an hour): the
    moment between a replica's lookup of a key and a change another replica commits."""
    with TestClient(create_app(api_config(settings))) as replica:
        replica.app.state.gpufair.credentials.kept_s = 3600.0  # type: ignore[attr-defined]
        assert replica.get("/v1/tenants/me", headers=api.bearer(key)).status_code == 200
        yield replica


@pytest.mark.parametrize("path", ["/v1/tenants/me/keys/rotate", "/v1/tenants/me/keys"])
def test_a_key_rotated_through_another_replica_mints_nothing_more(
    api: Api, settings: Settings, path: str
) -> None:
    """A rotation revokes the key it presents, whichever replica serves it. A second rotation
    with that key, or an inference-only key issued with it, sent to a replica that still holds
    the key as valid (its credential cache, or a concurrent request on PostgreSQL that read the
    key before the first committed), is refused (401) and mints no key: otherwise one revoked
    key would leave behind as many lasting keys as requests raced, and SQLite and PostgreSQL
    would answer differently."""
    tenant, key = api.tenant("ads")
    with _replica_holding(api, settings, key) as replica:
        first = api.client.post("/v1/tenants/me/keys/rotate", headers=api.bearer(key))
        assert first.status_code == 201, first.text
        r = replica.post(path, headers=api.bearer(key))
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    keys = api.client.get(f"/v1/tenants/{tenant['id']}/keys?active=true", headers=api.admin)
    assert [k["id"] for k in keys.json()] == [first.json()["id"]]


def test_a_key_revoked_through_another_replica_cannot_revoke_the_other(
    api: Api, settings: Settings
) -> None:
    """Two API keys revoking each other at once: the first wins and the second, whose key is
    revoked by then, is 401 on both backends — not 409 calling its target "your last usable
    key", as PostgreSQL (or a replica that still holds the key as valid) used to answer."""
    tenant, first = api.tenant("ads")
    second = api.client.post(f"/v1/tenants/{tenant['id']}/keys", headers=api.admin).json()
    first_id = next(k for k in _keys(api, first) if k != second["id"])
    with _replica_holding(api, settings, second["key"]) as replica:
        r = api.client.delete(f"/v1/tenants/me/keys/{second['id']}", headers=api.bearer(first))
        assert r.status_code == 200, r.text
        r = replica.delete(f"/v1/tenants/me/keys/{first_id}", headers=api.bearer(second["key"]))
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    assert api.client.get("/v1/tenants/me", headers=api.bearer(first)).status_code == 200
