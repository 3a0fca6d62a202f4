"""Seat moves and swaps (allocator.exchange): the incremental evaluation of a move or swap is
the one checker's verdict on the moved allocation, and what ``exchange_seats`` returns keeps
every criterion that held, makes no agent's exact slack worse, and is better by its order."""

from __future__ import annotations

import math
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator import Allocation, Instance, certify
from allocator.certificate import TOLERANCE, bundles, constraint_terms
from allocator.constructive import efm_allocation, picking_allocation
from allocator.exchange import Exchange, exchange_seats
from allocator.instance import canonical
from allocator.objectives import OBJECTIVES, Objective
from allocator.welfare import improve_shares
from bench.instances import NumpySource, cluster_instance, random_instance


def _random_case(seed: int) -> tuple[Instance, Allocation, np.random.Generator]:
    """A random plain instance (2–12 agents, mixed criteria and weights, some values 0) with
    a random allocation of its seats and random shares (some agents without any)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 13))
    instance = random_instance(NumpySource(rng), agents=(n, n), indivisible=(1, 3 * n),
                               divisible=(0, 3), weights=(1.0, 2.0, 4.0),
                               objectives=OBJECTIVES, real_values=bool(rng.integers(2)))
    names = [a.name for a in instance.agents]
    indivisible: dict[str, str | None] = {g: names[int(rng.integers(n))]
                                          for g in instance.indivisible}
    divisible = {}
    for d in instance.divisible:
        weights = rng.random(n) * (rng.random(n) < 0.7)
        if weights.sum() == 0:
            weights[0] = 1.0
        divisible[d] = {names[k]: float(w / weights.sum()) for k, w in enumerate(weights) if w}
    return instance, Allocation(indivisible, divisible), rng


def _checker_slacks(instance: Instance, allocation: Allocation) -> tuple[np.ndarray, np.ndarray]:
    """Every agent's exact slack and slack at λ = 1 by the one checker (+inf: no rows)."""
    certificate = certify(instance, allocation)
    b = bundles(instance, allocation)
    slack, one = [], []
    for agent in instance.agents:
        terms = constraint_terms(instance, b, agent.name)
        slack.append(min((a for _, a, _ in terms), default=math.inf))
        one.append(min((a + bb for _, a, bb in terms), default=math.inf))
        row = certificate.agents[agent.name]
        assert row.holds is (slack[-1] >= -TOLERANCE)
    return np.array(slack), np.array(one)


def _moved(allocation: Allocation, goods: tuple[str, ...], names: tuple[str, ...], g: int,
           h: int, i: int) -> Allocation:
    indivisible = dict(allocation.indivisible)
    giver = indivisible[goods[g]]
    indivisible[goods[g]] = names[i]
    if h >= 0:
        indivisible[goods[h]] = giver
    return Allocation(indivisible, allocation.divisible)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    both_inf = np.isinf(a) & np.isinf(b)
    return bool(np.all(both_inf | (np.abs(np.where(both_inf, 0, a - b)) <= 1e-9)))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_evaluation_matches_the_checker(seed: int) -> None:
    instance, allocation, rng = _random_case(seed)
    state = Exchange(instance, allocation, instance.objective)
    slack, one = _checker_slacks(instance, allocation)
    assert _same(state.slack, slack) and _same(state.slack_one, one)
    names, goods = state.names, state.goods
    m, n = len(goods), len(names)
    candidates = []
    for _ in range(12):
        g = int(rng.integers(m))
        j = int(state.owner[g])
        i = int(rng.choice([k for k in range(n) if k != j]))
        mine = np.nonzero(state.owner == i)[0]
        h = int(rng.choice(mine)) if len(mine) and rng.random() < 0.5 else -1
        candidates.append((g, h, i))
    goods_to, goods_back, receivers = (np.array(column)
                                       for column in zip(*candidates, strict=True))
    evaluation = state.evaluate(goods_to, goods_back, receivers)
    before = certify(instance, allocation).objective_value
    for c, (gc, hc, ic) in enumerate(candidates):
        after = _moved(allocation, goods, names, gc, hc, ic)
        slack, one = _checker_slacks(instance, after)
        assert _same(evaluation.slack[c], slack), (c, evaluation.slack[c], slack)
        assert _same(evaluation.slack_one[c], one)
        value = certify(instance, after).objective_value
        if instance.objective == "utilitarian":
            assert abs(evaluation.welfare[c] - (value - before)) < 1e-9
        elif instance.objective == "egalitarian" and math.isfinite(before):
            assert abs(evaluation.welfare[c] - (value - before)) < 1e-9
        elif math.isfinite(before) and math.isfinite(value):
            assert abs(evaluation.welfare[c] - (value - before)) < 1e-9
    # Taking a candidate leaves the state as a fresh one of the moved allocation.
    gc, hc, ic = candidates[0]
    state.take(gc, hc, ic)
    fresh = Exchange(instance, _moved(allocation, goods, names, gc, hc, ic), instance.objective)
    assert _same(state.slack, fresh.slack) and _same(state.slack_one, fresh.slack_one)
    assert np.allclose(state.own, fresh.own)


def _key(instance: Instance, allocation: Allocation, objective: Objective) -> tuple:
    c = certify(instance, allocation, objective=objective)
    rows = c.agents.values()
    shortfall = sum(-r.slack for r in rows if not r.holds and r.slack is not None)
    return c.violations, sum(not r.holds for r in rows), shortfall, c.objective_value


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(OBJECTIVES))
def test_exchange_keeps_every_held_criterion_and_improves(seed: int,
                                                         objective: Objective) -> None:
    instance, allocation, _ = _random_case(seed)
    start = (efm_allocation(instance) if seed % 3 else picking_allocation(instance)
             if seed % 2 else allocation)
    outcome = exchange_seats(instance, start, objective, time.monotonic() + 10.0)
    if outcome is None:
        return
    assert outcome.moves + outcome.swaps > 0
    assert outcome.allocation.divisible == start.divisible
    before = certify(instance, start, objective=objective)
    after = certify(instance, outcome.allocation, objective=objective)
    for name, row in before.agents.items():
        new = after.agents[name]
        if row.holds:
            assert new.holds, name
        if row.slack is not None:
            assert new.slack is not None and new.slack >= min(row.slack, 0.0) - TOLERANCE / 2
    old_key = _key(instance, start, objective)
    new_key = _key(instance, outcome.allocation, objective)
    assert new_key[:2] <= old_key[:2]
    if new_key[:2] == old_key[:2]:
        assert new_key[2] < old_key[2] - 1e-12 or new_key[3] > old_key[3] + 1e-12 or (
            objective != "utilitarian" and new_key[3] >= old_key[3] - 1e-9)


def test_exchange_repairs_and_keeps_the_guarantee_on_a_cluster_instance() -> None:
    # The benchmark's 32 × 16 instance (seed 2): the EFM construction leaves heavy PROP-type
    # tenants short; moves and swaps make fewer fail without breaking any EFM tenant.
    instance = canonical(cluster_instance(32, 16, 2))
    start = efm_allocation(instance)
    outcome = exchange_seats(instance, start, "utilitarian", time.monotonic() + 20.0)
    assert outcome is not None
    before, after = (certify(instance, a) for a in (start, outcome.allocation))
    assert all(after.agents[a].holds for a, row in before.agents.items() if row.holds)
    assert all(after.agents[a.name].holds for a in instance.agents if a.criterion == "efm")
    fewer = sum(not r.holds for r in after.agents.values())
    assert fewer < sum(not r.holds for r in before.agents.values())


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(OBJECTIVES))
def test_share_lp_gives_no_criterion_back(seed: int, objective: Objective) -> None:
    # allocator.welfare: with the seats fixed, every criterion that held still holds, no
    # agent's exact slack is worse, and no more agents fail even at λ = 1 (its first stage
    # may only shrink the shortfall of those that do).
    instance, allocation, _ = _random_case(seed)
    improved = improve_shares(instance, allocation, objective, time.monotonic() + 10.0)
    if improved is None:
        return
    assert improved.indivisible == allocation.indivisible
    before = certify(instance, allocation, objective=objective)
    after = certify(instance, improved, objective=objective)
    for name, row in before.agents.items():
        new = after.agents[name]
        assert new.holds or not row.holds, name
        if row.slack is not None:
            assert new.slack is not None and new.slack >= min(row.slack, 0.0) - TOLERANCE
        if row.lam is not None and row.holds is False:
            assert new.lam is not None and new.lam <= row.lam + 1e-6, name
    assert after.violations <= before.violations


def test_share_lp_repairs_a_heavy_tenant_on_a_cluster_instance() -> None:
    # The benchmark's 32 × 16 instance (seed 0): the EFM construction leaves tenants short
    # even at λ = 1; the share LP's first stage makes fewer of them fail, keeping every EFM one.
    instance = canonical(cluster_instance(32, 16, 0))
    start = efm_allocation(instance)
    improved = improve_shares(instance, start, "utilitarian", time.monotonic() + 20.0)
    assert improved is not None
    before, after = (certify(instance, a) for a in (start, improved))
    assert all(after.agents[a].holds for a, row in before.agents.items() if row.holds)
    assert after.violations < before.violations
