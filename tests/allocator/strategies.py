"""Hypothesis strategies for core instances and cluster snapshots (seeded by
tests/conftest.py's profile)."""

from __future__ import annotations

from itertools import accumulate

from hypothesis import strategies as st

from allocator.cluster.snapshot import ClusterSnapshot, Gpu, Model, Tenant, ThroughputCurve
from allocator.criteria import CRITERIA
from allocator.instance import Agent, Instance
from allocator.objectives import OBJECTIVES


@st.composite
def instances(
    draw: st.DrawFn,
    max_agents: int = 4,
    max_indivisible: int = 5,
    max_divisible: int = 2,
    criteria: tuple[str, ...] = CRITERIA,
    weighted: bool = True,
    objectives: tuple[str, ...] = ("utilitarian", "nash", "egalitarian"),
) -> Instance:
    n = draw(st.integers(1, max_agents))
    m = draw(st.integers(0, max_indivisible))
    d = draw(st.integers(0 if m else 1, max_divisible))
    agents = tuple(
        Agent(
            name=f"a{k}",
            weight=draw(st.sampled_from((1.0, 2.0))) if weighted else 1.0,
            criterion=draw(st.sampled_from(criteria)),
        )
        for k in range(n)
    )
    goods = [f"g{k}" for k in range(m)] + [f"d{k}" for k in range(d)]
    values = {
        a.name: {g: float(draw(st.integers(0, 9))) for g in goods} for a in agents
    }
    return Instance(
        agents=agents,
        indivisible=tuple(goods[:m]),
        divisible=tuple(goods[m:]),
        values=values,
        objective=draw(st.sampled_from(objectives)),
    )


@st.composite
def clusters(draw: st.DrawFn, max_tenants: int = 4, max_gpus: int = 3) -> ClusterSnapshot:
    """Small clusters, roomy or oversubscribed: GPUs of 1–4 seats with 0–4 pool streams, some
    seats too small for the larger models, tenants of weight 1–3 with 0–2 models each. A
    model's curve is either the API's estimate before profiling (one stream serves the
    replica's share of demand, so nobody values a pool) or a random measured-looking one."""
    tenants = tuple(
        Tenant(f"t{k}", draw(st.sampled_from((1.0, 2.0, 3.0))), draw(st.sampled_from(CRITERIA)))
        for k in range(draw(st.integers(1, max_tenants)))
    )
    gpus = []
    for k in range(draw(st.integers(1, max_gpus))):
        seats = draw(st.integers(1, 4))
        gpus.append(Gpu(f"n{k // 2}", f"cuda:{k % 2}", "gpu", draw(st.sampled_from((8000, 16000))),
                        seats, seats + draw(st.integers(0, 4))))
    models = []
    for t in tenants:
        for k in range(draw(st.integers(0, 2))):
            replicas = draw(st.integers(1, 3))
            demand = float(draw(st.integers(1, 30)) * 100)
            if draw(st.booleans()):
                qps = tuple(demand / replicas * s**0.8 for s in range(1, 6))
            else:
                steps = draw(st.lists(st.integers(0, 500), min_size=0, max_size=4))
                qps = tuple(accumulate([float(draw(st.integers(50, 1500))), *map(float, steps)]))
            models.append(Model(
                f"{t.name}-m{k}", t.name, "zoo:rmc1?scale=1&seed=1",
                draw(st.sampled_from((1500, 3000, 5000))), replicas, 50.0, demand, {},
                ThroughputCurve(qps, measured=False)))
    return ClusterSnapshot(tenants, tuple(models), tuple(gpus), draw(st.sampled_from(OBJECTIVES)))
