"""Baselines: complete valid allocations, deterministic, and each rule's defining property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocator import validate_allocation
from allocator.instance import Agent, Allocation, Instance
from bench.baselines import BASELINES, equal_split, round_robin, water_filling
from bench.instances import cluster_instance
from tests.allocator.strategies import instances as any_instances


def instances() -> st.SearchStrategy[Instance]:
    """Plain PROP^α instances of up to 5 agents (weights 1–3), 9 seats and 3 pools, with real
    values: the baselines know no criteria or side constraints."""
    return any_instances(max_agents=5, max_indivisible=9, max_divisible=3,
                         criteria=("prop_alpha",), weights=(1.0, 2.0, 3.0),
                         objectives=("utilitarian",), real_values=True)


def _shuffled(instance: Instance) -> Instance:
    """The same instance with every list reversed (agents, goods, value rows)."""
    return Instance(
        agents=instance.agents[::-1],
        indivisible=instance.indivisible[::-1],
        divisible=instance.divisible[::-1],
        values={a: dict(reversed(row.items())) for a, row in reversed(instance.values.items())},
    )


def _own_value(instance: Instance, allocation: Allocation, agent: str, holder: str) -> float:
    """V_agent(A_holder)."""
    items = sum(instance.value(agent, g) for g, h in allocation.indivisible.items() if h == holder)
    pools = sum(
        share.get(holder, 0.0) * instance.value(agent, d)
        for d, share in allocation.divisible.items()
    )
    return items + pools


@pytest.mark.parametrize("name", sorted(BASELINES))
@given(instance=instances())
def test_complete_valid_and_order_independent(name: str, instance: Instance) -> None:
    baseline = BASELINES[name]
    allocation = baseline(instance)
    validate_allocation(instance, allocation)
    agents = {a.name for a in instance.agents}
    assert set(allocation.indivisible) == set(instance.indivisible)
    assert set(allocation.indivisible.values()) <= agents
    for share in allocation.divisible.values():
        assert all(x >= 0 for x in share.values())
        assert math.isclose(sum(share.values()), 1.0, abs_tol=1e-12)
    assert baseline(instance) == allocation
    assert baseline(_shuffled(instance)) == allocation


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize(("tenants", "gpus"), [(8, 8), (24, 5), (3, 40)])
def test_valid_on_cluster_instances(name: str, tenants: int, gpus: int) -> None:
    instance = cluster_instance(tenants, gpus, seed=7)
    validate_allocation(instance, BASELINES[name](instance))


@given(instance=instances())
def test_equal_split_deals_evenly(instance: Instance) -> None:
    allocation = equal_split(instance)
    n = len(instance.agents)
    counts = [list(allocation.indivisible.values()).count(a.name) for a in instance.agents]
    assert max(counts) - min(counts) <= 1
    for share in allocation.divisible.values():
        assert all(math.isclose(x, 1 / n) for x in share.values())


@given(instance=instances())
def test_round_robin_is_ef1_on_indivisible_goods(instance: Instance) -> None:
    # With everyone picking in turn, i envies j by at most one good (j's first pick before i).
    allocation = round_robin(instance)
    bundles = {a.name: [g for g, h in allocation.indivisible.items() if h == a.name]
               for a in instance.agents}
    for i in bundles:
        own = sum(instance.value(i, g) for g in bundles[i])
        for j in bundles:
            other = [instance.value(i, g) for g in bundles[j]]
            assert own >= sum(other) - max(other, default=0.0) - 1e-9, (i, j)


@given(instance=instances())
def test_water_filling_equalises_levels_on_a_divisible_good(instance: Instance) -> None:
    # One divisible good, no indivisible goods: every agent who gets a share ends at one
    # common level V_i/(w_i·T_i), and every agent who gets none is at or above it.
    plain = Instance(
        agents=instance.agents, indivisible=(), divisible=("pool",),
        values={a.name: {"pool": instance.value(a.name, "seat0") or 1.0} for a in instance.agents},
    )
    allocation = water_filling(plain)
    weights = {a.name: a.weight for a in plain.agents}
    levels = {a: _own_value(plain, allocation, a, a) / (weights[a] * plain.value(a, "pool"))
              for a in weights}
    receiving = [levels[a] for a, x in allocation.divisible["pool"].items() if x > 0]
    assert receiving
    assert max(receiving) - min(receiving) <= 1e-9
    assert all(level >= min(receiving) - 1e-9 for level in levels.values())


def test_water_filling_gives_the_next_pick_to_the_poorest() -> None:
    # After a takes x (level 3/5) and b takes y (level 1/3), b is still the poorer and takes z,
    # where round robin would hand z back to a.
    instance = Instance(
        agents=(Agent("a"), Agent("b")),
        indivisible=("x", "y", "z"),
        divisible=(),
        values={"a": {"x": 3.0, "y": 1.0, "z": 1.0}, "b": {"x": 1.0, "y": 1.0, "z": 1.0}},
    )
    assert water_filling(instance).indivisible == {"x": "a", "y": "b", "z": "b"}
    assert round_robin(instance).indivisible == {"x": "a", "y": "b", "z": "a"}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_side_constraints_are_refused(name: str) -> None:
    instance = Instance(
        agents=(Agent("a"),), indivisible=("x",), divisible=(),
        values={"a": {"x": 1.0}}, forbidden=frozenset({("a", "x")}),
    )
    with pytest.raises(ValueError, match="side constraints"):
        BASELINES[name](instance)
