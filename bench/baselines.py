"""Fair-share baselines that the allocator benchmark checks against gpufair's certificate.

These are the rules a platform team would use instead of a fair-division solver
(docs/architecture.md §5):

* :func:`equal_split` — every divisible good split equally among all tenants; the indivisible
  goods dealt one at a time to the tenants in turn (static partitioning, as with MIG slices or
  a fixed share of a GPU's streams).
* :func:`round_robin` — tenants take turns picking their most valued remaining indivisible good
  (the classic EF1 picking sequence for equal weights); divisible goods split by weight.
* :func:`water_filling` — weighted progressive filling, the way DRF (Ghodsi et al., NSDI 2011)
  raises every tenant's dominant share: the tenant whose normalised value per unit of weight,
  ``V_i(A_i) / (w_i · T_i)``, is lowest picks its most valued remaining indivisible good; then
  each divisible good in turn is poured into the lowest tenants until their levels meet.

Each is a pure, deterministic function of a plain core :class:`~allocator.instance.Instance`
(docs/architecture.md §2) returning a complete :class:`~allocator.instance.Allocation`. Tenants and
goods are taken in name order, so the result does not depend on the order of the input. Ties go to
the first name. The cluster layer's side constraints (``forbidden``, ``requires``, ``caps``,
``optional``) are outside what these rules know, so an instance carrying any is refused with
``ValueError``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from allocator.instance import Allocation, Instance

Baseline = Callable[[Instance], Allocation]


def _check_plain(instance: Instance) -> None:
    if not instance.agents:
        raise ValueError("the instance has no agents")
    if instance.forbidden or instance.requires or instance.caps or instance.optional:
        raise ValueError(
            "baselines divide plain core instances only; this one has side constraints "
            "(forbidden/requires/caps/optional)"
        )


def _names(instance: Instance) -> tuple[list[str], list[str], list[str]]:
    return (
        sorted(a.name for a in instance.agents),
        sorted(instance.indivisible),
        sorted(instance.divisible),
    )


def _matrix(instance: Instance, agents: list[str], goods: list[str]) -> np.ndarray:
    return np.array(
        [[instance.value(a, g) for g in goods] for a in agents], dtype=float
    ).reshape(len(agents), len(goods))


def _weights(instance: Instance, agents: list[str]) -> np.ndarray:
    by_name = {a.name: a.weight for a in instance.agents}
    return np.array([by_name[a] for a in agents], dtype=float)


def _split(agents: list[str], shares: np.ndarray) -> dict[str, float]:
    """Fractions of one divisible good, normalised to sum to exactly 1 in floating point."""
    total = float(shares.sum())
    fractions = {a: float(s) / total for a, s in zip(agents, shares, strict=True) if s > 0}
    if fractions:
        # Give the rounding residue to the largest share so the fractions sum to 1.
        largest = max(fractions, key=lambda a: (fractions[a], a))
        fractions[largest] += 1.0 - sum(fractions.values())
    return fractions


def _preference_order(values: np.ndarray) -> np.ndarray:
    """Per agent, the goods from most to least valued; a stable sort breaks ties by name."""
    return np.argsort(-values, axis=1, kind="stable")


def equal_split(instance: Instance) -> Allocation:
    """Divisible goods split 1/n each; indivisible goods dealt to the tenants in turn."""
    _check_plain(instance)
    agents, items, pools = _names(instance)
    n = len(agents)
    return Allocation(
        indivisible={good: agents[k % n] for k, good in enumerate(items)},
        divisible={d: _split(agents, np.ones(n)) for d in pools},
    )


def round_robin(instance: Instance) -> Allocation:
    """Tenants in turn pick their most valued remaining indivisible good; pools by weight."""
    _check_plain(instance)
    agents, items, pools = _names(instance)
    order = _preference_order(_matrix(instance, agents, items))
    taken = np.zeros(len(items), dtype=bool)
    cursor = [0] * len(agents)
    owner: dict[str, str | None] = {}
    for turn in range(len(items)):
        i = turn % len(agents)
        while taken[order[i, cursor[i]]]:
            cursor[i] += 1
        good = int(order[i, cursor[i]])
        taken[good] = True
        owner[items[good]] = agents[i]
    weights = _weights(instance, agents)
    return Allocation(indivisible=owner, divisible={d: _split(agents, weights) for d in pools})


def _pour(levels: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Water-filling of one unit of a divisible good.

    Giving agent i a fraction x raises its level by ``x · rates[i]``. Returns the fractions that
    lift the lowest agents (among those with a positive rate) to one common level L, with
    ``Σ_i max(0, L − levels[i]) / rates[i] = 1``. Rates are taken relative to the largest, and
    a rate below ``1e-12`` of it counts as 0, so that no division overflows.
    """
    top = float(rates.max())
    relative = rates / top
    candidates = np.flatnonzero(relative > 1e-12)
    candidates = candidates[np.argsort(levels[candidates], kind="stable")]
    # In relative rates ρ_i = rates[i]/top the equation reads Σ (L − levels[i])/ρ_i = top.
    inverse_sum = 0.0
    weighted_sum = 0.0
    level = 0.0
    active = 0
    for k, i in enumerate(candidates):
        inverse_sum += 1.0 / relative[i]
        weighted_sum += levels[i] / relative[i]
        level = (top + weighted_sum) / inverse_sum
        active = k + 1
        if k + 1 == len(candidates) or level <= levels[candidates[k + 1]]:
            break
    shares = np.zeros(len(levels))
    chosen = candidates[:active]
    shares[chosen] = np.maximum(level - levels[chosen], 0.0) / relative[chosen]
    if not shares.any():
        # The good is too small to move any level in floating point: the lowest agent takes it.
        shares[candidates[0]] = 1.0
    return shares


def water_filling(instance: Instance) -> Allocation:
    """Weighted progressive filling (DRF-style) of normalised value per unit of weight."""
    _check_plain(instance)
    agents, items, pools = _names(instance)
    n = len(agents)
    item_values = _matrix(instance, agents, items)
    pool_values = _matrix(instance, agents, pools)
    weights = _weights(instance, agents)
    totals = item_values.sum(axis=1) + pool_values.sum(axis=1)
    # Level = normalised value per unit of weight, V_i/(w_i·T_i); dividing each row first keeps
    # tiny totals from overflowing. An agent valuing nothing takes no part.
    divisor = (np.where(totals > 0, totals, 1.0) * weights)[:, None]
    item_levels = item_values / divisor
    pool_levels = pool_values / divisor
    levels = np.zeros(n)

    order = _preference_order(item_values)
    taken = np.zeros(len(items), dtype=bool)
    cursor = [0] * n
    owner: dict[str, str | None] = {}
    heap = [(0.0, i) for i in range(n) if totals[i] > 0]
    heapq.heapify(heap)
    while heap and len(owner) < len(items):
        _, i = heapq.heappop(heap)
        while cursor[i] < len(items) and taken[order[i, cursor[i]]]:
            cursor[i] += 1
        if cursor[i] == len(items) or item_values[i, order[i, cursor[i]]] <= 0:
            continue  # nothing left that this agent values: it leaves the indivisible phase
        good = int(order[i, cursor[i]])
        taken[good] = True
        owner[items[good]] = agents[i]
        levels[i] += item_levels[i, good]
        heapq.heappush(heap, (float(levels[i]), i))
    # Goods nobody left values are dealt in turn, as equal split does.
    unvalued = [item for item, t in zip(items, taken, strict=True) if not t]
    for k, item in enumerate(unvalued):
        owner[item] = agents[k % n]

    divisible: dict[str, dict[str, float]] = {}
    for d, pool in enumerate(pools):
        rates = pool_levels[:, d]
        if not np.any(rates > 0):
            divisible[pool] = _split(agents, weights)
            continue
        shares = _pour(levels, rates)
        levels += shares * rates
        divisible[pool] = _split(agents, shares)
    return Allocation(indivisible=owner, divisible=divisible)


BASELINES: dict[str, Baseline] = {
    "equal_split": equal_split,
    "round_robin": round_robin,
    "water_filling": water_filling,
}
