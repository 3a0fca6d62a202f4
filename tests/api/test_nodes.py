"""Route tests of /v1/nodes: registration, tokens, heartbeats, profiles and the plan protocol."""

from __future__ import annotations

import time

import pytest

from allocator import NodePlan
from api.services.plans import RECENT_PLANS
from executor.wire.names import InvalidNameError, validate_node_name
from tests.api.conftest import Api
from tests.name_cases import NODE_NAMES


def test_register_list_and_rotate_token(api: Api) -> None:
    node, token = api.node("n1", gpus=2)
    assert token.startswith("gfn_") and [d["device"] for d in node["devices"]] == [
        "cuda:0",
        "cuda:1",
    ]
    listed = api.client.get("/v1/nodes", headers=api.admin).json()
    assert [n["name"] for n in listed] == ["n1"] and "token" not in listed[0]
    r = api.client.post("/v1/nodes/n1/token", headers=api.admin)
    assert r.status_code == 200
    new = r.json()["token"]
    assert api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token)).status_code == 401
    assert api.client.get("/v1/nodes/n1/plan", headers=api.bearer(new)).status_code == 200


def test_bad_devices_are_422(api: Api) -> None:
    for devices, field in [
        ([], "devices"),
        (
            [{"device": "cuda:0", "kind": "tpu", "memory_mb": 1, "streams": 2, "seats": 1}],
            "devices[0].kind",
        ),
        (
            [{"device": "cuda:0", "kind": "gpu", "memory_mb": 1, "streams": 2, "seats": 3}],
            "devices[0]",
        ),
    ]:
        r = api.client.post("/v1/nodes", json={"name": "n", "devices": devices}, headers=api.admin)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.json()


def test_plan_before_any_allocation_is_empty_and_parses(api: Api) -> None:
    _, token = api.node("n1", gpus=1, seats=3, streams=5)
    r = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token))
    assert r.status_code == 200 and r.headers["ETag"] == '"plan-0"'
    plan = NodePlan.from_dict(r.json())
    assert plan.version == 0 and len(plan.devices[0].seats) == 3 and not plan.replicas()
    again = api.client.get(
        "/v1/nodes/n1/plan", headers={**api.bearer(token), "If-None-Match": '"plan-0"'}
    )
    assert again.status_code == 304 and again.content == b""


def test_long_poll_waits_then_304(api: Api) -> None:
    _, token = api.node("n1")
    started = time.monotonic()
    r = api.client.get(
        "/v1/nodes/n1/plan?wait=0.6", headers={**api.bearer(token), "If-None-Match": '"plan-0"'}
    )
    assert r.status_code == 304 and 0.5 <= time.monotonic() - started < 30


def test_long_poll_is_bounded_by_settings(api: Api) -> None:
    _, token = api.node("n1")
    started = time.monotonic()
    r = api.client.get(  # the test settings cap long-polls at 2 s
        "/v1/nodes/n1/plan?wait=600", headers={**api.bearer(token), "If-None-Match": '"plan-0"'}
    )
    assert r.status_code == 304 and time.monotonic() - started < 60  # the cap, not wait=600


def test_heartbeat_records_the_report(api: Api) -> None:
    _, token = api.node("n1")
    body = {
        "plan_version": 0,
        "replicas": [
            {"device": "cuda:0", "seat": 0, "model_id": "1", "tenant": "ads", "completed": 5}
        ],
        "broken": {},
    }
    r = api.client.post("/v1/nodes/n1/heartbeat", json=body, headers=api.bearer(token))
    assert r.status_code == 200 and r.json() == {"current_version": 0, "etag": '"plan-0"'}
    node = api.client.get("/v1/nodes/n1", headers=api.admin).json()
    assert node["running_version"] == 0 and node["last_heartbeat_at"] is not None
    assert node["report"]["replicas"][0]["completed"] == 5


def test_profiles_upsert_and_name_bad_fields(api: Api) -> None:
    _, key = api.tenant("ads")
    model = api.model(key, "ranker")
    _, token = api.node("n1")
    api.solve()  # seats the model on n1: only then may n1 profile it
    auth = api.bearer(token)
    entry = {"model_id": model["id"], "device": "cuda:0", "qps": [100, 180, 240]}
    r = api.client.put("/v1/nodes/n1/profiles", json={"profiles": [entry]}, headers=auth)
    assert r.status_code == 200 and r.json() == {"stored": 1}
    r = api.client.put(
        "/v1/nodes/n1/profiles", json={"profiles": [{**entry, "qps": [100, 300]}]}, headers=auth
    )
    assert r.status_code == 200
    for bad, field in [
        ({**entry, "device": "cuda:7"}, "profiles[0].device"),
        ({**entry, "qps": [5, 3]}, "profiles[0].qps"),
        ({**entry, "qps": []}, "profiles[0].qps"),
    ]:
        r = api.client.put("/v1/nodes/n1/profiles", json={"profiles": [bad]}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.json()


def _sla(tenant: str, model: str, received: int = 10) -> dict[str, object]:
    return {"tenant": tenant, "model": model, "received": received, "within_sla": received}


def _two_tenants_on_two_nodes(api: Api) -> dict[str, tuple[str, str, str, str]]:
    """Tenants a and b with one single-replica model each, nodes n1 and n2 with one seat each;
    return node -> (its token, the tenant seated on it, that tenant's key, the model id)."""
    keys = {}
    for tenant in ("a", "b"):
        _, keys[tenant] = api.tenant(tenant)
        api.model(keys[tenant], "m", replicas_wanted=1)
    tokens = {name: api.node(name, gpus=1, seats=1, streams=2)[1] for name in ("n1", "n2")}
    api.solve()
    seated = {}
    for name, token in tokens.items():
        plan = NodePlan.from_dict(
            api.client.get(f"/v1/nodes/{name}/plan", headers=api.bearer(token)).json()
        )
        [(_, seat)] = plan.replicas()
        assert seat.replica is not None
        tenant = seat.replica.tenant
        seated[name] = (token, tenant, keys[tenant], seat.replica.model_id)
    assert {tenant for _, tenant, _, _ in seated.values()} == {"a", "b"}
    return seated


def test_a_node_token_reports_only_what_its_plans_seat_on_it(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """Node-token scope (issue 13): a heartbeat's SLA counts for a tenant seated on another
    node, and a profile of another node's model or of an id that does not exist, are 403 —
    the same answer for both ids — logged, and store nothing."""
    seated = _two_tenants_on_two_nodes(api)
    token, tenant, _, model = seated["n1"]
    _, other_tenant, _, other_model = seated["n2"]
    auth = api.bearer(token)
    heartbeat = {"plan_version": 1, "replicas": [], "broken": {}}
    ok = api.client.post(
        "/v1/nodes/n1/heartbeat", json={**heartbeat, "sla": [_sla(tenant, model)]}, headers=auth
    )
    assert ok.status_code == 200, ok.text
    for counts in ([_sla(other_tenant, other_model)], [_sla(tenant, other_model)],
                   [_sla(tenant, model, 20), _sla(other_tenant, other_model)]):
        r = api.client.post(
            "/v1/nodes/n1/heartbeat", json={**heartbeat, "sla": counts}, headers=auth
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert "node 'n1' refused" in caplog.text
    series = api.client.get("/v1/sla", headers=api.admin).json()["tenants"]
    assert {s["tenant"]: s["received"] for s in series} == {tenant: 10}  # nothing else stored
    refusals = []
    for model_id in (int(other_model), 999_999):
        entry = {"model_id": model_id, "device": "cuda:0", "qps": [100, 180]}
        r = api.client.put("/v1/nodes/n1/profiles", json={"profiles": [entry]}, headers=auth)
        assert r.status_code == 403, r.text
        refusals.append(r.json()["error"]["message"].replace(str(model_id), "ID"))
    assert refusals[0] == refusals[1]  # nothing tells which ids exist


def test_counts_of_a_recent_plan_are_accepted_and_of_an_old_one_refused(api: Api) -> None:
    """The scope covers the node's RECENT_PLANS newest plans: a daemon still counting a pair
    its previous plans seated is accepted; once they are older, the pair is refused."""
    token, tenant, key, model = _two_tenants_on_two_nodes(api)["n1"]
    r = api.client.delete(f"/v1/models/{model}", headers={**api.bearer(key), "If-Match": "*"})
    assert r.status_code == 204, r.text  # the next plans seat nothing of it on n1
    for version in range(2, RECENT_PLANS + 3):
        assert api.solve()["version"] == version
        body = {"plan_version": version, "replicas": [], "broken": {},
                "sla": [_sla(tenant, model, 10 * version)]}
        r = api.client.post("/v1/nodes/n1/heartbeat", json=body, headers=api.bearer(token))
        # Plan 1 seated the pair: among the node's newest RECENT_PLANS up to version 8.
        assert r.status_code == (200 if version <= RECENT_PLANS else 403), (version, r.text)


def _executor_takes(name: str) -> bool:
    """Whether ``gpufair executor --node NAME`` starts (gpufair/commands/executor.py)."""
    try:
        validate_node_name(name)
    except InvalidNameError:
        return False
    return True


@pytest.mark.parametrize(("name", "accepted"), NODE_NAMES)
def test_the_api_registers_exactly_the_node_names_gpufair_executor_takes(
    api: Api, name: str, accepted: bool
) -> None:
    assert _executor_takes(name) == accepted
    devices = [{"device": "cpu:0", "kind": "cpu", "memory_mb": 1000, "streams": 2, "seats": 1}]
    r = api.client.post("/v1/nodes", json={"name": name, "devices": devices}, headers=api.admin)
    if accepted:
        assert r.status_code == 201, r.text
        assert api.client.get(f"/v1/nodes/{name}", headers=api.admin).status_code == 200
    else:
        assert r.status_code == 422 and r.json()["error"]["field"] == "name", r.text
