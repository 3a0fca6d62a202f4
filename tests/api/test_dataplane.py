"""Route tests of what the data plane reads from the API: a node's credential document
(``/v1/nodes/{node}/credentials``), inference-only keys, and the routing table (``/v1/routes``).
"""

from __future__ import annotations

import json
from typing import Any

from allocator import NodePlan
from api.auth import token_hash
from executor.wire.credentials import CredentialDocument, key_digest, salted
from tests.api.conftest import Api


def _seated_tenants(api: Api, node: str, token: str) -> set[str]:
    r = api.client.get(f"/v1/nodes/{node}/plan", headers=api.bearer(token))
    return {s.replica.tenant for _, s in NodePlan.from_dict(r.json()).replicas() if s.replica}


def _credentials(api: Api, node: str, token: str, **headers: str) -> Any:
    return api.client.get(
        f"/v1/nodes/{node}/credentials", headers={**api.bearer(token), **headers}
    )


def _two_tenants_on_one_node(api: Api) -> tuple[dict[str, str], str]:
    """Tenants ads and news with a model each, both seated on node n1; keys by tenant."""
    keys = {}
    for name in ("ads", "news"):
        _, keys[name] = api.tenant(name)
        api.model(keys[name], f"{name}-m", replicas_wanted=1, demand_qps=50.0)
    _, token = api.node("n1", gpus=1, seats=2)
    api.solve()
    assert _seated_tenants(api, "n1", token) == {"ads", "news"}
    return keys, token


def test_the_document_holds_salted_hashes_of_the_seated_tenants_usable_keys_only(
    api: Api,
) -> None:
    keys, token = _two_tenants_on_one_node(api)
    _, unseated_key = api.tenant("idle")  # no model: seated nowhere
    r = _credentials(api, "n1", token)
    assert r.status_code == 200 and r.headers["ETag"].startswith('"credentials-')
    document = CredentialDocument.model_validate(r.json())
    assert document.node == "n1" and set(document.tenants) == {"ads", "news"}
    for tenant, key in keys.items():
        assert document.tenants[tenant] == [salted(document.salt, key_digest(key))]
    # Neither a key nor the digest the API stores appears in the document.
    text = r.text
    for key in [*keys.values(), unseated_key]:
        assert key not in text and token_hash(key) not in text
    # Another node's salt differs, so its document's entries for the same keys do too.
    _, other = api.node("n2", gpus=1, seats=2)
    assert _credentials(api, "n2", other).json()["salt"] != document.salt


def test_a_revoked_key_leaves_the_document_and_the_long_poll_returns_at_once(api: Api) -> None:
    keys, token = _two_tenants_on_one_node(api)
    first = _credentials(api, "n1", token)
    etag = first.headers["ETag"]
    unchanged = api.client.get(
        "/v1/nodes/n1/credentials?wait=0.3", headers={**api.bearer(token), "If-None-Match": etag}
    )
    assert unchanged.status_code == 304
    tenant_id = api.client.get("/v1/tenants/me", headers=api.bearer(keys["ads"])).json()["id"]
    spare = api.client.post(f"/v1/tenants/{tenant_id}/keys", headers=api.admin).json()
    ads_keys = api.client.get(f"/v1/tenants/{tenant_id}/keys", headers=api.admin).json()
    revoked = next(k for k in ads_keys if k["id"] != spare["id"])
    r = api.client.delete(f"/v1/tenants/{tenant_id}/keys/{revoked['id']}", headers=api.admin)
    assert r.status_code == 200
    after = _credentials(api, "n1", token, **{"If-None-Match": etag})
    assert after.status_code == 200 and after.headers["ETag"] != etag
    document = CredentialDocument.model_validate(after.json())
    assert document.tenants["ads"] == [salted(document.salt, key_digest(spare["key"]))]


def test_an_inference_key_is_for_queries_only(api: Api) -> None:
    keys, token = _two_tenants_on_one_node(api)
    tenant = api.bearer(keys["ads"])
    r = api.client.post("/v1/tenants/me/keys", json={"expires_in_s": 3600}, headers=tenant)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["key"].startswith("gfi_") and created["scope"] == "inference"
    assert created["expires_at"] is not None
    # The control plane refuses it, saying what it is; a valid key is no guessed token, so its
    # refusals do not count towards the address's failed credentials (30 a minute).
    limiter = api.client.app.state.gpufair.failed_credentials  # type: ignore[attr-defined]
    for _ in range(3):
        refused = api.client.get("/v1/tenants/me", headers=api.bearer(created["key"]))
        assert refused.status_code == 401, refused.text
        assert "inference-only key" in refused.json()["error"]["message"], refused.text
    assert limiter.tracked() == 0
    assert api.client.get("/v1/tenants/me", headers=api.bearer("gfi_made_up")).status_code == 401
    assert limiter.tracked() == 1  # a made-up one is counted
    document = CredentialDocument.model_validate(_credentials(api, "n1", token).json())
    assert salted(document.salt, key_digest(created["key"])) in document.tenants["ads"]
    listed = api.client.get("/v1/tenants/me/keys", headers=tenant).json()
    assert sorted(k["scope"] for k in listed) == ["inference", "tenant"]
    # Revoking it is allowed; the tenant's one API key stays protected (409).
    assert api.client.delete(f"/v1/tenants/me/keys/{created['id']}", headers=tenant).is_success
    own = next(k for k in listed if k["scope"] == "tenant")
    assert api.client.delete(f"/v1/tenants/me/keys/{own['id']}", headers=tenant).status_code == 409
    # The admin issues either kind.
    tenant_id = created["tenant_id"]
    r = api.client.post(
        f"/v1/tenants/{tenant_id}/keys", json={"scope": "inference"}, headers=api.admin
    )
    assert r.status_code == 201 and r.json()["key"].startswith("gfi_")


def test_credentials_are_the_node_tokens_own(api: Api) -> None:
    _, token = _two_tenants_on_one_node(api)
    _, other = api.node("n2", gpus=1)
    # Another node's token is answered as the plan route answers it: no such node for it.
    plan = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(other)).status_code
    assert _credentials(api, "n1", other).status_code == plan == 404
    assert api.client.get("/v1/nodes/n1/credentials", headers=api.admin).status_code == 403


def _heartbeat(api: Api, node: str, token: str, url: str | None) -> None:
    body: dict[str, Any] = {"plan_version": 1}
    if url is not None:
        body["url"] = url
    r = api.client.post(f"/v1/nodes/{node}/heartbeat", json=body, headers=api.bearer(token))
    assert r.status_code == 200, r.text


def test_the_routing_table_lists_each_models_replicas_under_its_nodes_advertised_url(
    api: Api,
) -> None:
    _, key = api.tenant("ads")
    model = api.model(key, "ranker", replicas_wanted=2, demand_qps=100.0)
    tokens = {name: api.node(name, gpus=1, seats=1)[1] for name in ("n1", "n2", "n3")}
    assert api.client.get("/v1/routes", headers=api.admin).json() == {"version": 0, "models": {}}
    api.solve()
    plans = {n: NodePlan.from_dict(api.client.get(f"/v1/nodes/{n}/plan",
                                                  headers=api.bearer(t)).json())
             for n, t in tokens.items()}  # fmt: skip
    seated = sorted(n for n, p in plans.items() if p.replicas())
    assert len(seated) == 2
    _heartbeat(api, seated[0], tokens[seated[0]], "http://10.0.0.1:9090")
    r = api.client.get("/v1/routes", headers=api.admin)
    assert r.status_code == 200
    table = r.json()
    # A node that advertised no URL yet cannot be routed to.
    assert table["version"] == 1
    entry = table["models"][str(model["id"])]
    assert entry["tenant"] == "ads"
    assert [(x["node"], x["url"]) for x in entry["replicas"]] == [
        (seated[0], "http://10.0.0.1:9090")
    ]
    etag = r.headers["ETag"]
    same = api.client.get("/v1/routes?wait=0.2", headers={**api.admin, "If-None-Match": etag})
    assert same.status_code == 304
    _heartbeat(api, seated[1], tokens[seated[1]], "http://10.0.0.2:9090")
    changed = api.client.get("/v1/routes", headers={**api.admin, "If-None-Match": etag})
    assert changed.status_code == 200
    replicas = changed.json()["models"][str(model["id"])]["replicas"]
    assert sorted(x["url"] for x in replicas) == ["http://10.0.0.1:9090", "http://10.0.0.2:9090"]
    plan_seat = plans[seated[0]].replicas()[0]
    first = next(x for x in replicas if x["node"] == seated[0])
    assert (first["device"], first["seat"], first["pool_weight"]) == (
        plan_seat[0].device, plan_seat[1].seat, plan_seat[1].pool_weight,
    )  # fmt: skip
    assert api.client.get("/v1/routes", headers=api.bearer(key)).status_code == 403
    assert json.dumps(changed.json()).count("gft_") == 0


def test_a_heartbeat_url_must_be_a_bare_http_origin(api: Api) -> None:
    _, token = api.node("n1")
    for url in ("ftp://host:1", "http://host:1/path", "http://a b"):
        r = api.client.post(
            "/v1/nodes/n1/heartbeat", json={"url": url}, headers=api.bearer(token)
        )
        assert r.status_code == 422, (url, r.text)


def test_a_tenant_recreated_under_a_deleted_ones_name_gets_none_of_its_routes(api: Api) -> None:
    """``GET /v1/routes/me`` finds the tenant by its id in the allocation, as the allocation
    view does, not by the name its plans carry: until a solve seats the new tenant, the
    newest allocation's replicas under its name are its predecessor's."""
    keys, token = _two_tenants_on_one_node(api)
    _heartbeat(api, "n1", token, "http://10.0.0.1:9090")
    mine = api.client.get("/v1/routes/me", headers=api.bearer(keys["ads"])).json()
    assert [entry["tenant"] for entry in mine["models"].values()] == ["ads"]
    old = api.client.get("/v1/tenants?name=ads", headers=api.admin).json()[0]
    r = api.client.delete(f"/v1/tenants/{old['id']}", headers={**api.admin, "If-Match": "*"})
    assert r.status_code == 204
    _, key = api.tenant("ads")
    r = api.client.get("/v1/routes/me", headers=api.bearer(key))
    assert r.status_code == 200 and r.json() == {"version": 1, "models": {}}, r.text
    assert api.client.get("/v1/allocations/current/me", headers=api.bearer(key)).status_code \
        == 404
    # Once a solve seats it, its own model is listed, and only that.
    model = api.model(key, "fresh", replicas_wanted=1, demand_qps=50.0)
    api.solve()
    _heartbeat(api, "n1", token, "http://10.0.0.1:9090")
    assert list(api.client.get("/v1/routes/me", headers=api.bearer(key)).json()["models"]) \
        == [str(model["id"])]
