"""Work-conserving plans: a seated GPU's pool streams the fair division left to nobody are
shared among the tenants seated there by weight, as far as every criterion allows
(allocator.cluster.idle_pools.share_idle_pools), and the certificate and plans are those of the
shared allocation. Random clusters come from the seeded Hypothesis profile; the hand-made
instances pin down why a pool may stay idle."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest
from hypothesis import given

from allocator import (
    Agent,
    Allocation,
    ClusterSnapshot,
    Gpu,
    Instance,
    Model,
    SolveOptions,
    Tenant,
    ThroughputCurve,
    allocate_cluster,
    certify,
    validate_cluster_allocation,
)
from allocator.certificate import ZERO_SHARE
from allocator.cluster.documents import snapshot_from_dict
from allocator.cluster.idle_pools import share_idle_pools
from allocator.cluster.instance import build_instance, pool_name, seat_name
from allocator.division import divide
from tests.allocator.strategies import clusters

EXAMPLE = Path(__file__).parents[3] / "examples" / "cluster.toml"


def seated(result_allocation: Allocation, gpu: Gpu) -> set[str]:
    return {h for k in range(gpu.seats)
            if (h := result_allocation.indivisible.get(seat_name(gpu.gpu_id, k))) is not None}


@given(clusters())
def test_seated_pools_are_shared_by_weight_and_certified(snap: ClusterSnapshot) -> None:
    """Every pool of a GPU with a seated replica is divided completely — or its certificate
    note says whose criterion keeps the rest idle; shares go only to tenants seated there;
    what sharing added is the same multiple of every seated tenant's weight; no seat moves;
    no criterion that held in the fair division stops holding; and the certificate and the
    plans are the checker's for the allocation emitted."""
    options = SolveOptions(time_limit_s=10)
    built = build_instance(snap)
    core = divide(built.instance, options, notes=built.notes)
    result = allocate_cluster(snap, options)
    # certificate rows and plans match the emitted allocation
    validate_cluster_allocation(snap, result)
    assert result.allocation.indivisible == core.allocation.indivisible
    weight = {t.name: t.weight for t in snap.tenants}
    for gpu in snap.gpus:
        if gpu.streams == gpu.seats:
            continue
        d, here = pool_name(gpu.gpu_id), seated(result.allocation, gpu)
        shares = result.allocation.divisible[d]
        assert {j for j, x in shares.items() if x > ZERO_SHARE} <= here
        total = sum(shares.values())
        noted = [n for n in result.certificate.notes if n.startswith(f"{d}: ")]
        if not here:
            assert total <= ZERO_SHARE and not noted and d not in result.idle_shares
            continue
        assert total == pytest.approx(1.0, abs=1e-6) or noted
        added = result.idle_shares.get(d, {})
        before = core.allocation.divisible[d]
        for j in set(shares) | set(before):
            assert shares.get(j, 0.0) == pytest.approx(before.get(j, 0.0) + added.get(j, 0.0))
        if added:
            assert set(added) == here
            per_weight = [added[j] / weight[j] for j in sorted(here)]
            assert per_weight == pytest.approx([per_weight[0]] * len(per_weight), rel=1e-9)
    for name, row in core.certificate.agents.items():
        assert result.certificate.agents[name].holds or not row.holds, name
        assert result.certificate.agents[name].lam is not None or row.lam is None, name


def estimated(snap: ClusterSnapshot) -> ClusterSnapshot:
    """The snapshot as the API sees it before any profile: one stream serves a replica's
    share of demand, ``s`` streams ``s**0.8`` times that — so nobody values a pool."""
    models = tuple(
        Model(m.model_id, m.tenant, m.artifact, m.memory_mb, m.replicas_wanted, m.sla_p99_ms,
              m.demand_qps, {}, ThroughputCurve(tuple(
                  m.demand_qps / m.replicas_wanted * s**0.8 for s in range(1, 9))))
        for m in snap.models)
    return ClusterSnapshot(snap.tenants, models, snap.gpus, snap.objective)


@pytest.mark.parametrize("seed", range(4))
def test_roomy_cluster_with_estimates_assigns_every_seated_pool(seed: int) -> None:
    """Before profiling nobody values a pool, so the fair division assigns none; with room
    for every replica, sharing then assigns every seated GPU's pool completely, exactly by
    weight, and the plan puts all of it to work — dedicated streams plus pool weights fill
    the pool, and the plan's reading of a seat's pool streams is its weight."""
    rng = random.Random(seed)
    tenants = tuple(Tenant(f"t{k}", rng.choice((1.0, 2.0, 3.0)),
                           rng.choice(("prop_alpha", "ef_alpha", "efm", "ef1")))
                    for k in range(5))
    gpus = tuple(Gpu(f"n{k // 4}", f"cuda:{k % 4}", "gpu", 40000, 4, rng.choice((5, 6, 8)))
                 for k in range(8))
    models = tuple(Model(f"{t.name}-m{k}", t.name, "zoo:rmc1?scale=1&seed=1", 4000,
                         rng.randint(1, 3), 20.0, float(rng.randrange(200, 3000, 100)))
                   for t in tenants for k in range(2))  # ≤ 30 of 32 seats wanted
    snap = estimated(ClusterSnapshot(tenants, models, gpus))
    result = allocate_cluster(snap, SolveOptions(time_limit_s=20))
    validate_cluster_allocation(snap, result)
    assert result.certificate.violations == 0, seed
    assert not [n for n in result.certificate.notes if pool_name("") in n], seed
    weight = {t.name: t.weight for t in tenants}
    for gpu in gpus:
        here = seated(result.allocation, gpu)
        shares = result.allocation.divisible[pool_name(gpu.gpu_id)]
        if not here:
            continue
        total_weight = sum(weight[j] for j in here)
        assert shares == pytest.approx({j: weight[j] / total_weight for j in here}), seed
        device = next(d for d in result.plans[gpu.node].devices if d.device == gpu.device)
        # Nothing idle: the shared pool is exactly the seats' weights.
        weights = sum(seat.pool_weight for seat in device.seats)
        assert weights == pytest.approx(device.shared_pool_streams, abs=1e-6), seed
        for seat in device.seats:
            if seat.replica is not None:
                assert device.pool_streams(seat) == pytest.approx(seat.pool_weight), seed


def test_example_cluster_puts_every_seated_pool_to_work() -> None:
    """examples/cluster.toml: every seated pool is divided completely and the certificate
    still holds."""
    snap = snapshot_from_dict(tomllib.loads(EXAMPLE.read_text()))
    result = allocate_cluster(snap, SolveOptions(time_limit_s=20))
    validate_cluster_allocation(snap, result)
    assert result.certificate.violations == 0
    for gpu in snap.gpus:
        if seated(result.allocation, gpu) and gpu.streams > gpu.seats:
            total = sum(result.allocation.divisible[pool_name(gpu.gpu_id)].values())
            assert total == pytest.approx(1.0), gpu.gpu_id


def test_a_tenant_alone_on_a_gpu_gets_the_pool_it_has_no_value_for() -> None:
    """feed's model fits only the large GPU and serves its demand with its base streams (a flat
    curve), so the fair division leaves that GPU's two pool streams to nobody; sharing gives
    them to feed, one dedicated to each of its replicas, and the certificate still holds."""
    gpus = (Gpu("n0", "cuda:0", "gpu", 16000, 2, 4), Gpu("n0", "cuda:1", "gpu", 4000, 2, 2))
    flat = ThroughputCurve((500.0, 500.0, 500.0, 500.0), measured=True)
    rising = ThroughputCurve((100.0, 200.0), measured=True)
    models = (Model("feed-m", "feed", "file:f.pt", 8000, 2, 100.0, 1000.0,
                    {g.gpu_id: flat for g in gpus}),
              Model("ads-m", "ads", "file:a.pt", 1000, 2, 100.0, 400.0,
                    {g.gpu_id: rising for g in gpus}))
    snap = ClusterSnapshot((Tenant("ads"), Tenant("feed")), models, gpus)
    result = allocate_cluster(snap, SolveOptions(time_limit_s=20))
    validate_cluster_allocation(snap, result)
    assert result.certificate.violations == 0
    assert result.idle_shares[pool_name("n0/cuda:0")] == pytest.approx({"feed": 1.0})
    device = next(d for d in result.plans["n0"].devices if d.device == "cuda:0")
    assert [(s.replica and s.replica.tenant, s.dedicated_streams) for s in device.seats] == [
        ("feed", 1), ("feed", 1)]
    assert device.shared_pool_streams == 0


def one_pool(values: dict[str, dict[str, float]], agents: tuple[Agent, ...],
             seats: tuple[str, ...], on_gpu: tuple[str, ...]) -> Instance:
    """A core instance shaped like the cluster layer's: seats, one optional pool ``p`` that
    requires a seat in ``on_gpu``."""
    return Instance(agents=agents, indivisible=seats, divisible=("p",), values=values,
                    requires={"p": on_gpu}, optional=frozenset((*seats, "p")))


def test_weighted_split_keeps_tight_weighted_envy_exact() -> None:
    """a (weight 1) holds one seat, b (weight 3) three, both value everything 1 and the pool
    is unassigned: weighted EF is tight both ways. Sharing by weight (¼, ¾) raises
    ``V_i(A_i)/w_i`` and ``V_i(A_j)/w_j`` alike, so it goes through whole; an equal split
    would make b envy a."""
    seats = ("s0", "s1", "s2", "s3")
    ones = {g: 1.0 for g in (*seats, "p")}
    inst = one_pool({"a": ones, "b": dict(ones)},
                    (Agent("a", 1.0, "ef"), Agent("b", 3.0, "ef")), seats, seats)
    alloc = Allocation({"s0": "a", "s1": "b", "s2": "b", "s3": "b"}, {"p": {}})
    cert = certify(inst, alloc)
    assert cert.fair
    shared, again, added = share_idle_pools(inst, alloc, cert)
    assert added == {"p": pytest.approx({"a": 0.25, "b": 0.75})}
    assert shared.divisible["p"] == pytest.approx({"a": 0.25, "b": 0.75})
    assert again.fair and again == certify(inst, shared, solver=cert.solver,
                                            status=cert.status, time_s=cert.time_s)
    equal = Allocation(alloc.indivisible, {"p": {"a": 0.5, "b": 0.5}})
    assert not certify(inst, equal).agents["b"].holds


def test_unseated_tenant_limits_what_is_shared() -> None:
    """b lost its candidate seat s0 on a's GPU and still values that GPU's pool: giving a
    more than 0.4 of it would break b's EF1, so a gets 0.4 and the note says 60% stays
    idle because of b."""
    inst = one_pool({"a": {"s0": 1.0}, "b": {"s0": 0.5, "s1": 0.4, "p": 1.0}},
                    (Agent("a", 1.0, "prop_alpha"), Agent("b", 1.0, "ef1")),
                    ("s0", "s1"), ("s0",))
    alloc = Allocation({"s0": "a", "s1": "b"}, {"p": {}})
    cert = certify(inst, alloc)
    assert cert.fair
    shared, again, added = share_idle_pools(inst, alloc, cert)
    assert added["p"]["a"] == pytest.approx(0.4, abs=1e-6) and added["p"]["a"] <= 0.4
    assert again.fair
    assert again.notes == ("p: 60.0% of the pool left unassigned: sharing it with the "
                           "tenants seated there would break b's criterion",)


def test_efm_towards_a_tenant_without_divisible_goods_keeps_the_pool_idle() -> None:
    """EFM lets b discount one seat of a only while a holds no divisible good (docs/architecture.md
    §2), even one b values at 0: b's criterion is tight, so the pool nobody values stays idle."""
    inst = one_pool({"a": {"s0": 1.0}, "b": {"s0": 1.0}},
                    (Agent("a", 1.0, "prop_alpha"), Agent("b", 1.0, "efm")), ("s0",), ("s0",))
    alloc = Allocation({"s0": "a"}, {"p": {}})
    cert = certify(inst, alloc)
    assert cert.fair
    shared, again, added = share_idle_pools(inst, alloc, cert)
    assert added == {} and shared.divisible == {"p": {}} and again.fair
    assert again.notes == ("p: 100.0% of the pool left unassigned: sharing it with the "
                           "tenants seated there would break b's criterion",)
