"""Per-model fairness through the REST API (docs/fairness.md, "Per-model weights" and "A model's
SLA"): a model's weight divides its tenant's seats among the tenant's models, a tighter SLA
lowers what a model's seats are worth and so changes the allocation, and the certificate — the
admin's and the tenant's own view — shows every model's part of its tenant's bundle. On SQLite
and PostgreSQL, through the real app."""

from __future__ import annotations

from typing import Any

from allocator import NodePlan
from tests.api.conftest import Api


def _patch_model(api: Api, key: str, model_id: int, **fields: Any) -> dict[str, Any]:
    url = f"/v1/models/{model_id}"
    etag = api.client.get(url, headers=api.bearer(key)).headers["ETag"]
    r = api.client.patch(url, json=fields, headers={**api.bearer(key), "If-Match": etag})
    assert r.status_code == 200, r.text
    return r.json()


def _seats_by_model(api: Api, token: str) -> dict[str, int]:
    plan = NodePlan.from_dict(api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token)).json())
    seats: dict[str, int] = {}
    for _, seat in plan.replicas():
        assert seat.replica is not None
        seats[seat.replica.model_id] = seats.get(seat.replica.model_id, 0) + 1
    return seats


def test_a_models_weight_divides_its_tenants_seats(api: Api) -> None:
    """One tenant, two models wanting 3 replicas each, one GPU of 4 seats: equal weights split
    the seats 2/2; weight 3 against 1 gives the D'Hondt split 3/1 — in the node's plan, in the
    certificate's per-model parts and in the tenant's own view; the parts add up to the tenant's
    bundle."""
    _, key = api.tenant("ads", criterion="prop1")
    ranker = api.model(key, "ranker", replicas_wanted=3)
    retrieval = api.model(key, "retrieval", replicas_wanted=3)
    assert ranker["weight"] == retrieval["weight"] == 1.0
    _, token = api.node("n1", gpus=1, seats=4, streams=4)

    first = api.solve()
    ids = (str(ranker["id"]), str(retrieval["id"]))
    assert _seats_by_model(api, token) == {ids[0]: 2, ids[1]: 2}
    parts = first["certificate"]["models"]["ads"]
    assert [parts[i]["seats"] for i in ids] == [2, 2]
    assert [parts[i]["entitlement"] for i in ids] == [0.5, 0.5]

    assert _patch_model(api, key, ranker["id"], weight=3.0)["weight"] == 3.0
    second = api.solve()
    assert _seats_by_model(api, token) == {ids[0]: 3, ids[1]: 1}
    parts = second["certificate"]["models"]["ads"]
    assert [parts[i]["seats"] for i in ids] == [3, 1]
    assert [parts[i]["entitlement"] for i in ids] == [0.75, 0.25]
    row = second["certificate"]["agents"]["ads"]
    assert abs(sum(p["value"] for p in parts.values()) - row["value"]) < 1e-9
    assert abs(sum(p["share"] for p in parts.values()) - 1.0) < 1e-9
    assert row["holds"]

    view = api.client.get("/v1/allocations/current/me", headers=api.bearer(key)).json()
    assert view["models"] == parts


def test_a_bad_model_weight_is_refused_with_the_field_named(api: Api) -> None:
    _, key = api.tenant("ads")
    for weight in (0, -1, "heavy"):
        r = api.client.post(
            "/v1/models",
            json={"name": "m", "artifact": "zoo:rmc1?scale=0.05&seed=1", "memory_mb": 500,
                  "sla_p99_ms": 20.0, "demand_qps": 400.0, "weight": weight},
            headers=api.bearer(key),
        )
        assert r.status_code == 422, r.text
        assert "weight" in r.text


def test_a_tighter_sla_changes_the_allocation(api: Api) -> None:
    """Two tenants of equal weight contend for one 4-seat GPU with models of one curve, measured
    within 50 ms and uploaded by the node with that bound. Feed tightening its model's SLA to
    5 ms, where the latency model leaves its replicas no rate that fits, takes every seat from
    it; loosening it to 500 ms gives back the allocation of 50 ms (the curve is a lower bound
    there)."""
    _, key_a = api.tenant("ads", criterion="prop1")
    _, key_b = api.tenant("feed", criterion="prop1")
    fields = {"replicas_wanted": 4, "demand_qps": 1600.0, "sla_p99_ms": 50.0}
    ads = api.model(key_a, "ranker", **fields)
    feed = api.model(key_b, "ranker", **fields)
    _, token = api.node("n1", gpus=1, seats=4, streams=8)
    api.solve()
    # The node profiles the models its plan seats, as the daemon does after applying it.
    assert set(_seats_by_model(api, token)) == {str(ads["id"]), str(feed["id"])}
    entries = [{"model_id": m["id"], "device": "cuda:0", "qps": [400.0, 500.0],
                "sla_p99_ms": 50.0} for m in (ads, feed)]
    r = api.client.put("/v1/nodes/n1/profiles", json={"profiles": entries},
                       headers=api.bearer(token))
    assert r.status_code == 200, r.text

    at_50 = api.solve()["certificate"]
    assert at_50["models"]["feed"][str(feed["id"])]["seats"] > 0
    _patch_model(api, key_b, feed["id"], sla_p99_ms=5.0)
    at_5 = api.solve()["certificate"]
    assert at_5["models"]["feed"][str(feed["id"])]["seats"] == 0
    assert at_5["models"]["ads"][str(ads["id"])]["seats"] == 4
    assert at_5["agents"]["feed"]["total"] == 0  # nothing it could hold serves within 5 ms
    assert str(feed["id"]) not in _seats_by_model(api, token)

    _patch_model(api, key_b, feed["id"], sla_p99_ms=500.0)
    at_500 = api.solve()["certificate"]
    assert at_500["models"] == at_50["models"]
    assert {n: a["value"] for n, a in at_500["agents"].items()} == {
        n: a["value"] for n, a in at_50["agents"].items()}
