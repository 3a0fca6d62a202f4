"""The fractional relaxation: seat counts for the scalable path, and a proof when none is fair.

Both LPs here make every good divisible. Identical goods — the seats of one GPU, the pools of
GPUs every agent values alike — are grouped into one *type* with a count, as the MILP does, so
the LP has one share per agent and type.

:func:`fractional_seats` — guidance. The scalable path (allocator.scalable.path) needs a good
seat assignment before its share LP. A picking sequence ignores the divisible goods and the
other agents' criteria; on mixed weights and EFM agents it leaves violations that seat moves
repair only slowly (docs/benchmarks.md, "Measurements behind design choices"). So: ask for every
criterion *exactly* — weighted EF or PROP, unweighted EF for EFM agents, no "up to one good"
allowance — with a slack per agent, minimise the total slack, and round each type's fractional
counts to integers by largest remainders. The exact criteria leave rounding room that the
share LP's "up to one good" terms then absorb. The LP has every envy pair up front (its rows
are dense in the goods, which makes simplex slow) and is solved by HiGHS's interior point
method without crossover, stopped at a loose tolerance: only a rounded answer is needed, and
the not quite converged point is more central — each row keeps some margin, which is room for
the rounding (and it takes about half the time of a tight tolerance; docs/benchmarks.md).

:func:`relaxation_bound` — a proof. Every allocation that meets every criterion at λ = 1 (each
agent's "up to one good" version) is, read as fractions of types, a feasible point of an LP
whose rows bound each allowance ``Mx_i(·)`` from above by the largest value ``M_i`` agent i
gives any single indivisible good, and by the seat part of the bundle it is taken from. So if
that LP's least total slack is positive, no allocation meets every criterion even fully
relaxed; its optimum (solved to an optimal basis) is a lower bound on the total violation of
every allocation. The rows include the checker's tolerance, so the claim is about what the
checker would accept. Its envy rows are added in rounds, only those the last solution
violates (dual simplex, warm from the last basis): an LP with fewer rows has an optimum no
larger, so every round's optimum is already a sound bound, and the last round's — no row
violated — is the full LP's. Measured on examples/make_large_instance.py's 64 × 64 seeds 0–2:
6 rounds, 1.1–1.5 s, where the LP with every row up front (interior point, then crossover)
took 8 s.

Only plain instances (no side constraints) use either; the cluster layer's forbidden pairs,
caps and coupling keep the picking sequence and get no bound.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import highspy
import numpy as np

from allocator.certificate import TOLERANCE
from allocator.scalable.data import EFM_KIND, PROP_KIND

log = logging.getLogger(__name__)

INF = highspy.kHighsInf
IPM_TOLERANCE = 1e-2  # guidance only: the share LP re-solves exactly afterwards
# A bound below this (total over agents, normalised units) proves nothing: HiGHS's primal and
# dual feasibility tolerances are 1e-7 per row.
PROOF_MARGIN = 1e-5
# An envy row of the bound counts as violated, and is added, when its margin is below this.
ROW_VIOLATED = 1e-9


@dataclass(frozen=True)
class Guidance:
    """The rounded relaxation: seats for the share LP, and the relaxation's own pool shares
    (they tell the share LP which envy rows will bind)."""

    owner: np.ndarray  # owner[g]: the agent index holding indivisible good g
    pools: np.ndarray  # the relaxation's shares of the divisible goods, agents × pools


def goods_by_type(vm: np.ndarray) -> list[np.ndarray]:
    """Goods grouped by identical value columns (in first-appearance order)."""
    groups: dict[bytes, list[int]] = {}
    for g in range(vm.shape[1]):
        groups.setdefault(vm[:, g].tobytes(), []).append(g)
    return [np.array(goods) for goods in groups.values()]


class _Types:
    """The goods grouped into types: seat types first, then pool types."""

    def __init__(self, vm: np.ndarray, vd: np.ndarray) -> None:
        self.seats = goods_by_type(vm)
        self.pools = goods_by_type(vd)
        n = vm.shape[0]
        self.seat_unit = (np.stack([vm[:, t[0]] for t in self.seats], axis=1)
                          if self.seats else np.zeros((n, 0)))  # one good's value
        seat_count = np.array([len(t) for t in self.seats], dtype=float)
        pool_count = np.array([len(t) for t in self.pools], dtype=float)
        pool_unit = (np.stack([vd[:, t[0]] for t in self.pools], axis=1)
                     if self.pools else np.zeros((n, 0)))
        # value[i, t]: agent i's value of all of type t
        self.value = np.hstack([self.seat_unit * seat_count, pool_unit * pool_count])
        self.seat_count = seat_count


class _Lp:
    """min Σ s_i over shares y[j, t] of whole types (each type divided completely) and slacks,
    with rows ``Σ coefficients + s_i ≥ lower`` added in blocks."""

    def __init__(self, value: np.ndarray, positive: np.ndarray) -> None:
        n, k = value.shape
        self.n, self.k = n, k
        self.h = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("threads", 1)
        ncols = n * k + n  # shares y[j, t], then s_i
        upper = np.concatenate([np.ones(n * k), np.where(positive, INF, 0.0)])
        self.h.addVars(ncols, np.zeros(ncols), upper)
        self.h.changeColsCost(ncols, np.arange(ncols, dtype=np.int32),
                              np.concatenate([np.zeros(n * k), np.ones(n)]))
        self.h.addRows(k, np.ones(k), np.ones(k), n * k, (np.arange(k) * n).astype(np.int32),
                       (np.arange(n)[None, :] * k + np.arange(k)[:, None]).ravel()
                       .astype(np.int32), np.ones(n * k))

    def own_rows(self, agents: np.ndarray, coef: np.ndarray, lower: np.ndarray) -> None:
        """coef[a] · y[agents[a]] + s[agents[a]] ≥ lower[a]."""
        n, k = self.n, self.k
        index = np.hstack([agents[:, None] * k + np.arange(k), n * k + agents[:, None]])
        self._rows(index, np.hstack([coef, np.ones((len(agents), 1))]), lower)

    def envy_rows(self, i: np.ndarray, j: np.ndarray, own: np.ndarray, other: np.ndarray,
                  lower: np.ndarray) -> None:
        """own[a] · y[i[a]] − other[a] · y[j[a]] + s[i[a]] ≥ lower[a]."""
        n, k = self.n, self.k
        index = np.hstack([i[:, None] * k + np.arange(k), j[:, None] * k + np.arange(k),
                           n * k + i[:, None]])
        self._rows(index, np.hstack([own, -other, np.ones((len(i), 1))]), lower)

    def _rows(self, index: np.ndarray, value: np.ndarray, lower: np.ndarray) -> None:
        count, width = index.shape
        if not count:
            return
        self.h.addRows(count, lower.astype(np.float64), np.full(count, INF), index.size,
                       (np.arange(count) * width).astype(np.int32),
                       index.ravel().astype(np.int32), value.ravel().astype(np.float64))

    def run(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        # HiGHS's time limit counts its run time since the model was created, over all runs.
        self.h.setOptionValue("time_limit", self.h.getRunTime() + float(remaining))
        self.h.run()
        return True


def _envy_pairs(kind: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j), i ≠ j, with i an EF-type agent of positive total value."""
    n = len(kind)
    ef = np.nonzero((kind != PROP_KIND) & positive)[0]
    i, j = np.meshgrid(ef, np.arange(n), indexing="ij")
    keep = i != j
    return i[keep], j[keep]


def _ratio(kind: np.ndarray, weight: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """w_i/w_j for weighted EF-type rows, 1 for unweighted EFM."""
    return np.where(kind[i] == EFM_KIND, 1.0, weight[i] / weight[j])


def fractional_seats(
    vm: np.ndarray, vd: np.ndarray, weight: np.ndarray, kind: np.ndarray,
    positive: np.ndarray, deadline: float,
) -> Guidance | None:
    """The rounded relaxation, or None if the LP does not finish in time.

    ``vm``/``vd``: normalised values (agents × indivisible, agents × divisible goods);
    ``kind``: PROP_KIND, EF_KIND or EFM_KIND per agent.
    """
    types = _Types(vm, vd)
    value = types.value
    lp = _Lp(value, positive)
    lp.h.setOptionValue("solver", "ipm")
    lp.h.setOptionValue("run_crossover", "off")
    # Presolve finds nothing to remove in these dense rows and only costs time.
    lp.h.setOptionValue("presolve", "off")
    lp.h.setOptionValue("ipm_optimality_tolerance", IPM_TOLERANCE)
    share = weight / weight.sum()
    # PROP-type, exact: V_i(A_i) + s_i ≥ w_i/W (normalised values).
    prop = np.nonzero((kind == PROP_KIND) & positive)[0]
    lp.own_rows(prop, value[prop], share[prop])
    # EF-type, exact: V_i(A_i) − r·V_i(A_j) + s_i ≥ 0 with r = w_i/w_j (1 for EFM).
    i, j = _envy_pairs(kind, positive)
    lp.envy_rows(i, j, value[i], _ratio(kind, weight, i, j)[:, None] * value[i],
                 np.zeros(len(i)))
    if not lp.run(deadline):
        return None
    status = lp.h.getModelStatus()
    solution = lp.h.getSolution()
    # Without crossover HiGHS reports an interior solution as "unknown" status: it is still
    # a (near-)optimal point, which is all the rounding needs.
    if status not in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kUnknown) \
            or not solution.value_valid:
        log.info("fractional relaxation: %s", lp.h.modelStatusToString(status))
        return None
    n, k = value.shape
    col = np.asarray(solution.col_value)
    log.info("fractional relaxation: total violation %.3g", float(col[n * k:].sum()))
    shares = np.clip(col[: n * k].reshape(n, k), 0.0, 1.0)
    ns = len(types.seats)
    owner = _round(shares[:, :ns] * types.seat_count, types.seats, vm.shape[1],
                   types.seat_unit)
    pools = np.zeros(vd.shape)
    for t, members in enumerate(types.pools):
        pools[:, members] = shares[:, ns + t][:, None]
    return Guidance(owner=owner, pools=pools)


def relaxation_bound(
    vm: np.ndarray, vd: np.ndarray, weight: np.ndarray, kind: np.ndarray,
    positive: np.ndarray, deadline: float,
) -> float | None:
    """The least total violation any allocation has at λ_ef = λ_prop = 1, from below (see the
    module docstring); 0 if the relaxation is feasible, None if that was not settled in time.

    A value above PROOF_MARGIN proves that no allocation meets every criterion even relaxed to
    its "up to one good" version (EF1, PROP1, EFM's EF1 branch). If the deadline cuts the row
    rounds short, the last round's optimum is returned when it already proves that much."""
    types = _Types(vm, vd)
    value = types.value
    ns = len(types.seats)
    largest = vm.max(axis=1, initial=0.0)  # M_i: i's largest value of one indivisible good
    lp = _Lp(value, positive)
    share = weight / weight.sum()
    # PROP-type at λ = 1: V_i(A_i) + Mx_i(M∖A_i) ≥ w_i/W with Mx_i ≤ M_i.
    prop = np.nonzero((kind == PROP_KIND) & positive)[0]
    lp.own_rows(prop, value[prop], share[prop] - largest[prop] - TOLERANCE)
    # EF-type at λ = 1: V_i(A_i) ≥ r·(V_i(A_j) − Mx_i(A_j)), with Mx_i(A_j) at most M_i and at
    # most the seat part of V_i(A_j): two rows per pair, added when violated.
    i, j = _envy_pairs(kind, positive)
    r = _ratio(kind, weight, i, j)
    pools_only = value.copy()
    pools_only[:, :ns] = 0.0
    added = np.zeros(len(i), dtype=bool)
    n, k = value.shape
    bound: float | None = None
    while lp.run(deadline):
        status = lp.h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            log.info("relaxation bound: %s", lp.h.modelStatusToString(status))
            break
        bound = max(0.0, float(lp.h.getInfo().objective_function_value))
        col = np.asarray(lp.h.getSolution().col_value)
        y, slack = col[: n * k].reshape(n, k), col[n * k:]
        own = np.einsum("it,it->i", value, y) + slack
        # Margins of both rows of every pair at this solution (views[i, j] = V_i(A_j)).
        views = value @ y.T
        whole = own[i] - r * (views[i, j] - largest[i]) + TOLERANCE
        pools = own[i] - r * (pools_only @ y.T)[i, j] + TOLERANCE
        violated = np.nonzero((np.minimum(whole, pools) < -ROW_VIOLATED) & ~added)[0]
        if not len(violated):
            log.info("relaxation bound: every allocation leaves a total violation ≥ %.3g at "
                     "λ = 1 (%d of %d envy pairs needed)", bound, added.sum(), len(i))
            return bound
        a, b, ra = i[violated], j[violated], r[violated]
        lp.envy_rows(a, b, value[a], ra[:, None] * value[a], -ra * largest[a] - TOLERANCE)
        lp.envy_rows(a, b, value[a], ra[:, None] * pools_only[a],
                     np.full(len(a), -TOLERANCE))
        added[violated] = True
    if bound is not None and bound > PROOF_MARGIN:
        log.info("relaxation bound (rounds cut short): total violation ≥ %.3g", bound)
        return bound
    log.info("relaxation bound: not settled before the deadline")
    return None


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
