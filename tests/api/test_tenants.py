"""Route tests of /v1/tenants: the admin's CRUD, ETags, keys; a tenant's view of itself."""

from __future__ import annotations

from tests.api.conftest import Api


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
    _, key_a = api.tenant("a")
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
