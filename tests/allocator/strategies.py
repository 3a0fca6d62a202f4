"""Hypothesis strategies for core instances and cluster snapshots (seeded by
tests/conftest.py's profile)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import TypeVar

from hypothesis import strategies as st

from allocator.cluster.snapshot import ClusterSnapshot, Gpu, Model, Tenant, ThroughputCurve
from allocator.criteria import CRITERIA, Criterion
from allocator.instance import Instance
from allocator.objectives import OBJECTIVES, Objective
from bench.instances import random_instance

T = TypeVar("T")


class DrawnSource:
    """The choices of bench/instances.py's generators drawn by Hypothesis, so that the instances
    it generates shrink like any other drawn value."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))

    def uniform(self, low: float, high: float) -> float:
        return self._draw(st.floats(low, high, allow_nan=False, allow_subnormal=False))


@st.composite
def instances(
    draw: st.DrawFn,
    max_agents: int = 4,
    max_indivisible: int = 5,
    max_divisible: int = 2,
    criteria: tuple[Criterion, ...] = CRITERIA,
    weights: tuple[float, ...] = (1.0, 2.0),
    objectives: tuple[Objective, ...] = OBJECTIVES,
    real_values: bool = False,
) -> Instance:
    """Small plain instances (bench.instances.random_instance): 1 to ``max_agents`` agents,
    up to ``max_indivisible`` and ``max_divisible`` goods (at least one good)."""
    return random_instance(
        DrawnSource(draw), agents=(1, max_agents), indivisible=(0, max_indivisible),
        divisible=(0, max_divisible), weights=weights, criteria=criteria,
        objectives=objectives, real_values=real_values,
    )  # fmt: skip


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
