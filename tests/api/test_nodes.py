"""Route tests of /v1/nodes: registration, tokens, heartbeats, profiles and the plan protocol."""

from __future__ import annotations

import time

import pytest

from allocator import NodePlan
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
    auth = api.bearer(token)
    entry = {"model_id": model["id"], "device": "cuda:0", "qps": [100, 180, 240]}
    r = api.client.put("/v1/nodes/n1/profiles", json={"profiles": [entry]}, headers=auth)
    assert r.status_code == 200 and r.json() == {"stored": 1}
    r = api.client.put(
        "/v1/nodes/n1/profiles", json={"profiles": [{**entry, "qps": [100, 300]}]}, headers=auth
    )
    assert r.status_code == 200
    for bad, field in [
        ({**entry, "model_id": 999}, "profiles[0].model_id"),
        ({**entry, "device": "cuda:7"}, "profiles[0].device"),
        ({**entry, "qps": [5, 3]}, "profiles[0].qps"),
        ({**entry, "qps": []}, "profiles[0].qps"),
    ]:
        r = api.client.put("/v1/nodes/n1/profiles", json={"profiles": [bad]}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.json()


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
