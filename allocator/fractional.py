"""Seat counts from the fractional relaxation: every good divisible, every criterion exact.

The scalable path (allocator.fixed_seats) needs a good seat assignment before its share LP.
A picking sequence ignores the divisible goods and the other agents' criteria; on mixed
weights and EFM agents it leaves violations no seat move repairs (measured on the 64 × 64
generator instance: total violation 0.033 of agents' totals from the picking sequence, 0.001
from this guidance, 0 after one seat move). So: relax every indivisible good to a divisible
one (identical goods grouped into one *type* with a count, as the MILP does), ask for every
criterion *exactly* — weighted EF or PROP, unweighted EF for EFM agents, no "up to one good"
allowance — with a slack per agent, minimise the total slack, and round each type's fractional
counts to integers by largest remainders. The exact criteria leave rounding room that the
share LP's "up to one good" terms then absorb.

The LP has every envy pair up front and is solved by HiGHS's interior point method without
crossover (its rows are dense in the goods: simplex needs 9–12 s at 64 × 64, IPM about 3 s,
and only a rounded answer is needed, so a loose tolerance is fine). Only plain instances (no
side constraints) use it; the cluster layer's forbidden pairs, caps and coupling keep the
picking sequence.
"""

from __future__ import annotations

import logging
import time

import highspy
import numpy as np

log = logging.getLogger(__name__)

INF = highspy.kHighsInf
IPM_TOLERANCE = 1e-4  # guidance only: the share LP re-solves exactly afterwards
PROP_KIND, EF_KIND, EFM_KIND = 0, 1, 2  # as in allocator.fixed_seats


def goods_by_type(vm: np.ndarray) -> list[np.ndarray]:
    """Indivisible goods grouped by identical value columns (in first-appearance order)."""
    groups: dict[bytes, list[int]] = {}
    for g in range(vm.shape[1]):
        groups.setdefault(vm[:, g].tobytes(), []).append(g)
    return [np.array(goods) for goods in groups.values()]


def fractional_seats(
    vm: np.ndarray, vd: np.ndarray, weight: np.ndarray, kind: np.ndarray,
    positive: np.ndarray, deadline: float,
) -> np.ndarray | None:
    """owner[g] for every indivisible good, or None if the LP does not finish in time.

    ``vm``/``vd``: normalised values (agents × indivisible, agents × divisible goods);
    ``kind``: PROP_KIND, EF_KIND or EFM_KIND per agent.
    """
    types = goods_by_type(vm)
    count = np.array([len(t) for t in types], dtype=float)
    # Whole-type values: a type of c goods is one divisible good worth c·v.
    value = np.hstack([np.stack([vm[:, t[0]] for t in types], axis=1) * count, vd])
    n, k = value.shape
    ncols = n * k + n  # shares y[j, type or pool] as fractions, then s_i
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("solver", "ipm")
    h.setOptionValue("run_crossover", "off")
    h.setOptionValue("ipm_optimality_tolerance", IPM_TOLERANCE)
    upper = np.concatenate([np.ones(n * k), np.where(positive, INF, 0.0)])
    h.addVars(ncols, np.zeros(ncols), upper)
    h.changeColsCost(ncols, np.arange(ncols, dtype=np.int32),
                     np.concatenate([np.zeros(n * k), np.ones(n)]))
    # Every good (type) is divided completely.
    h.addRows(k, np.ones(k), np.ones(k), n * k, (np.arange(k) * n).astype(np.int32),
              (np.arange(n)[None, :] * k + np.arange(k)[:, None]).ravel().astype(np.int32),
              np.ones(n * k))
    share = weight / weight.sum()
    rows_lower: list[np.ndarray] = []
    rows_index: list[np.ndarray] = []
    rows_value: list[np.ndarray] = []
    # PROP-type, exact: V_i(A_i) + s_i ≥ w_i/W (normalised values).
    prop = np.nonzero((kind == PROP_KIND) & positive)[0]
    if len(prop):
        rows_lower.append(share[prop])
        rows_index.append(np.hstack([prop[:, None] * k + np.arange(k), n * k + prop[:, None]]))
        rows_value.append(np.hstack([value[prop], np.ones((len(prop), 1))]))
    # EF-type, exact: V_i(A_i) − r·V_i(A_j) + s_i ≥ 0 with r = w_i/w_j (1 for EFM).
    ef = np.nonzero((kind != PROP_KIND) & positive)[0]
    if len(ef):
        i, j = np.meshgrid(ef, np.arange(n), indexing="ij")
        keep = i != j
        i, j = i[keep], j[keep]
        r = np.where(kind[i] == EFM_KIND, 1.0, weight[i] / weight[j])
        rows_lower.append(np.zeros(len(i)))
        rows_index.append(np.hstack([i[:, None] * k + np.arange(k), j[:, None] * k
                                     + np.arange(k), n * k + i[:, None]]))
        rows_value.append(np.hstack([value[i], -r[:, None] * value[i], np.ones((len(i), 1))]))
    if rows_lower:
        lower = np.concatenate(rows_lower)
        flat_index = np.concatenate([ix.ravel() for ix in rows_index]).astype(np.int32)
        flat_value = np.concatenate([v.ravel() for v in rows_value])
        widths = np.concatenate([np.full(len(ix), ix.shape[1]) for ix in rows_index])
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int32)
        h.addRows(len(lower), lower, np.full(len(lower), INF), len(flat_index), starts,
                  flat_index, flat_value)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    h.setOptionValue("time_limit", float(remaining))
    h.run()
    status = h.getModelStatus()
    solution = h.getSolution()
    # Without crossover HiGHS reports an interior solution as "unknown" status: it is still
    # a (near-)optimal point, which is all the rounding needs.
    if status not in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kUnknown) \
            or not solution.value_valid:
        log.info("fractional relaxation: %s", h.modelStatusToString(status))
        return None
    col = np.asarray(solution.col_value)
    log.info("fractional relaxation: total violation %.3g", float(col[n * k:].sum()))
    seat_value = np.stack([vm[:, t[0]] for t in types], axis=1)
    return _round(col[: n * k].reshape(n, k)[:, : len(types)] * count, types, vm.shape[1],
                  seat_value)


def _round(
    counts: np.ndarray, types: list[np.ndarray], goods: int, value: np.ndarray
) -> np.ndarray:
    """Integer counts per type, then goods: each type's whole counts first; its remaining
    goods go to the agents with the largest remainder plus rounding debt — the own value an
    agent has lost to earlier roundings, in units of this type's good — so that no agent's
    losses pile up over many types (ties: agent order). ``value[i, t]``: one good's value."""
    n = counts.shape[0]
    owner = np.full(goods, -1)
    debt = np.zeros(n)
    for t, members in enumerate(types):
        y = np.clip(counts[:, t], 0.0, None)
        whole = np.floor(y + 1e-6).astype(int)
        while whole.sum() > len(members):  # rounding noise past the type's count
            whole[np.argmax(whole)] -= 1
        extra = len(members) - int(whole.sum())
        unit = value[:, t]
        priority = (y - whole) + np.where(unit > 0, debt / np.where(unit > 0, unit, 1.0), 0.0)
        # Only agents with a fractional part compete (those the relaxation gave some of it).
        priority = np.where(y - whole > 1e-9, priority, -np.inf)
        order = np.argsort(-priority, kind="stable")
        whole[order[:extra]] += 1
        debt += (y - whole) * unit
        owner[members] = np.repeat(np.arange(n), whole)
    return owner
