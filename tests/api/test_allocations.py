"""Route tests of /v1/allocations: solve, store with a certificate, version, diff, tenant view."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from allocator import NodePlan
from tests.api.conftest import ADMIN_TOKEN, Api


def _cluster(api: Api) -> dict[str, str]:
    """Two tenants with two models each, two nodes with two GPUs each; return node tokens."""
    _, key_a = api.tenant("ads", weight=2)
    _, key_b = api.tenant("feed", criterion="ef1")
    api.model(key_a, "ranker")
    api.model(key_a, "retrieval", demand_qps=100)
    api.model(key_b, "ranker")
    api.model(key_b, "din", artifact="zoo:din?scale=0.1&seed=3")
    return {name: api.node(name)[1] for name in ("n1", "n2")}


def test_solve_stores_certified_versioned_plans(api: Api) -> None:
    tokens = _cluster(api)
    first = api.solve()
    assert first["version"] == 1 and first["certificate"]["holds"] is True
    assert set(first["certificate"]["agents"]) == {"ads", "feed"}
    assert first["nodes"] == ["n1", "n2"]
    seats = 0
    for node, token in tokens.items():
        r = api.client.get(f"/v1/nodes/{node}/plan", headers=api.bearer(token))
        assert r.status_code == 200 and r.headers["ETag"] == '"plan-1"'
        plan = NodePlan.from_dict(r.json())
        assert (plan.node, plan.version, plan.allocation_id) == (node, 1, first["id"])
        seats += len(plan.replicas())
    assert seats > 0
    second = api.solve(objective="egalitarian")
    assert second["version"] == 2 and second["objective"] == "egalitarian"
    listed = api.client.get("/v1/allocations", headers=api.admin).json()
    assert [a["version"] for a in listed] == [2, 1]
    current = api.client.get("/v1/allocations/current", headers=api.admin).json()
    assert current["id"] == second["id"]
    older = api.client.get(f"/v1/allocations/{first['id']}", headers=api.admin).json()
    assert older["certificate"] == first["certificate"]  # stored allocations never change
    r = api.client.get(
        "/v1/nodes/n1/plan", headers={**api.bearer(tokens["n1"]), "If-None-Match": '"plan-1"'}
    )
    assert r.status_code == 200 and r.headers["ETag"] == '"plan-2"'


def test_diff_reports_seat_moves_and_share_changes(api: Api) -> None:
    _cluster(api)
    first = api.solve()
    same = api.client.get(
        f"/v1/allocations/{first['id']}/diff/{first['id']}", headers=api.admin
    ).json()
    assert same["seat_moves"] == [] and same["share_changes"] == []
    # A tenant with much more demand: the next allocation must move something its way.
    _, key = api.tenant("search", weight=4)
    api.model(key, "ranker", demand_qps=5000, replicas_wanted=4)
    second = api.solve()
    diff = api.client.get(
        f"/v1/allocations/{first['id']}/diff/{second['id']}", headers=api.admin
    ).json()
    assert any(m["after"] and m["after"]["tenant"] == "search" for m in diff["seat_moves"])
    assert any(
        c["tenant"] == "search" and c["before"] == 0 and c["after"] > 0
        for c in diff["share_changes"]
    )
    for move in diff["seat_moves"]:
        assert move["before"] != move["after"]
    assert (
        api.client.get(f"/v1/allocations/{first['id']}/diff/999", headers=api.admin).status_code
        == 404
    )


def test_tenant_view_has_only_its_own_rows(api: Api) -> None:
    _cluster(api)
    _, key_c = api.tenant("late")
    api.solve()
    keys = {}
    for name in ("ads", "feed"):
        tenant = next(
            t for t in api.client.get("/v1/tenants", headers=api.admin).json() if t["name"] == name
        )
        keys[name] = api.client.post(f"/v1/tenants/{tenant['id']}/keys", headers=api.admin).json()[
            "key"
        ]
    for name, key in keys.items():
        r = api.client.get("/v1/allocations/current/me", headers=api.bearer(key))
        assert r.status_code == 200
        view = r.json()
        other = "feed" if name == "ads" else "ads"
        assert view["tenant"] == name and other not in r.text
        assert set(view["certificate"]["envy"]) == {"other-1", "other-2"}
        assert all(0 < s["fraction"] <= 1 for s in view["shares"])
    # A tenant created after the solve has no rows in it yet.
    _, key_new = api.tenant("newcomer")
    assert (
        api.client.get("/v1/allocations/current/me", headers=api.bearer(key_new)).status_code == 404
    )


def test_profiles_change_the_next_allocation_inputs(api: Api) -> None:
    tokens = _cluster(api)
    models = {}
    for t in api.client.get("/v1/tenants", headers=api.admin).json():
        key = api.client.post(f"/v1/tenants/{t['id']}/keys", headers=api.admin).json()["key"]
        models.update(
            {m["id"]: m for m in api.client.get("/v1/models", headers=api.bearer(key)).json()}
        )
    entries = [
        {"model_id": mid, "device": f"cuda:{d}", "qps": [50.0 * (k + 1) for k in range(6)]}
        for mid in models
        for d in (0, 1)
    ]
    r = api.client.put(
        "/v1/nodes/n1/profiles", json={"profiles": entries}, headers=api.bearer(tokens["n1"])
    )
    assert r.status_code == 200
    allocation = api.solve()
    assert allocation["certificate"]["holds"]


def test_uploaded_model_waits_for_its_artifact(api: Api) -> None:
    _, key = api.tenant("ads")
    waiting = api.model(key, "custom", artifact="api")
    api.node("n1")
    api.solve()
    tokens = api.client.post("/v1/nodes/n1/token", headers=api.admin).json()["token"]
    plan = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(tokens)).json()
    seated = {s["replica"]["model_id"] for d in plan["devices"] for s in d["seats"] if s["replica"]}
    assert str(waiting["id"]) not in seated


@pytest.mark.slow
def test_parallel_solves_are_serialised(live_url: str) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=live_url, headers=admin, timeout=120) as client:
        api = Api.__new__(Api)
        api.client, api.admin = client, admin  # type: ignore[assignment]
        _cluster(api)

    def solve(_: int) -> httpx.Response:
        with httpx.Client(base_url=live_url, headers=admin, timeout=120) as client:
            return client.post("/v1/allocations")

    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(solve, range(3)))
    assert [r.status_code for r in responses] == [201, 201, 201], [r.text for r in responses]
    assert sorted(r.json()["version"] for r in responses) == [1, 2, 3]
