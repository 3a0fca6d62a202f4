"""The benchmark's instance generator: reproducible, cluster-shaped, every tenant fits somewhere."""

from __future__ import annotations

import pytest

from allocator.cluster.instance import pool_name, seat_name
from bench.instances import (
    CRITERION_MIX,
    SEATS_PER_GPU,
    cluster_instance,
)


@pytest.mark.parametrize(("tenants", "gpus", "seed"), [(1, 1, 0), (8, 8, 1), (16, 40, 2)])
def test_shape_and_values(tenants: int, gpus: int, seed: int) -> None:
    instance = cluster_instance(tenants, gpus, seed)
    assert len(instance.agents) == tenants
    assert len(instance.indivisible) == SEATS_PER_GPU * gpus
    assert len(instance.divisible) == gpus
    assert len({a.name for a in instance.agents}) == tenants
    goods = set(instance.indivisible) | set(instance.divisible)
    criteria = {name for name, _ in CRITERION_MIX}
    for agent in instance.agents:
        assert agent.weight > 0
        assert agent.criterion in criteria
        row = instance.values[agent.name]
        assert set(row) <= goods
        assert all(v >= 0 for v in row.values())
        # GPU 0 is always of the largest class, so every model fits at least its seats.
        assert sum(row.values()) > 0, f"seed {seed}: {agent.name} values nothing"


def test_seeded_and_reproducible() -> None:
    assert cluster_instance(12, 9, 5) == cluster_instance(12, 9, 5)
    assert cluster_instance(12, 9, 5).values != cluster_instance(12, 9, 6).values


def test_criteria_and_weights_are_mixed() -> None:
    instance = cluster_instance(200, 4, 0)
    assert {a.criterion for a in instance.agents} == {name for name, _ in CRITERION_MIX}
    assert len({a.weight for a in instance.agents}) > 1


def test_seats_of_one_gpu_are_identical_goods() -> None:
    instance = cluster_instance(10, 6, 3)
    for agent in instance.agents:
        for pool in instance.divisible:
            gpu = pool.removesuffix(pool_name(""))
            seats = {instance.value(agent.name, seat_name(gpu, s)) for s in range(SEATS_PER_GPU)}
            assert len(seats) == 1


def test_equal_weights_change_only_the_weights() -> None:
    mixed = cluster_instance(30, 5, 4)
    equal = cluster_instance(30, 5, 4, equal_weights=True)
    assert {a.weight for a in equal.agents} == {1.0}
    assert [(a.name, a.criterion) for a in equal.agents] == [
        (a.name, a.criterion) for a in mixed.agents
    ]
    assert equal.values == mixed.values


def test_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError, match="at least one"):
        cluster_instance(0, 4, 0)
