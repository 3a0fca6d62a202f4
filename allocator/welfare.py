"""More welfare for an allocation without giving any criterion back: the share LP with seats fixed.

allocator.guarantee builds an allocation that meets every criterion the guarantees table
promises; its divisible shares are whatever the construction poured, not what serves welfare.
With the seats fixed every ``Mx_i(·)`` is a constant, so each inequality of each agent's
criterion (docs/architecture.md §2, at λ = 0) is a linear row in the shares ``x_jd``. The LP
keeps every such row at least at ``min(0, its margin in the given allocation)``: a row that held
still holds, a failing one fails by no more, so every agent's exact slack and least λ are no
worse. The rows of an agent whose criterion fails even at λ = 1 (its least λ is undefined, so
there is none to keep) instead share one shortfall variable ``s_i ∈ [0, −slack_i]``: its slack
is no worse, and a first stage minimises ``Σ s_i``, then once more reweighted by
``1/(s_i + REWEIGHT)`` so that the shortfall falls on as few agents as possible (iteratively
reweighted ℓ1, Candès, Wakin and Boyd 2008), and bounds each ``s_i`` by what it reached; an
agent whose ``s_i`` reaches 0 now meets its criterion exactly. Then the LP maximises the
objective (utilitarian Σ; egalitarian max-min, then Σ at that level; Nash through the tangent
cuts at ``NASH_POINTS``).

EFM's rows depend on whether the other agent holds a divisible share: an agent with no share
in the given allocation keeps none (its rows stay "up to one good"), an agent with one is
compared exactly (if the LP leaves it without a share the checker's rule is only weaker).

EF-type rows are O(n²) and are added lazily, the most violated ``ROWS_PER_AGENT`` per agent
each round, until none is violated. HiGHS (highspy), dual simplex warm from the last basis; the
whole LP stops at the deadline, and then the given allocation stands. The result is checked by
the one checker before ``divide`` takes it.
"""

from __future__ import annotations

import logging
import math
import time

import highspy
import numpy as np

from allocator.arrays import value_matrices
from allocator.certificate import TOLERANCE, ZERO_SHARE
from allocator.criteria import PROP_TYPE, base_factor
from allocator.instance import Allocation, Instance
from allocator.objectives import NASH_FLOOR, NASH_POINTS, Objective

log = logging.getLogger(__name__)

INF = highspy.kHighsInf
ROWS_PER_AGENT = 16  # violated envy rows added per agent and round
# Most share variables (agents × divisible goods) tried: measured on the benchmark's instances
# (2-core VM) 64 × 64 takes 0.3–0.5 s, 128 × 128 about 13 s, 512 × 512 does not finish in 20 s.
MAX_SHARES = 128 * 128
VIOLATED = 1e-9  # a row counts as violated below its bound by more than this (normalised)
PAD = 1e-10  # the egalitarian level kept by the second stage, less this
REWEIGHT = 1e-3  # the first stage's second round weighs s_i by 1/(s_i + this)
SHORT_PAD = 1e-9  # each s_i may exceed what the first stage reached by this


class _Rows:
    """The instance, the fixed seats and every criterion's rows, in normalised values."""

    def __init__(self, instance: Instance, allocation: Allocation) -> None:
        agents = [a.name for a in instance.agents]
        index = {a: k for k, a in enumerate(agents)}
        n, nd = len(agents), len(instance.divisible)
        vm, vd = value_matrices(instance)
        total = vm.sum(axis=1) + vd.sum(axis=1)
        self.positive = total > 0
        scale = np.where(self.positive, total, 1.0)
        vm, self.vd = vm / scale[:, None], vd / scale[:, None]
        owner = np.array([index[str(allocation.indivisible[g])] for g in instance.indivisible],
                         dtype=np.int64)
        held = np.zeros((len(owner), n))
        held[np.arange(len(owner)), owner] = 1.0
        self.seats = vm @ held  # seats[i, j] = V_i(seats of j)/T_i
        self.max_in = np.zeros((n, n))
        self.max_out = np.zeros(n)
        for j in range(n):
            mine = owner == j
            if mine.any():
                self.max_in[:, j] = vm[:, mine].max(axis=1)
            if (~mine).any():
                self.max_out[j] = vm[j, ~mine].max()
        self.x0 = np.zeros((n, nd))
        for d, good in enumerate(instance.divisible):
            for holder, x in allocation.divisible[good].items():
                self.x0[index[holder], d] = x
        alpha = np.where(self.positive, vm.sum(axis=1), 0.0)
        weight = np.array([a.weight for a in instance.agents])
        self.prop = np.array([a.criterion in PROP_TYPE for a in instance.agents]) & self.positive
        self.efm: np.ndarray = np.array([a.criterion == "efm" for a in instance.agents]) & (
            self.positive)
        self.ef = ~self.prop & self.positive
        base = np.array([base_factor(a.criterion, float(alpha[k]))
                         for k, a in enumerate(instance.agents)])
        self.share = weight / weight.sum()
        self.base = base
        # ratio[i, j]: the factor of V_i(A_j) in i's envy row (w_i/w_j; 1 for EFM)
        self.ratio = np.where(self.efm[:, None], 1.0, weight[:, None] / weight[None, :])
        # An agent without a divisible share keeps none when an EFM agent compares with it.
        self.frozen: np.ndarray = np.asarray((self.x0 <= ZERO_SHARE).all(axis=1)) & bool(
            self.efm.any())
        # Envy rows: margin = own_i − ratio·(V_i(A_j) − allowance) with allowance base·Mx for
        # weighted EF-type rows, Mx towards a frozen agent and 0 otherwise for EFM.
        self.allowance = np.where(self.efm[:, None], np.where(self.frozen[None, :],
                                                              self.max_in, 0.0),
                                  base[:, None] * self.max_in)
        np.fill_diagonal(self.allowance, 0.0)
        self.envy_floor = np.minimum(0.0, self.envy_margins(self.x0))
        self.prop_floor = np.minimum(0.0, self.prop_margins(self.x0))
        # Agents whose criterion fails even at λ = 1: their rows share one shortfall variable
        # s_i ∈ [0, −slack_i] (module docstring) instead of each keeping its own margin.
        view = self.seats + self.vd @ self.x0.T
        one = np.diag(view)[:, None] - self.ratio * (view - self.max_in)
        one = np.where(self.ef[:, None] & ~np.eye(n, dtype=bool), one, np.inf)
        prop_one = np.where(self.prop, np.diag(view) + self.max_out - self.share, np.inf)
        slack = np.minimum(self.envy_margins(self.x0).min(axis=1, initial=np.inf),
                           self.prop_margins(self.x0))
        self.relaxed: np.ndarray = np.asarray(
            np.minimum(one.min(axis=1, initial=np.inf), prop_one) < -TOLERANCE)
        self.deficit = np.where(self.relaxed, -slack, 0.0)

    def envy_margins(self, x: np.ndarray) -> np.ndarray:
        """margin[i, j] of i's envy row towards j at shares x (+inf where there is none)."""
        view = self.seats + self.vd @ x.T
        own = np.diag(view)[:, None]
        out = own - self.ratio * (view - self.allowance)
        out[~self.ef, :] = np.inf
        np.fill_diagonal(out, np.inf)
        return out

    def prop_margins(self, x: np.ndarray) -> np.ndarray:
        own = np.diag(self.seats) + (self.vd * x).sum(axis=1)
        out = own + self.base * self.max_out - self.share
        return np.where(self.prop, out, np.inf)


def improve_shares(
    instance: Instance, allocation: Allocation, objective: Objective, deadline: float
) -> Allocation | None:
    """The allocation with its divisible shares re-divided for the objective, every criterion
    row kept (module docstring); None when the LP does not finish before the deadline, the
    instance has no divisible goods, or more than MAX_SHARES share variables. ``instance`` is
    plain, canonical and validated."""
    if (not instance.divisible or instance.requires or instance.optional
            or len(instance.agents) * len(instance.divisible) > MAX_SHARES):
        return None
    rows = _Rows(instance, allocation)
    try:
        x = _Lp(rows, objective, deadline).solve()
    except TimeoutError:
        log.info("welfare LP: deadline reached; the given shares stand")
        return None
    divisible: dict[str, dict[str, float]] = {}
    agents = [a.name for a in instance.agents]
    for d, good in enumerate(instance.divisible):
        column = np.clip(x[:, d], 0.0, 1.0)
        column[column <= ZERO_SHARE] = 0.0
        column /= column.sum()
        divisible[good] = {agents[j]: float(v) for j, v in enumerate(column) if v > 0}
    return Allocation(indivisible=dict(allocation.indivisible), divisible=divisible)


class _Lp:
    def __init__(self, rows: _Rows, objective: Objective, deadline: float) -> None:
        self.rows, self.objective, self.deadline = rows, objective, deadline
        n, nd = rows.x0.shape
        self.n, self.nd = n, nd
        h = self.h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        upper = np.where(rows.frozen[:, None], 0.0, 1.0) * np.ones((n, nd))
        h.addVars(n * nd, np.zeros(n * nd), upper.ravel())
        # The shortfall variables s_i of the agents failing even at λ = 1, after the shares.
        relaxed = np.nonzero(rows.relaxed)[0]
        self.short = np.full(n, -1, dtype=np.int64)
        self.short[relaxed] = n * nd + np.arange(len(relaxed))
        if len(relaxed):
            h.addVars(len(relaxed), np.zeros(len(relaxed)), rows.deficit[relaxed])
        # Completeness: Σ_j x_jd = 1.
        h.addRows(nd, np.ones(nd), np.ones(nd), n * nd,
                  (np.arange(nd) * n).astype(np.int32),
                  (np.arange(n)[None, :] * nd + np.arange(nd)[:, None]).ravel().astype(np.int32),
                  np.ones(n * nd))
        prop = np.nonzero(rows.prop)[0]
        own_seats = np.diag(rows.seats)
        self._add([self._with_short(i, self._x(i)) for i in prop],
                  [self._with_short(i, rows.vd[i], 1.0) for i in prop],
                  (rows.share - rows.base * rows.max_out - own_seats
                   + np.where(rows.relaxed, 0.0, rows.prop_floor))[prop])
        self.pairs: set[tuple[int, int]] = set()
        self.positive = np.nonzero(rows.positive)[0]
        self.aux = n * nd + len(relaxed)

    def _x(self, j: int | np.integer) -> np.ndarray:
        return np.arange(int(j) * self.nd, (int(j) + 1) * self.nd)

    def _with_short(self, i: int | np.integer, row: np.ndarray,
                    coefficient: float | None = None) -> np.ndarray:
        """A row of agent i's (its columns, or with ``coefficient`` its values) with i's
        shortfall variable appended, if i has one."""
        if self.short[i] < 0:
            return row
        return np.append(row, self.short[i] if coefficient is None else coefficient)

    def _floor(self, col: np.ndarray) -> np.ndarray:
        """Each envy row's lower bound on its margin at the LP's solution ``col``: its own
        floor, or −s_i for an agent with a shortfall variable."""
        short = np.where(self.short >= 0, col[np.maximum(self.short, 0)], 0.0)
        return np.where(self.rows.relaxed[:, None], -short[:, None], self.rows.envy_floor)

    def _add(self, index: list[np.ndarray], value: list[np.ndarray], lower: np.ndarray,
             upper: np.ndarray | None = None) -> None:
        if not index:
            return
        starts = np.cumsum([0] + [len(ix) for ix in index[:-1]]).astype(np.int32)
        count = len(index)
        self.h.addRows(count, lower.astype(np.float64),
                       np.full(count, INF) if upper is None else upper.astype(np.float64),
                       int(sum(len(ix) for ix in index)), starts,
                       np.concatenate(index).astype(np.int32),
                       np.concatenate(value).astype(np.float64))

    def _envy(self, pairs: list[tuple[int, int]]) -> None:
        rows = self.rows
        index, value, lower = [], [], []
        for i, j in pairs:
            r = rows.ratio[i, j]
            index.append(self._with_short(i, np.concatenate([self._x(i), self._x(j)])))
            value.append(self._with_short(i, np.concatenate([rows.vd[i], -r * rows.vd[i]]), 1.0))
            lower.append(r * (rows.seats[i, j] - rows.allowance[i, j]) - rows.seats[i, i]
                         + (0.0 if rows.relaxed[i] else rows.envy_floor[i, j]))
        self._add(index, value, np.array(lower))
        self.pairs.update(pairs)

    def _run(self) -> np.ndarray:
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.h.setOptionValue("time_limit", self.h.getRunTime() + remaining)
            self.h.run()
            status = self.h.getModelStatus()
            if status != highspy.HighsModelStatus.kOptimal:
                raise TimeoutError
            col = np.asarray(self.h.getSolution().col_value)
            x = col[: self.n * self.nd].reshape(self.n, self.nd)
            margins = self.rows.envy_margins(x)
            bad = margins < self._floor(col) - VIOLATED
            if not bad.any():
                return col
            new: list[tuple[int, int]] = []
            margins = np.where(bad, margins, np.inf)
            for i in np.nonzero(bad.any(axis=1))[0]:
                worst = np.argsort(margins[i])[:ROWS_PER_AGENT]
                new.extend((int(i), int(j)) for j in worst if bad[i, j]
                           and (int(i), int(j)) not in self.pairs)
            if not new:
                return col
            self._envy(new)

    def _costs(self, cost: np.ndarray) -> None:
        ncols = self.h.getNumCol()
        full = np.zeros(ncols)
        full[: len(cost)] = cost
        self.h.changeColsCost(ncols, np.arange(ncols, dtype=np.int32), full)

    def _repair(self) -> None:
        """The first stage: the least total shortfall of the agents failing at λ = 1, once
        reweighted by 1/(s_i + REWEIGHT) so that it falls on as few agents as possible; each
        s_i is then bounded by what it reached."""
        columns = self.short[self.short >= 0]
        if not len(columns):
            return
        self.h.changeObjectiveSense(highspy.ObjSense.kMinimize)
        weights = np.ones(len(columns))
        for _ in range(2):
            cost = np.zeros(self.n * self.nd + len(columns))
            cost[columns] = weights
            self._costs(cost)
            reached = self._run()[columns]
            weights = 1.0 / (reached + REWEIGHT)
        self.h.changeColsBounds(len(columns), columns.astype(np.int32), np.zeros(len(columns)),
                                np.minimum(self.rows.deficit[self.rows.relaxed],
                                           reached + SHORT_PAD))

    def solve(self) -> np.ndarray:
        rows, n, nd, h = self.rows, self.n, self.nd, self.h
        own_seats = np.diag(rows.seats)
        util = np.where(rows.positive[:, None], rows.vd, 0.0).ravel()
        self._repair()
        h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        pos = self.positive
        if self.objective == "egalitarian" and len(pos):
            h.addVar(0.0, 1.0)
            self._add([np.concatenate([self._x(i), [self.aux]]) for i in pos],
                      [np.concatenate([rows.vd[i], [-1.0]]) for i in pos], -own_seats[pos])
            cost = np.zeros(self.aux + 1)
            cost[self.aux] = 1.0
            self._costs(cost)
            level = float(self._run()[self.aux])
            h.changeColBounds(self.aux, max(0.0, level - PAD), 1.0)
        elif self.objective == "nash" and len(pos):
            count = len(pos)
            h.addVars(count, np.full(count, NASH_FLOOR), np.zeros(count))
            for a in NASH_POINTS:
                # L_i ≤ log a + (v_i − a)/a with v_i = seats + vd·x_i
                self._add([np.concatenate([self._x(i), [self.aux + k]])
                           for k, i in enumerate(pos)],
                          [np.concatenate([-rows.vd[i] / a, [1.0]]) for i in pos],
                          np.full(count, -INF), math.log(a) - 1.0 + own_seats[pos] / a)
            cost = np.zeros(self.aux + count)
            cost[self.aux:] = 1.0
            self._costs(cost)
            return self._run()[: n * nd].reshape(n, nd)
        self._costs(util)
        return self._run()[: n * nd].reshape(n, nd)
