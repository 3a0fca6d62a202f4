"""Per-model fairness in the cluster layer (docs/fairness.md, "Per-model weights" and "A model's
SLA"): model weights divide a tenant's value and its candidate seats among its models while the
tenant stays the agent; a model's SLA enters its value through the latency model; the
certificate's per-model parts add up to each tenant's bundle. Random snapshots are seeded; a
failure names its seed."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter

import pytest

from allocator import (
    ClusterSnapshot,
    Gpu,
    Model,
    SolveOptions,
    Tenant,
    ThroughputCurve,
    allocate_cluster,
    certify,
    validate_cluster_allocation,
)
from allocator.cluster.instance import build_instance
from allocator.cluster.snapshot import within_sla
from allocator.errors import InstanceError
from tests.allocator.cluster.test_allocate import check, snapshot

ARTIFACT = "zoo:rmc1?scale=1&seed=1"

# An M/M/1 queue's p99 sojourn time is ln(100) / (mu - lambda). Written out here rather than
# taken from the code (allocator.cluster.snapshot.P99_LOG), which would cancel out of every
# check below whatever its value.
MM1_P99_LOG = math.log(100.0)


def _weighted(seed: int) -> ClusterSnapshot:
    """test_allocate's mixed snapshot with random model weights and curves measured against
    random SLAs, some tighter than their models'."""
    rng = random.Random(1000 + seed)
    snap = snapshot(seed)
    models = []
    for m in snap.models:
        gpu = rng.choice(snap.gpus)
        curve = ThroughputCurve(tuple(sorted(rng.uniform(100, 1000) for _ in range(4))),
                                measured=True, sla_p99_ms=rng.choice((20.0, 50.0, 100.0)))
        models.append(dataclasses.replace(m, weight=rng.choice((0.5, 1.0, 3.0)),
                                          profiles={gpu.gpu_id: curve}))
    return dataclasses.replace(snap, models=tuple(models))


@pytest.mark.parametrize("seed", range(12))
def test_model_parts_add_up_to_the_tenants_bundle_and_the_tenant_stays_certified(
    seed: int,
) -> None:
    """With model weights and SLA-translated curves: the allocation is valid and its
    certificate is the checker's (the tenant-level criterion is certified as before); each
    tenant's model parts add up to its value, its total and its seats; a model's served
    fraction is its value without the weight and never exceeds 1 (its whole demand)."""
    snap = _weighted(seed)
    result = allocate_cluster(snap, SolveOptions(time_limit_s=20))
    validate_cluster_allocation(snap, result)
    check(snap, result.plans)
    again = certify(result.instance, result.allocation)
    assert result.certificate.violations == 0, seed
    held = Counter(result.allocation.indivisible.values())
    for tenant in snap.tenants:
        row, parts = again.agents[tenant.name], result.certificate.models[tenant.name]
        own = [m for m in snap.models if m.tenant == tenant.name]
        assert set(parts) == {m.model_id for m in own}, seed
        assert sum(p.value for p in parts.values()) == pytest.approx(row.value, abs=1e-9), seed
        assert sum(p.total for p in parts.values()) == pytest.approx(row.total, abs=1e-9), seed
        assert sum(p.seats for p in parts.values()) == held[tenant.name], seed
        assert sum(p.entitlement for p in parts.values()) == pytest.approx(1.0), seed
        for m in own:
            part = parts[m.model_id]
            assert part.weight == m.weight and 0 <= part.served <= 1 + 1e-9, seed
            if row.value > 0:
                assert part.share == pytest.approx(part.value / row.value), seed


@pytest.mark.parametrize("seed", range(6))
def test_only_the_ratio_of_a_tenants_model_weights_matters(seed: int) -> None:
    """Scaling all of one tenant's model weights by the same factor changes nothing: the same
    candidates, values and allocation (ω̂ is the weight over its tenant's mean)."""
    snap = _weighted(seed)
    tenant = snap.tenants[0].name
    scaled = dataclasses.replace(snap, models=tuple(
        dataclasses.replace(m, weight=m.weight * 7.0) if m.tenant == tenant else m
        for m in snap.models))
    built, again = build_instance(snap), build_instance(scaled)
    assert built.earmark == again.earmark, seed
    for name, values in built.instance.values.items():
        assert values == pytest.approx(again.instance.values[name]), seed


def _one_tenant(weights: tuple[float, float], seats: int, wanted: int = 4) -> ClusterSnapshot:
    """One tenant, two identical models wanting ``wanted`` replicas each, ``seats`` seats."""
    curve = ThroughputCurve((100.0,), measured=True)
    return ClusterSnapshot(
        (Tenant("t", 1.0, "prop1"),),
        tuple(Model(name, "t", ARTIFACT, 100, wanted, 50.0, 100.0 * wanted, estimate=curve,
                    weight=w) for name, w in zip(("a", "b"), weights, strict=True)),
        (Gpu("n", "cuda:0", "gpu", 8000, seats, seats),),
    )


def _dhondt(weights: tuple[float, ...], seats: int, caps: tuple[int, ...]) -> list[int]:
    """The D'Hondt (Jefferson) apportionment of ``seats`` by ``weights``, each capped: the next
    seat goes to the most weight per seat held, ties to the first."""
    held = [0] * len(weights)
    for _ in range(seats):
        live = [k for k in range(len(weights)) if held[k] < caps[k]]
        if not live:
            break
        best = max(live, key=lambda k: (weights[k] / (held[k] + 1), -k))
        held[best] += 1
    return held


@pytest.mark.parametrize("weights", [(1.0, 1.0), (3.0, 1.0), (1.0, 3.0), (2.0, 1.0), (1.0, 9.0)])
@pytest.mark.parametrize("seats", [2, 3, 5])
def test_a_tenants_seats_are_divided_among_its_models_by_dhondt(
    weights: tuple[float, float], seats: int
) -> None:
    """A tenant whose models together want more seats than the cluster has: its candidate
    seats — and so the seats it holds, the cluster being its alone — are the D'Hondt
    apportionment of the seats by model weight, so each model gets at least its lower quota
    ⌊ω_m/Σω · seats⌋ (capped by what it wants)."""
    snap = _one_tenant(weights, seats)
    result = allocate_cluster(snap)
    validate_cluster_allocation(snap, result)
    parts = result.certificate.models["t"]
    got = [parts["a"].seats, parts["b"].seats]
    assert got == _dhondt(weights, seats, (4, 4))
    for k, w in enumerate(weights):
        assert got[k] >= min(4, math.floor(w / sum(weights) * seats))


def test_raising_a_models_weight_never_costs_it_a_seat() -> None:
    """Monotonicity within the tenant: as model a's weight grows, its seats never drop."""
    before = -1
    for weight in (0.1, 0.5, 1.0, 1.5, 2.0, 4.0, 10.0):
        seats = allocate_cluster(_one_tenant((weight, 1.0), 5)).certificate.models["t"]["a"].seats
        assert seats >= before
        before = seats
    assert before == 4  # all it wants once heavy enough


def test_equal_model_weights_give_the_values_of_a_snapshot_without_weights() -> None:
    """ω̂ = 1 for equal weights: every value is the unweighted one (served fraction of demand),
    so snapshots that never set a weight are valued as before."""
    snap = snapshot(3)
    doubled = dataclasses.replace(snap, models=tuple(
        dataclasses.replace(m, weight=2.0) for m in snap.models))
    assert build_instance(doubled).instance.values == build_instance(snap).instance.values
    assert set(build_instance(snap).weights.values()) == {1.0}


def test_a_weight_that_is_not_positive_is_refused() -> None:
    snap = _one_tenant((0.0, 1.0), 2)
    with pytest.raises(InstanceError, match="weight must be positive"):
        build_instance(snap)


# --- a model's SLA ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_within_sla_is_the_mm1_queue_that_matches_the_measured_point(seed: int) -> None:
    """The translated curve is the M/M/1 latency model fitted to each measured point: with
    μ = q + ln100/L₀, the translated rate's p99 sojourn ln100/(μ − q_L) is the model's bound L
    (when positive); it is pointwise at most the measured curve, non-decreasing in streams and
    in the bound, and unchanged within a looser bound or without a measured bound."""
    rng = random.Random(seed)
    measured_within = rng.uniform(5.0, 200.0)
    curve = ThroughputCurve(tuple(sorted(rng.uniform(10, 2000) for _ in range(6))),
                            measured=True, sla_p99_ms=measured_within)
    bounds = sorted(rng.uniform(1.0, 400.0) for _ in range(8))
    previous: tuple[float, ...] | None = None
    for bound in bounds:
        translated = within_sla(curve, bound)
        assert all(b >= a for a, b in zip(translated.qps, translated.qps[1:], strict=False))
        assert all(t <= q + 1e-9 for t, q in zip(translated.qps, curve.qps, strict=True))
        if previous is not None:
            assert all(t >= p - 1e-9 for t, p in zip(translated.qps, previous, strict=True))
        previous = translated.qps
        if bound >= measured_within:
            assert translated == curve
            continue
        for q, t in zip(curve.qps, translated.qps, strict=True):
            mu = q + MM1_P99_LOG * 1000.0 / measured_within  # QPS; bounds in ms
            if t > 0:
                assert MM1_P99_LOG * 1000.0 / (mu - t) == pytest.approx(bound)
    unbounded = ThroughputCurve((5.0, 6.0))
    assert within_sla(unbounded, 1.0) == unbounded


def _contended(sla_b: float, measured_within: float | None = 50.0) -> ClusterSnapshot:
    """Two tenants of equal weight, each with one model wanting 4 replicas, on one 4-seat GPU;
    b's curve was measured against ``measured_within``."""
    curve = ThroughputCurve((400.0, 500.0), measured=True, sla_p99_ms=measured_within)
    profiles = {"n/cuda:0": curve}
    return ClusterSnapshot(
        (Tenant("a", 1.0, "prop1"), Tenant("b", 1.0, "prop1")),
        (Model("ma", "a", ARTIFACT, 100, 4, 50.0, 1600.0, profiles),
         Model("mb", "b", ARTIFACT, 100, 4, sla_b, 1600.0, profiles)),
        (Gpu("n", "cuda:0", "gpu", 8000, 4, 8),),
    )


def test_a_tighter_sla_lowers_a_seats_value_and_changes_the_allocation() -> None:
    """Tightening b's SLA below the one its curve was measured against lowers what each of its
    seats is worth (the translated curve), and the allocation changes with it: first how the
    pool is split, then the seats — b holds none once the latency model says no rate fits its
    bound. Loosening it past the measured bound changes nothing (the curve is a lower bound)."""
    seat_value = {}
    allocations = {}
    seats_of_b = {}
    for sla in (500.0, 50.0, 20.0, 5.0):
        snap = _contended(sla)
        result = allocate_cluster(snap)
        validate_cluster_allocation(snap, result)
        built = build_instance(snap)
        seat_value[sla] = max(built.instance.values["b"].get(s, 0.0)
                              for (t, s) in built.earmark if t == "b")
        allocations[sla] = result.allocation
        seats_of_b[sla] = result.certificate.models["b"]["mb"].seats
    assert seat_value[500.0] == seat_value[50.0] == pytest.approx(400.0 / 1600.0)
    cut = MM1_P99_LOG * 1000.0 * (1 / 20.0 - 1 / 50.0)
    assert seat_value[20.0] == pytest.approx((400.0 - cut) / 1600.0)
    assert seat_value[50.0] > seat_value[20.0] > seat_value[5.0] == 0.0
    assert allocations[500.0] == allocations[50.0]
    assert allocations[20.0] != allocations[50.0]
    assert seats_of_b[50.0] > 0 and seats_of_b[5.0] == 0


def test_a_curve_without_a_measured_bound_is_the_models_own() -> None:
    """A curve that does not say what it was measured against (an estimate, or a profile
    stored before the bound was) is taken at the model's SLA: tightening it changes nothing."""
    loose, tight = _contended(500.0, None), _contended(5.0, None)
    assert build_instance(loose).instance.values == build_instance(tight).instance.values


def test_a_weight_change_moves_seats_the_tenant_held_before_between_its_models() -> None:
    """Seats a tenant held in the previous plans are divided among its models by the same
    D'Hondt rule (ties to the model that held the seat), so a new weight takes effect on the
    next solve instead of being pinned by the old placement."""
    first = allocate_cluster(_one_tenant((1.0, 1.0), 4, wanted=3))
    assert [first.certificate.models["t"][m].seats for m in ("a", "b")] == [2, 2]
    heavier = _one_tenant((3.0, 1.0), 4, wanted=3)
    again = allocate_cluster(heavier, previous=first.plans)
    validate_cluster_allocation(heavier, again)
    assert [again.certificate.models["t"][m].seats for m in ("a", "b")] == [3, 1]
    # Unchanged weights keep every seat's model: nothing is reloaded.
    same = allocate_cluster(_one_tenant((1.0, 1.0), 4, wanted=3), previous=first.plans)
    assert same.plans == first.plans
