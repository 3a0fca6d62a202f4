"""The scalable path of ``divide``: seats fixed first, divisible goods by one LP.

The exact MILP (allocator.milp) decides every indivisible good and every share at once; past a
few agents and kinds of goods it no longer finishes in seconds. This path splits the decision:

1. **Indivisible goods.** On plain instances, the rounded fractional relaxation of
   allocator.fractional (every good divisible, every criterion exact). With side constraints
   (the cluster layer's forbidden pairs, caps, coupled pools) or a churn bound, the weighted
   picking sequence of Chakraborty, Igarashi, Suksompong and Zick ("Weighted Envy-Freeness in
   Indivisible Item Allocation", TEAC 2021) — next picker argmin (picks_i + 1)/w_i, each taking
   its most valued remaining good it may hold; round robin (EF1 on the seats) with equal
   weights, WEF1 otherwise — with previous holders keeping their goods under a churn bound.
2. **Divisible goods** are divided by one LP (HiGHS through highspy, matrices built with numpy).
   Once the indivisible goods are fixed every ``Mx_i(·)`` is a constant, so every criterion of
   DESIGN §2 is a linear row in the shares ``x_jd``, the relaxation λ and a non-negative
   per-agent slack ``s_i`` (the amount, as a fraction of ``T_i``, by which the agent's criterion
   would fail). The LP is solved lexicographically: minimise Σ s_i; then, with the slacks kept,
   minimise 1000·λ_prop + λ_ef (PROP-type agents are relaxed only where EF1 is not enough, as
   in the MILP's λ search); then, with both kept, maximise the objective. EF-type rows are
   O(n²) and are added lazily: all currently violated pairs per round, until none is violated
   (each stage's final solution satisfies every row, so the next stage is always feasible).
3. **Local search**: while some slack remains and time is left, the most violated agent takes
   the seat it values most from the bundle it envies most; a move is kept when it lowers Σ s.
   One HiGHS model serves all moves (a move only changes constants), each re-solved from the
   best assignment's basis.
4. **EFM** (Bei, Li, Liu, Liu and Lu, AIJ 2021) distinguishes bundles with and without a
   divisible share. If EFM agents still fail, a set Z of agents who get no divisible good
   (shares fixed at 0, the weaker "up to one good" rows towards them) grows one agent at a
   time — the one towards whom the worst EFM agent's exact row fails where "up to one good"
   would hold — while that lowers Σ s.

Nothing here is a guarantee: the certificate says what holds (docs/fairness.md). PuLP is not
imported, so this path starts fast.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import highspy
import numpy as np

from allocator import constructive
from allocator.certificate import (
    EF_TYPE,
    NASH_FLOOR,
    NASH_POINTS,
    PROP_TYPE,
    ZERO_SHARE,
    base_factor,
)
from allocator.constructive import picking_allocation
from allocator.errors import SolverError
from allocator.fractional import EF_KIND, EFM_KIND, PROP_KIND, fractional_seats
from allocator.instance import Allocation, Instance
from allocator.snapshot import Objective

log = logging.getLogger(__name__)

INF = highspy.kHighsInf
# A row counts as violated when its margin is below this (normalised units); far below the
# checker's tolerance (1e-6), so what the LP accepts the checker accepts.
VIOLATED = 1e-8
# Slack added to a stage's optimum before it becomes the next stage's bound; the retry's is
# still far below the checker's tolerance (1e-6).
STAGE_EPSILON = 1e-9
PAD_RETRY = 1e-7
# Weight of λ_prop against λ_ef in the second stage: EF-type agents are relaxed first.
PROP_RELAXATION_WEIGHT = 1000.0
EFM_ROUNDS = 6  # growth steps of the set Z of agents without divisible goods
LOCAL_SEARCH_MOVES = 400  # most seat moves evaluated by the local search

# Most of the time left that the fractional relaxation may take; if it runs out, the picking
# sequence still has time for its share LP.
FRACTIONAL_SHARE = 0.6
DUAL_SIMPLEX, PRIMAL_SIMPLEX = 1, 4  # HiGHS's simplex_strategy values


@dataclass(frozen=True)
class Outcome:
    """The best allocation of this path and the numbers its LP proved for it."""

    allocation: Allocation
    violation: float  # Σ s_i: total slack the criteria still lack (0: every criterion holds)
    lambda_ef: float
    lambda_prop: float
    objective: float  # the LP's objective value in normalised units (its welfare stage)
    moves: int  # seat moves the local search kept
    start: str  # where the seats came from: "fractional" or "picking"


class _Data:
    """The instance as dense numpy arrays in canonical (sorted) order."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.agents = [a.name for a in instance.agents]
        self.index = {a: k for k, a in enumerate(self.agents)}
        self.goods = list(instance.indivisible)
        self.good_index = {g: k for k, g in enumerate(self.goods)}
        self.pools = list(instance.divisible)
        n, m, d = len(self.agents), len(self.goods), len(self.pools)
        raw_m = np.zeros((n, m))
        raw_d = np.zeros((n, d))
        pool_index = {p: k for k, p in enumerate(self.pools)}
        for i, name in enumerate(self.agents):
            for good, v in instance.values.get(name, {}).items():
                if good in self.good_index:
                    raw_m[i, self.good_index[good]] = v
                else:
                    raw_d[i, pool_index[good]] = v
        self.total = raw_m.sum(axis=1) + raw_d.sum(axis=1)
        self.positive = self.total > 0
        safe = np.where(self.positive, self.total, 1.0)
        self.vm = raw_m / safe[:, None]  # normalised values of indivisible goods
        self.vd = raw_d / safe[:, None]  # normalised values of divisible goods
        alpha = np.where(self.positive, self.vm.sum(axis=1), 0.0)
        self.weight = np.array([a.weight for a in instance.agents])
        self.share = self.weight / self.weight.sum()
        self.kind = np.array([
            PROP_KIND if a.criterion in PROP_TYPE
            else EFM_KIND if a.criterion == "efm" else EF_KIND
            for a in instance.agents
        ])
        self.base = np.array([
            base_factor(a.criterion, float(alpha[k])) for k, a in enumerate(instance.agents)
        ])
        self.optional_pool = np.array([p in instance.optional for p in self.pools], dtype=bool)
        # requires[d]: indices of the indivisible goods a share of pool d needs (None: none)
        self.requires = [
            [self.good_index[g] for g in instance.requires[p]] if p in instance.requires else None
            for p in self.pools
        ]
        assert all(a.criterion in EF_TYPE or a.criterion in PROP_TYPE for a in instance.agents)


class _Seats:
    """Constants of one indivisible assignment: S[i,j] = V_i(seats of j)/T_i, Mx, Mx_out."""

    def __init__(self, data: _Data, owner: np.ndarray) -> None:
        n = len(data.agents)
        self.owner = owner
        held = np.zeros((len(data.goods), n))
        given = owner >= 0
        held[np.nonzero(given)[0], owner[given]] = 1.0
        self.value = data.vm @ held  # S[i, j]
        self.max_in = np.zeros((n, n))
        self.max_out = np.zeros(n)
        for j in range(n):
            mine = owner == j
            if mine.any():
                self.max_in[:, j] = data.vm[:, mine].max(axis=1)
            if (~mine).any():
                self.max_out[j] = data.vm[j, ~mine].max()
        # share_ok[j, d]: j may take a share of pool d (it holds one of the required goods)
        self.share_ok = np.ones((n, len(data.pools)), dtype=bool)
        for d, needed in enumerate(data.requires):
            if needed is not None:
                self.share_ok[:, d] = False
                holders = owner[needed]
                self.share_ok[holders[holders >= 0], d] = True


class _ShareLp:
    """The LP over divisible shares (see the module docstring), kept across seat moves.

    One HiGHS model lives through the whole search: a seat move or a change of the set Z only
    changes constants — row bounds, the λ coefficients, the share columns' bounds — so each
    re-solve starts from the previous basis instead of from scratch. Every row lists all the
    columns it may ever use (an EFM row towards j lists j's shares even while j ∈ Z, where
    those are fixed at 0), so updates never change a row's sparsity.
    """

    def __init__(self, data: _Data, objective: Objective, deadline: float) -> None:
        self.data, self.objective, self.deadline = data, objective, deadline
        n, nd = len(data.agents), len(data.pools)
        self.n, self.nd = n, nd
        self.col_s = n * nd  # s_i columns follow the x_jd columns
        self.col_lef = self.col_s + n
        self.col_lprop = self.col_lef + 1
        self.col_aux = self.col_lprop + 1  # egalitarian t, or the Nash log variables
        self.h = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("threads", 1)
        self.h.setOptionValue("presolve", "off")
        ncols = self.col_aux
        self.h.addVars(ncols, np.zeros(ncols), np.ones(ncols))
        self.positive = np.nonzero(data.positive)[0]
        self.pairs: dict[tuple[int, int], int] = {}  # envy pair -> its row
        self.seats: _Seats | None = None
        self.without = np.zeros(n, dtype=bool)
        self.stage_one = np.zeros(0)  # the last stage-1 solution
        self._completeness()
        self.prop_agents = np.nonzero((data.kind == PROP_KIND) & data.positive)[0]
        self.prop_first = self.h.getNumRow()
        self._add_rows(
            [self._cols(i, self.col_lprop) for i in self.prop_agents],
            [np.concatenate([data.vd[i], [1.0, 0.0]]) for i in self.prop_agents],
        )
        self.own_first = self.h.getNumRow()
        self._objective_rows()

    # --- building --------------------------------------------------------------------------

    def _x(self, j: int) -> np.ndarray:
        return np.arange(j * self.nd, (j + 1) * self.nd)

    def _cols(self, i: int | np.integer, *extra: int) -> np.ndarray:
        """i's shares, its slack s_i, then the extra columns."""
        return np.concatenate([self._x(int(i)), [self.col_s + int(i), *extra]])

    def _add_rows(self, index: list[np.ndarray], value: list[np.ndarray]) -> None:
        """Rows with the given entries and placeholder bounds (set by ``_bounds``)."""
        if not index:
            return
        # New rows leave the basis dual feasible: dual simplex re-solves from it.
        self.h.setOptionValue("simplex_strategy", DUAL_SIMPLEX)
        starts = np.cumsum([0] + [len(ix) for ix in index[:-1]]).astype(np.int32)
        idx = np.concatenate(index).astype(np.int32)
        val = np.concatenate(value).astype(np.float64)
        count = len(index)
        self.h.addRows(count, np.full(count, -INF), np.full(count, INF), len(idx), starts,
                       idx, val)

    def _completeness(self) -> None:
        # Every divisible good is divided completely (at most completely if optional).
        data = self.data
        self.h.addRows(
            self.nd, np.where(data.optional_pool, 0.0, 1.0), np.ones(self.nd),
            self.n * self.nd,
            (np.arange(self.nd) * self.n).astype(np.int32),
            (np.arange(self.n)[None, :] * self.nd + np.arange(self.nd)[:, None])
            .ravel().astype(np.int32),
            np.ones(self.n * self.nd),
        )

    def _objective_rows(self) -> None:
        """Rows linking each positive agent's own value to the objective's auxiliary columns:
        egalitarian ``t ≤ V_i(A_i)/T_i``; Nash tangent cuts ``L_i ≤ log a + (v − a)/a``."""
        data, h = self.data, self.h
        if self.objective == "egalitarian":
            h.addVar(0.0, 1.0)
            self._add_rows(
                [self._cols(i, self.col_aux) for i in self.positive],
                [np.concatenate([data.vd[i], [0.0, -1.0]]) for i in self.positive],
            )
        elif self.objective == "nash":
            count = len(self.positive)
            h.addVars(count, np.full(count, NASH_FLOOR), np.zeros(count))
            for a in NASH_POINTS:
                self._add_rows(
                    [self._cols(i, self.col_aux + k) for k, i in enumerate(self.positive)],
                    [np.concatenate([-data.vd[i] / a, [0.0, 1.0]]) for i in self.positive],
                )

    def _envy_rows(self, pairs: list[tuple[int, int]]) -> None:
        # EF-type rows, pair (i, j): i's shares, j's shares, s_i and λ_ef; the constants are
        # set by _bounds. Weighted EF-type criteria compare V_i(A_i)/w_i with V_i(A_j)/w_j
        # (times w_i); EFM compares unweighted.
        data = self.data
        index, value = [], []
        for i, j in pairs:
            r = 1.0 if data.kind[i] == EFM_KIND else data.weight[i] / data.weight[j]
            index.append(np.concatenate([self._x(i), self._x(j), [self.col_s + i,
                                                                 self.col_lef]]))
            value.append(np.concatenate([data.vd[i], -r * data.vd[i], [1.0, 0.0]]))
        first = self.h.getNumRow()
        self._add_rows(index, value)
        for k, pair in enumerate(pairs):
            self.pairs[pair] = first + k
        self._envy_constants(pairs)

    # --- constants of one seat assignment ------------------------------------------------------

    def _envy_constants(self, pairs: list[tuple[int, int]]) -> None:
        """Lower bounds and λ_ef coefficients of the given envy rows under the current seats."""
        if not pairs:
            return
        data, seats = self.data, self.seats
        assert seats is not None
        i = np.array([p[0] for p in pairs])
        j = np.array([p[1] for p in pairs])
        own, theirs, mx = seats.value[i, i], seats.value[i, j], seats.max_in[i, j]
        r = data.weight[i] / data.weight[j]
        base = data.base[i]
        efm = data.kind[i] == EFM_KIND
        weak = efm & self.without[j]
        # EFM towards j ∈ Z: V_i(A_i) ≥ V_i(A_j) − Mx_i(A_j); towards j ∉ Z: exact, relaxed by
        # λ·Mx_i(A_j). Weighted: V_i(A_i) ≥ r·(V_i(A_j) − f_i·Mx_i(A_j)), f_i = base + λ(1−base).
        lower = np.where(efm, theirs - own - np.where(weak, mx, 0.0),
                         r * theirs - r * base * mx - own)
        slope = np.where(efm, np.where(weak, 0.0, mx), (1 - base) * r * mx)
        rows = np.array([self.pairs[p] for p in pairs], dtype=np.int32)
        self._row_bounds(len(rows), rows, lower, np.full(len(rows), INF))
        for row, coef in zip(rows, slope, strict=True):
            self.h.changeCoeff(int(row), self.col_lef, float(coef))

    def assign(self, seats: _Seats, without: np.ndarray) -> None:
        """Switch the model to another seat assignment and set Z (agents without shares)."""
        data = self.data
        self.seats, self.without = seats, without.copy()
        upper = np.where(seats.share_ok & ~without[:, None], 1.0, 0.0).ravel()
        cols = np.arange(self.col_s, dtype=np.int32)
        self.h.changeColsBounds(len(cols), cols, np.zeros(len(cols)), upper)
        own = np.diag(seats.value)
        # PROP-type: V_i(A_i) + f_i·Mx_i(M∖A_i) + s_i ≥ (w_i/W)·T_i, normalised by T_i.
        p = self.prop_agents
        if len(p):
            out = seats.max_out[p]
            rows = (self.prop_first + np.arange(len(p))).astype(np.int32)
            self._row_bounds(len(rows), rows,
                                    data.share[p] - own[p] - data.base[p] * out,
                                    np.full(len(rows), INF))
            for row, coef in zip(rows, (1 - data.base[p]) * out, strict=True):
                self.h.changeCoeff(int(row), self.col_lprop, float(coef))
        pos = self.positive
        if self.objective == "egalitarian":
            rows = (self.own_first + np.arange(len(pos))).astype(np.int32)
            self._row_bounds(len(rows), rows, -own[pos], np.full(len(rows), INF))
        elif self.objective == "nash":
            for k, a in enumerate(NASH_POINTS):
                rows = (self.own_first + k * len(pos) + np.arange(len(pos))).astype(np.int32)
                self._row_bounds(len(rows), rows, np.full(len(rows), -INF),
                                        math.log(a) - 1.0 + own[pos] / a)
        self._envy_constants(sorted(self.pairs))

    # --- solving -------------------------------------------------------------------------------

    def margins(self, x: np.ndarray, s: np.ndarray, lam_ef: float) -> np.ndarray:
        """margin[i, j] of every EF-type row at (x, s, λ_ef); +inf where there is no row."""
        data, seats = self.data, self.seats
        assert seats is not None
        view = seats.value + data.vd @ x.T  # V_i(A_j)/T_i
        own = np.diag(view)[:, None]
        r = data.weight[:, None] / data.weight[None, :]
        base = data.base[:, None]
        mx = seats.max_in
        weighted = own - r * (view - base * mx) + lam_ef * (1 - base) * r * mx
        efm = np.where(self.without[None, :], own - view + mx, own - view + lam_ef * mx)
        out = np.where((data.kind == EFM_KIND)[:, None], efm, weighted) + s[:, None]
        rows = (data.kind != PROP_KIND) & data.positive
        out[~rows, :] = np.inf
        np.fill_diagonal(out, np.inf)
        return out

    def _run(self) -> np.ndarray:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise SolverError("highs: time limit reached in the share LP")
        # HiGHS's time limit counts its run time since the model was created.
        self.h.setOptionValue("time_limit", self.h.getRunTime() + float(remaining))
        self.h.run()
        status = self.h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            raise SolverError(f"highs: share LP ended {self.h.modelStatusToString(status)}")
        return np.asarray(self.h.getSolution().col_value)

    def _stage(self) -> np.ndarray:
        """Solve the current stage, adding violated envy rows until none is violated."""
        while True:
            col = self._run()
            x = col[: self.col_s].reshape(self.n, self.nd)
            s = col[self.col_s : self.col_lef]
            bad = self.margins(x, s, float(col[self.col_lef])) < -VIOLATED
            new = [(int(i), int(j)) for i, j in zip(*np.nonzero(bad), strict=True)
                   if (i, j) not in self.pairs]
            if not new:
                return col
            self._envy_rows(new)

    def _costs(self, cost: dict[int, float] | np.ndarray) -> None:
        # New costs leave the basis primal feasible: primal simplex re-solves from it (about
        # three times faster than dual at 64 agents × 64 pools).
        self.h.setOptionValue("simplex_strategy", PRIMAL_SIMPLEX)
        ncols = self.h.getNumCol()
        full = np.zeros(ncols)
        if isinstance(cost, dict):
            for c, v in cost.items():
                full[c] = v
        else:
            full[: len(cost)] = cost
        self.h.changeColsCost(ncols, np.arange(ncols, dtype=np.int32), full)

    def _row_bounds(
        self, count: int, rows: np.ndarray, lower: np.ndarray, upper: np.ndarray
    ) -> None:
        # changeRowsBounds exists in highspy but is missing from its type stubs.
        self.h.changeRowsBounds(count, rows, lower, upper)  # type: ignore[attr-defined]

    def _bound(self, cols: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        self.h.changeColsBounds(len(cols), cols.astype(np.int32), lower.astype(np.float64),
                                upper.astype(np.float64))

    def violation(self, basis: highspy.HighsBasis | None) -> tuple[float, highspy.HighsBasis]:
        """Stage 1: the least total violation Σ s_i, λ free; returns it with the basis.

        ``basis``: a stage-1 basis of a nearby assignment. Only bounds differ from its model,
        so it stays dual feasible and dual simplex re-solves in a few pivots (rows added since
        it was taken enter as basic)."""
        n, data = self.n, self.data
        s_cols = np.arange(self.col_s, self.col_lef)
        self._bound(s_cols, np.zeros(n), np.where(data.positive, INF, 0.0))
        self._bound(np.array([self.col_lef, self.col_lprop]), np.zeros(2), np.ones(2))
        if self.objective == "egalitarian":
            self.h.changeColBounds(self.col_aux, 0.0, 1.0)
        self._costs({int(c): 1.0 for c in s_cols})
        if basis is not None:
            missing = self.h.getNumRow() - len(basis.row_status)
            basis.row_status = [*basis.row_status, *[highspy.HighsBasisStatus.kBasic] * missing]
            self.h.setBasis(basis)
            self.h.setOptionValue("simplex_strategy", DUAL_SIMPLEX)
        col = self._stage()
        self.stage_one = col
        return float(col[s_cols].sum()), self.h.getBasis()

    def finish(self) -> tuple[np.ndarray, np.ndarray, float, float, float]:
        """Stages 2 and 3 after ``violation``: (x, s, λ_ef, λ_prop, objective).

        Each stage keeps the previous stage's optimum as a bound, padded by STAGE_EPSILON; if
        HiGHS finds that too tight (its tolerances against ours), once more with PAD_RETRY."""
        for pad in (STAGE_EPSILON, PAD_RETRY):
            try:
                return self._finish(pad)
            except SolverError as exc:
                if time.monotonic() >= self.deadline:
                    raise
                log.info("share LP stage failed (%s); padding the kept optimum by %g", exc,
                         PAD_RETRY)
        raise SolverError("highs: the share LP's later stages failed")

    def _finish(self, pad: float) -> tuple[np.ndarray, np.ndarray, float, float, float]:
        n, nd, data = self.n, self.nd, self.data
        col = self.stage_one
        s_cols = np.arange(self.col_s, self.col_lef)
        lam_cols = np.array([self.col_lef, self.col_lprop])
        self._bound(lam_cols, np.zeros(2), np.ones(2))
        if self.objective == "egalitarian":
            self.h.changeColBounds(self.col_aux, 0.0, 1.0)
        self._bound(s_cols, np.zeros(n), np.where(data.positive, col[s_cols] + pad, 0.0))
        # Stage 2: the smallest relaxation keeping those slacks.
        self._costs({self.col_lef: 1.0, self.col_lprop: PROP_RELAXATION_WEIGHT})
        col = self._stage()
        lam = np.minimum(1.0, col[lam_cols] + pad)
        self._bound(lam_cols, np.zeros(2), lam)
        # Stage 3: the objective among those allocations.
        col, value = self._welfare()
        x = col[: n * nd].reshape(n, nd)
        s = col[self.col_s : self.col_lef]
        return x, s, float(col[self.col_lef]), float(col[self.col_lprop]), value

    def _welfare(self) -> tuple[np.ndarray, float]:
        data, seats = self.data, self.seats
        assert seats is not None
        own_seats = float(np.diag(seats.value)[data.positive].sum())
        util = np.where(data.positive[:, None], data.vd, 0.0).ravel()
        if self.objective == "egalitarian":
            # max t with t ≤ V_i(A_i)/T_i; then, at that level, the most utilitarian.
            self._costs({self.col_aux: -1.0})
            level = float(self._stage()[self.col_aux])
            self.h.changeColBounds(self.col_aux, max(0.0, level - PAD_RETRY), 1.0)
            self._costs(-util)
            return self._stage(), level
        if self.objective == "nash":
            count = len(self.positive)
            self._costs({self.col_aux + k: -1.0 for k in range(count)})
            col = self._stage()
            return col, float(col[self.col_aux : self.col_aux + count].sum())
        self._costs(-util)
        col = self._stage()
        return col, float(util @ col[: len(util)] + own_seats)


def _owner(data: _Data, allocation: Allocation) -> np.ndarray:
    owner = np.full(len(data.goods), -1)
    for g, holder in allocation.indivisible.items():
        if holder is not None:
            owner[data.good_index[g]] = data.index[holder]
    return owner


def _allocation(data: _Data, owner: np.ndarray, x: np.ndarray) -> Allocation:
    indivisible: dict[str, str | None] = {
        g: data.agents[o] if o >= 0 else None for g, o in zip(data.goods, owner, strict=True)
    }
    divisible: dict[str, dict[str, float]] = {}
    for d, pool in enumerate(data.pools):
        column = np.clip(x[:, d], 0.0, 1.0)
        shares = {data.agents[j]: float(v) for j, v in enumerate(column) if v > ZERO_SHARE}
        total = sum(shares.values())
        if total > 0 and (not data.optional_pool[d] or total > 1):
            shares = {j: v / total for j, v in shares.items()}
        divisible[pool] = shares
    return Allocation(indivisible=indivisible, divisible=divisible)


@dataclass
class _Trial:
    """One finished solve: a seat assignment, Z, and the LP's three-stage answer."""

    owner: np.ndarray  # owner[g]: index of the agent holding indivisible good g (-1: none)
    without: np.ndarray  # Z: agents whose shares are fixed at 0
    x: np.ndarray  # shares x[j, d]
    s: np.ndarray  # slack s_i by which agent i's criterion still fails
    lam_ef: float
    lam_prop: float
    value: float  # the objective (normalised units)
    seats: _Seats

    @property
    def violation(self) -> float:
        return float(self.s.sum())


class _Search:
    """Seat assignment search around one persistent share LP."""

    def __init__(
        self, data: _Data, objective: Objective, deadline: float,
        previous: dict[str, str] | None, churn_limit: int | None,
    ) -> None:
        self.data, self.deadline = data, deadline
        self.previous = previous
        self.churn_limit = churn_limit
        self.lp = _ShareLp(data, objective, deadline)
        self.basis: highspy.HighsBasis | None = None  # stage-1 basis of the best trial
        self.candidate_basis: highspy.HighsBasis | None = None  # that of the last evaluation

    def violation(self, owner: np.ndarray, without: np.ndarray, fresh: bool = False) -> float:
        """Stage 1 only: the least violation of this assignment (the LP keeps its solution).

        A seat move changes a few constants: the best trial's stage-1 basis re-solves it in
        a few pivots. A change of Z fixes whole rows of shares at 0, which makes that basis
        badly infeasible (measured: 14,000 pivots against 1,800 from HiGHS's current one)."""
        warm = not fresh and bool((without == self.lp.without).all())
        self.lp.assign(_Seats(self.data, owner), without)
        violation, self.candidate_basis = self.lp.violation(self.basis if warm else None)
        return violation

    def accept(self, owner: np.ndarray) -> _Trial:
        """Finish the LP's current assignment (stages 2 and 3) and make it the best."""
        x, s, lam_ef, lam_prop, value = self.lp.finish()
        self.basis = self.candidate_basis
        seats = self.lp.seats
        assert seats is not None
        return _Trial(owner, self.lp.without, x, s, lam_ef, lam_prop, value, seats)

    def efm(self, best: _Trial) -> _Trial:
        """Grow the set Z of agents without divisible goods while that lowers the violation."""
        data = self.data
        efm_agents = (data.kind == EFM_KIND) & data.positive
        for _ in range(EFM_ROUNDS):
            failing = np.nonzero(efm_agents & (best.s > VIOLATED))[0]
            if not len(failing) or time.monotonic() > self.deadline:
                break
            view = best.seats.value + data.vd @ best.x.T
            grow = best.without.copy()
            # The worst failing EFM agent: the bundle whose exact EF row fails worst, where
            # "up to one good" would do, joins Z (one at a time: small steps re-solve fast).
            i = failing[np.argmax(best.s[failing])]
            exact = view[i, i] - view[i] + best.lam_ef * best.seats.max_in[i]
            weak = view[i, i] - best.seats.value[i] + best.seats.max_in[i]
            candidates = [j for j in np.argsort(exact, kind="stable")
                          if j != i and not grow[j] and exact[j] < -VIOLATED
                          and weak[j] >= -VIOLATED]
            if not candidates:
                break
            grow[candidates[0]] = True
            if not self.better(best.owner, grow, best.violation):
                break
            try:
                best = self.accept(best.owner)
            except SolverError as exc:
                log.info("search stopped: %s", exc)
                break
        return best

    def improve(self, best: _Trial) -> tuple[_Trial, int]:
        """Seat moves towards violated agents while they lower the violation and time is left."""
        moves = 0
        tried: set[tuple[int, int]] = set()
        for _ in range(LOCAL_SEARCH_MOVES):
            if best.violation <= VIOLATED or time.monotonic() > self.deadline:
                break
            move = self._next_move(best, tried)
            if move is None:
                break
            g, i = move
            tried.add((g, i))
            owner = best.owner.copy()
            owner[g] = i
            if not self._within_churn(owner) or not self._within_caps(owner, i):
                continue
            if self.better(owner, best.without, best.violation):
                try:
                    best = self.accept(owner)
                except SolverError as exc:
                    log.info("search stopped: %s", exc)
                    break
                moves += 1
                tried.clear()
        return best, moves

    def better(
        self, owner: np.ndarray, without: np.ndarray, violation: float, fresh: bool = False,
    ) -> bool:
        """Whether this assignment lowers the violation (False once the deadline passes);
        ``fresh``: a distant assignment, re-solved from HiGHS's current basis."""
        try:
            return self.violation(owner, without, fresh) < violation - VIOLATED
        except SolverError as exc:
            log.info("search stopped: %s", exc)
            return False

    def _next_move(self, best: _Trial, tried: set[tuple[int, int]]) -> tuple[int, int] | None:
        """(good, new holder): the most violated agent takes the seat it values most from the
        bundle it envies most (weighted), if that move was not tried since the last success."""
        data = self.data
        forbidden = data.instance.forbidden
        view = best.seats.value + data.vd @ best.x.T
        for i in np.argsort(-best.s, kind="stable"):
            if best.s[i] <= VIOLATED:
                return None
            envy = view[i] / data.weight - view[i, i] / data.weight[i]
            envy[i] = -np.inf
            for j in np.argsort(-envy, kind="stable"):
                if j == i:
                    continue
                goods = np.nonzero(best.owner == j)[0]
                for g in goods[np.argsort(-data.vm[i, goods], kind="stable")]:
                    if data.vm[i, g] <= 0:
                        break
                    if (int(g), int(i)) not in tried and (
                        data.agents[i], data.goods[g]) not in forbidden:
                        return int(g), int(i)
        return None

    def _within_churn(self, owner: np.ndarray) -> bool:
        if self.churn_limit is None or self.previous is None:
            return True
        data = self.data
        moved = sum(
            1 for g, p in self.previous.items()
            if g in data.good_index and p in data.index
            and owner[data.good_index[g]] != data.index[p]
        )
        return moved <= self.churn_limit

    def _within_caps(self, owner: np.ndarray, i: int) -> bool:
        held = {self.data.goods[g] for g in np.nonzero(owner == i)[0]}
        caps = self.data.instance.caps.get(self.data.agents[i], ())
        return all(len(held.intersection(group)) <= most for group, most in caps)


def _start(instance: Instance, previous: dict[str, str] | None) -> Allocation:
    """The picking sequence; with a churn bound, previous holders keep their goods first."""
    if not previous:
        return picking_allocation(instance)
    agents = {a.name for a in instance.agents}
    kept = {
        g: p for g, p in previous.items()
        if g in instance.indivisible and p in agents and (p, g) not in instance.forbidden
    }
    rest = picking_allocation(instance)
    for i, caps in instance.caps.items():
        for group, most in caps:
            if sum(1 for g, p in kept.items() if p == i and g in group) > most:
                # Keeping every previous seat would break a cap: start from the picking order.
                return rest
    return Allocation(
        indivisible={g: kept.get(g, rest.indivisible[g]) for g in instance.indivisible},
        divisible=rest.divisible,
    )


def divide_fixed_seats(
    instance: Instance,
    objective: Objective,
    deadline: float,
    *,
    previous: dict[str, str] | None = None,
    churn_limit: int | None = None,
) -> Outcome:
    """The scalable path on a canonical, validated instance (see the module docstring).

    Raises SolverError only when HiGHS fails or the deadline passes before the first LP ends.
    """
    data = _Data(instance)
    search = _Search(data, objective, deadline, previous, churn_limit)
    owner = None
    if constructive.supports(instance) and len(data.goods) and churn_limit is None:
        now = time.monotonic()
        owner = fractional_seats(data.vm, data.vd, data.weight, data.kind, data.positive,
                                 now + FRACTIONAL_SHARE * (deadline - now))
    start = "fractional"
    if owner is None:
        start = "picking"
        owner = _owner(data, _start(instance, previous if churn_limit is not None else None))
    search.violation(owner, np.zeros(len(data.agents), dtype=bool))
    best = search.accept(owner)
    log.info("seats from the %s start: violation %.3g, λ_ef %.3g, λ_prop %.3g", start,
             best.violation, best.lam_ef, best.lam_prop)
    best, moves = search.improve(best)
    best = search.efm(best)
    if moves:
        log.info("local search: %d seat moves, violation now %.3g", moves, best.violation)
    return Outcome(
        allocation=_allocation(data, best.owner, best.x),
        violation=best.violation,
        lambda_ef=best.lam_ef,
        lambda_prop=best.lam_prop,
        objective=best.value,
        moves=moves,
        start=start,
    )
