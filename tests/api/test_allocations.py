"""Route tests of /v1/allocations: solve, store with a certificate, version, diff, tenant view."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import sqlalchemy

import allocator
from allocator import NodePlan
from api.services.allocations import SOLVE_ATTEMPTS
from gpufair.settings import Settings
from tests.api.conftest import ADMIN_TOKEN, Api, store_profiles


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
    assert first["version"] == 1 and first["certificate"]["fair"] is True
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
    api.solve()
    # A node profiles the models its plan seats on it, as the daemon does after applying it.
    plan = NodePlan.from_dict(
        api.client.get("/v1/nodes/n1/plan", headers=api.bearer(tokens["n1"])).json()
    )
    seated = {int(seat.replica.model_id) for _, seat in plan.replicas() if seat.replica}
    entries = [
        {"model_id": mid, "device": f"cuda:{d}", "qps": [50.0 * (k + 1) for k in range(6)]}
        for mid in sorted(seated)
        for d in (0, 1)
    ]
    r = api.client.put(
        "/v1/nodes/n1/profiles", json={"profiles": entries}, headers=api.bearer(tokens["n1"])
    )
    assert r.status_code == 200, r.text
    allocation = api.solve()
    assert allocation["certificate"]["fair"]
    assert not any("model " + str(mid) + " on n1" in note
                   for mid in seated for note in allocation["certificate"]["notes"])


def test_uploaded_model_waits_for_its_artifact(api: Api) -> None:
    _, key = api.tenant("ads")
    waiting = api.model(key, "custom", artifact="api")
    api.node("n1")
    api.solve()
    tokens = api.client.post("/v1/nodes/n1/token", headers=api.admin).json()["token"]
    plan = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(tokens)).json()
    seated = {s["replica"]["model_id"] for d in plan["devices"] for s in d["seats"] if s["replica"]}
    assert str(waiting["id"]) not in seated


def _contended_seat(api: Api, url: str) -> dict[str, str]:
    """Two PROP^α tenants (the default criterion), one model each, and one GPU with one seat
    and five pool streams that both models' measured curves turn into demand served; return
    the tenants' API keys.

    No allocation meets both criteria, even relaxed to PROP1: the pool may only go to the
    tenant seated on its GPU (a pool share ``requires`` a seat there), so the other holds
    nothing, and the one seat it may count (value 10/400) is below its proportional share,
    half of seat plus pool ((10 + 50)/400 / 2). The exact MILP proves it; the allocator's
    best allocation fails exactly one tenant.
    """
    keys = {name: api.tenant(name)[1] for name in ("ads", "feed")}
    models = [
        api.model(key, "ranker", replicas_wanted=1, demand_qps=400.0) for key in keys.values()
    ]
    _, token = api.node("n1", gpus=1, seats=1, streams=6)
    assert token
    # Measured curves of both models on the one GPU, stored as a node's upload stores them
    # (a node may upload only for models its plans seat: one of the two here).
    curve = [10.0 * streams for streams in range(1, 7)]
    store_profiles(url, "n1", {(m["id"], "cuda:0"): curve for m in models})
    return keys


def test_unmeetable_criteria_are_stored_with_the_failing_tenants(
    api: Api, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    keys = _contended_seat(api, settings.database.url)
    with caplog.at_level(logging.WARNING, logger="api.services.allocations"):
        r = api.client.post("/v1/allocations", headers=api.admin)
    assert r.status_code == 201, r.text
    created = r.json()
    certificate = created["certificate"]
    # Nothing is passed off as fair: the top level and the failing tenant's row say so.
    assert certificate["fair"] is False and "holds" not in certificate
    assert certificate["violations"] == 1
    failing = sorted(name for name, row in certificate["agents"].items() if not row["holds"])
    assert len(failing) == 1 and failing[0] in keys
    assert certificate["agents"][failing[0]]["slack"] < 0
    assert any("proved that no allocation meets every criterion" in n for n in certificate["notes"])
    # It is stored as returned, and it is the current allocation.
    stored = api.client.get(f"/v1/allocations/{created['id']}", headers=api.admin).json()
    assert stored["certificate"] == certificate
    current = api.client.get("/v1/allocations/current", headers=api.admin).json()
    assert current["id"] == created["id"] and current["nodes"] == ["n1"]
    # The seat went to the tenant that holds; the failing one got nothing and sees its verdict.
    for name, key in keys.items():
        view = api.client.get("/v1/allocations/current/me", headers=api.bearer(key))
        assert view.status_code == 200, view.text
        mine = view.json()
        assert mine["certificate"]["holds"] is (name not in failing)
        assert len(mine["seats"]) == (0 if name in failing else 1)
    # The API's own warning, not only the allocator's.
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == "api.services.allocations" and record.levelno == logging.WARNING
    ]
    assert any(failing[0] in message for message in warnings), warnings


def _every_row_holds(certificate: allocator.Certificate) -> allocator.Certificate:
    agents = {
        name: dataclasses.replace(row, holds=True) for name, row in certificate.agents.items()
    }
    return dataclasses.replace(certificate, agents=agents)


def _relaxed_past_one(certificate: allocator.Certificate) -> allocator.Certificate:
    agents = {name: dataclasses.replace(row, lam=2.0) for name, row in certificate.agents.items()}
    return dataclasses.replace(certificate, agents=agents)


@pytest.mark.parametrize("tamper", [_every_row_holds, _relaxed_past_one])
def test_a_certificate_that_fails_the_checker_is_refused(
    api: Api,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tamper: Callable[[allocator.Certificate], allocator.Certificate],
) -> None:
    """A certificate the checker disagrees with — a failing tenant's row says it holds, or a
    λ outside [0, 1] — is an allocator defect: the API answers 500 and stores nothing."""
    _contended_seat(api, settings.database.url)
    honest = allocator.allocate_cluster

    def tampered(*args: Any, **kwargs: Any) -> allocator.ClusterAllocation:
        result = honest(*args, **kwargs)
        return dataclasses.replace(result, certificate=tamper(result.certificate))

    monkeypatch.setattr(allocator, "allocate_cluster", tampered)
    r = api.client.post("/v1/allocations", headers=api.admin)
    assert r.status_code == 500 and r.json()["error"]["code"] == "allocation_rejected", r.text
    assert api.client.get("/v1/allocations", headers=api.admin).json() == []


def _during_each_solve(
    monkeypatch: pytest.MonkeyPatch, url: str, statements: list[str]
) -> list[int]:
    """Run ``statements[k]`` on the database (its own connection, committed) during the k-th
    solve, as a request would between the snapshot and the store; return the solve count."""
    honest, solves = allocator.allocate_cluster, list[int]()

    def meddling(*args: Any, **kwargs: Any) -> allocator.ClusterAllocation:
        result = honest(*args, **kwargs)
        if len(solves) < len(statements):
            engine = sqlalchemy.create_engine(url)
            try:
                with engine.begin() as connection:
                    connection.exec_driver_sql(statements[len(solves)])
            finally:
                engine.dispose()
        solves.append(1)
        return result

    monkeypatch.setattr(allocator, "allocate_cluster", meddling)
    return solves


def test_a_model_deleted_during_the_solve_is_not_seated_by_its_allocation(
    api: Api, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model deleted after the snapshot was read is noticed when the allocation would be
    stored: the solve runs again on a new snapshot, and the allocation stored seats only
    what still exists."""
    _, key = api.tenant("ads")
    kept = api.model(key, "kept", replicas_wanted=1)
    gone = api.model(key, "gone", replicas_wanted=1)
    api.node("n1", gpus=1)
    solves = _during_each_solve(monkeypatch, settings.database.url,
                                [f"DELETE FROM models WHERE id = {gone['id']}"])  # fmt: skip
    created = api.solve()
    seats = api.client.get("/v1/allocations/current/me", headers=api.bearer(key)).json()["seats"]
    assert {s["model_id"] for s in seats} == {str(kept["id"])}
    assert created["version"] == 1 and len(solves) == 2


def test_a_solve_whose_inputs_change_every_time_is_409_and_stores_nothing(
    api: Api, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tenants or models changed during every solve of a request: 409 naming them, and no
    allocation that describes rows as they no longer are."""
    _, key = api.tenant("ads")
    model = api.model(key, "m", replicas_wanted=1)
    api.node("n1", gpus=1)
    bump = f"UPDATE models SET revision = revision + 1 WHERE id = {model['id']}"
    solves = _during_each_solve(monkeypatch, settings.database.url, [bump] * 5)
    r = api.client.post("/v1/allocations", headers=api.admin)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", r.text
    assert f"model {model['id']} changed" in r.json()["error"]["message"]
    assert len(solves) == SOLVE_ATTEMPTS
    assert api.client.get("/v1/allocations", headers=api.admin).json() == []


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


def test_a_measured_footprint_replaces_the_declared_memory_in_the_next_solve(api: Api) -> None:
    """Seats of 16000 / 2 MB: a model declared at 500 MB is seated; once a node measures
    9000 MB for one replica, the next solve no longer seats it; 700 MB seats it again."""
    _, key = api.tenant("ads")
    model = api.model(key, "ranker", replicas_wanted=1)
    _, token = api.node("n1", gpus=1)

    def seated() -> bool:
        api.solve()
        plan = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token)).json()
        return any(s["replica"] for d in plan["devices"] for s in d["seats"])

    def upload(footprints: list[dict[str, object]]) -> httpx.Response:
        return api.client.put(
            "/v1/nodes/n1/profiles",
            json={"profiles": [], "footprints": footprints},
            headers=api.bearer(token),
        )

    assert seated()
    r = upload([{"model_id": model["id"], "device": "cuda:0", "memory_mb": 9000}])
    assert r.status_code == 200 and r.json() == {"stored": 1}
    assert not seated()
    assert upload([{"model_id": model["id"], "device": "cuda:0", "memory_mb": 700}]).is_success
    assert seated()
    # A model no plan of the node seats (here one that does not exist) is outside the node's
    # scope, with the same 403 as another node's model: uploads reveal no model ids.
    r = upload([{"model_id": model["id"] + 100, "device": "cuda:0", "memory_mb": 1}])
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
