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
   docs/architecture.md §2 is a linear row in the shares ``x_jd``, the relaxation λ and a
   non-negative per-agent slack ``s_i`` (the amount, as a fraction of ``T_i``, by which the agent's
   criterion would fail). The LP is solved lexicographically: minimise Σ s_i with λ = 1 (every row
   is weakest there, so this is the least violation any λ allows); then, with the slacks kept,
   minimise 1000·λ_prop + λ_ef (PROP-type agents are relaxed only where EF1 is not enough, as
   in the MILP's λ search); then, with both kept, maximise the objective. EF-type rows are
   O(n²) and are added lazily: all currently violated pairs per round, until none is violated
   (each stage's final solution satisfies every row, so the next stage is always feasible);
   the first solve starts with the pairs the relaxation's own shares leave tight.
3. **Seat moves** while some slack remains and time is left (:class:`_Moves`). Moving one good
   from ``j`` to ``i`` changes only constants of the first stage (the right-hand sides at
   λ = 1), so two bounds on its new optimum cost no solve: keeping the current shares gives an
   *upper* bound (the slacks those shares need under the new seats, every envy pair counted);
   the stage's row duals give a *lower* bound (its optimal value is convex in the right-hand
   sides, and the duals are a subgradient). A move whose upper bound is below the current
   violation is an improvement for sure and is taken without a solve; otherwise the moves
   whose lower bound leaves room are re-solved in that order and the first that lowers Σ s is
   kept. Only the final assignment goes through the second and third stages. On plain
   instances the search first gets SEARCH_SHARE of the time; if slack remains then,
   allocator.fractional.relaxation_bound says whether any allocation could meet every
   criterion at λ = 1 (``Outcome.lower_bound``), and a search that share cut short goes on.
4. **Fewest failing agents.** If slack remains, the first stage is re-solved a few times with
   reweighted slacks (:meth:`_ShareLp.concentrate`) so that it falls on as few agents as
   possible before the later stages.

Degeneracy: the first stage has no cost on the shares, and HiGHS's dual simplex from a warm
basis can stall on it (measured at 64 × 64: once 117,000 pivots without moving the objective,
where a solve from scratch takes 1,000–3,000). So a warm dual solve is capped at WARM_PIVOTS
and then restarted from scratch, from-scratch solves use primal simplex, and a move is
evaluated from scratch rather than from the best assignment's basis.

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
    TOLERANCE,
    ZERO_SHARE,
    base_factor,
)
from allocator.constructive import picking_allocation
from allocator.errors import SolverError
from allocator.fractional import (
    EF_KIND,
    EFM_KIND,
    PROP_KIND,
    Guidance,
    fractional_seats,
    relaxation_bound,
)
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
# Most first-stage solves the seat search spends (each about 0.05–0.5 s at 64 × 64); it also
# stops near the deadline, and when none of the SOLVES_PER_ROUND moves the dual bound ranks
# first lowers the violation. Measured on the benchmark's 64 × 64 instances: improving moves
# lie further down the ranking, but taking them lowered Σ s without making fewer agents fail
# (8, 3, 3 instead of 8, 2, 3) and used the whole time limit.
LOCAL_SEARCH_MOVES = 400
SOLVES_PER_ROUND = 32
# Pivot cap of a re-solve from a warm basis (then from scratch): measured at 64 × 64, a
# stalled dual simplex ran 117,000 pivots without moving its objective; a fresh solve takes
# 1,000–3,000.
WARM_PIVOTS = 1500
# The search stops while this many of its slowest solves still fit before the deadline: one
# for the move, three for what follows (the reweighting and the last two stages, all from a
# warm basis). If the deadline still cuts them short, the first stage's shares are returned.
FINISH_RESERVE = 4.0
# Reweighting rounds of _ShareLp.concentrate, and its δ (normalised units: a slack below it
# weighs about 1/δ, one far above it about 1/s).
CONCENTRATE_ROUNDS = 4
CONCENTRATE_DELTA = 1e-4
# Share of the time after the first solve (less the finishing reserve) that the seat search
# may use before the relaxation bound is computed (on plain instances with a criterion still
# failing): the bound needs its time (about 1.5 s at 64 × 64); a search the share cut short
# then goes on in the rest.
SEARCH_SHARE = 0.3
# Most of the time left that the fractional relaxation may take; if it runs out, the picking
# sequence still has time for its share LP.
FRACTIONAL_SHARE = 0.6
# Envy rows of the share LP's first solve taken from the relaxation's answer: per EF-type
# agent, the pairs whose margin there is within this of its tightest (normalised units).
SEED_MARGIN = 0.003
# ... and of those at most this many per agent. Measured on the benchmark's instances: at
# 64 × 64 about 4 pairs per EF-type agent lie within SEED_MARGIN (no change); at 256 × 64
# about 120, and the first solve with all of them took 3.7 s, so the share LP did not finish
# within the default 8 s and divide fell back to the picking sequence.
SEED_PAIRS_PER_AGENT = 8
DUAL_SIMPLEX, PRIMAL_SIMPLEX = 1, 4  # HiGHS's simplex_strategy values
# Candidate moves scored at once (rows of the C × n arrays); bounds memory at large sizes.
MOVE_CHUNK = 4096


@dataclass(frozen=True)
class Outcome:
    """The best allocation of this path and the numbers its LP proved for it."""

    allocation: Allocation
    # Σ s_i at λ = 1 of the returned shares: the total slack the criteria still lack (0: every
    # criterion holds at some λ ≤ 1)
    violation: float
    lambda_ef: float
    lambda_prop: float
    objective: float  # the LP's objective value in normalised units (its welfare stage)
    moves: int  # seat moves the local search kept
    start: str  # where the seats came from: "fractional" or "picking"
    # The fractional relaxation's bound: the least total violation of *any* allocation at
    # λ = 1 (allocator.fractional.relaxation_bound); None when it was not computed.
    lower_bound: float | None = None


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
        # ratio[i, j]: the factor of V_i(A_j) in i's envy row (w_i/w_j; 1 for unweighted EFM)
        self.ratio = np.where((self.kind == EFM_KIND)[:, None], 1.0,
                              self.weight[:, None] / self.weight[None, :])
        self.ef_rows = (self.kind != PROP_KIND) & self.positive  # agents with envy rows
        self.prop_rows = (self.kind == PROP_KIND) & self.positive
        self.optional_pool = np.array([p in instance.optional for p in self.pools], dtype=bool)
        # requires[d]: indices of the indivisible goods a share of pool d needs (None: none)
        self.requires = [
            [self.good_index[g] for g in instance.requires[p]] if p in instance.requires else None
            for p in self.pools
        ]
        # required[g, d]: a share of pool d may come with good g
        self.required = np.zeros((m, d), dtype=bool)
        for k, needed in enumerate(self.requires):
            if needed is not None:
                self.required[needed, k] = True
        self.allowed = np.ones((n, m), dtype=bool)  # allowed[i, g]: i may hold g
        for a, g in instance.forbidden:
            self.allowed[self.index[a], self.good_index[g]] = False
        # kind_of[g]: goods alike in every value and constraint share a kind (a GPU's seats);
        # moving either of two alike goods between the same agents is the same move.
        kinds: dict[bytes, int] = {}
        self.kind_of = np.array([
            kinds.setdefault(self.vm[:, g].tobytes() + self.allowed[:, g].tobytes()
                             + self.required[g].tobytes(), len(kinds))
            for g in range(m)
        ], dtype=int)
        assert all(a.criterion in EF_TYPE or a.criterion in PROP_TYPE for a in instance.agents)


class _Seats:
    """Constants of one indivisible assignment: S[i,j] = V_i(seats of j)/T_i, Mx, Mx_out."""

    def __init__(self, data: _Data, owner: np.ndarray) -> None:
        n = len(data.agents)
        self.owner = owner
        held = np.zeros((len(data.goods), n))
        given = owner >= 0
        held[np.nonzero(given)[0], owner[given]] = 1.0
        self.held = held  # held[g, j]: 1 where j holds g
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


def _top_two(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``values`` (masked entries −inf): the largest value (0 if none), how many
    entries reach it, and the largest value below it (0 if none)."""
    top = values.max(axis=1, initial=-np.inf)
    count = np.where(np.isfinite(top), (values == top[:, None]).sum(axis=1), 0)
    below = np.where(values < top[:, None], values, -np.inf).max(axis=1, initial=-np.inf)
    return (np.where(np.isfinite(top), top, 0.0), count,
            np.where(np.isfinite(below), below, 0.0))


class _Moves:
    """Bounds on the first stage's optimum after moving one indivisible good (no LP solve).

    At λ = 1 every row of the first stage reads ``pool part(x) + s_i ≥ b`` with
    EF-type ``b_kl = r_kl·(S_kl − Mx_k(A_l)) − S_kk`` (``r``: weight ratio, 1 for EFM) and
    PROP-type ``b_k = w_k/W − S_kk − Mx_k(M∖A_k)``. A move of good g from j to i changes
    ``b`` only in rows and columns i and j. With the shares x kept, the slacks the new ``b``
    needs are an upper bound on the new optimum (x stays feasible: plain instances have no
    share bounds that a move changes, and moves that would strand a coupled share are given
    an infinite bound); with the row duals y of the current optimum, ``φ + y·Δb`` is a lower
    bound, since the optimum is convex in ``b`` and the rows not yet added only raise it.
    """

    def __init__(
        self, data: _Data, seats: _Seats, x: np.ndarray, dual_ef: np.ndarray,
        dual_prop: np.ndarray, violation: float,
    ) -> None:
        self.data, self.seats, self.x = data, seats, x
        self.dual_ef, self.dual_prop, self.violation = dual_ef, dual_prop, violation
        n = len(data.agents)
        S, mx, out = seats.value, seats.max_in, seats.max_out
        own = np.diag(S)
        pool = data.vd @ x.T  # pool[k, l] = k's value of l's shares
        self.pool_own = np.diag(pool)
        r = data.ratio
        b = r * (S - mx) - own[:, None]  # b[k, l] of every envy row, present or not
        self.margin_pool = self.pool_own[:, None] - r * pool  # what the shares contribute
        need = np.where(data.ef_rows[:, None], b - self.margin_pool, -np.inf)
        np.fill_diagonal(need, -np.inf)  # need[k, l]: the slack pair (k, l) needs with x
        self.prop_need = np.where(data.prop_rows, data.share - own - out - self.pool_own,
                                  -np.inf)
        self.slack = np.maximum(0.0, np.maximum(need.max(axis=1, initial=-np.inf),
                                                self.prop_need))
        top = np.argsort(-need, axis=1, kind="stable")[:, :3]
        self.top_index = top
        self.top_need = np.take_along_axis(need, top, axis=1)
        # For Mx_k(A_j ∖ {g}) and Mx_i(M ∖ A_i ∖ {g}): the two largest values and the count of
        # the largest, per bundle and per complement.
        owner = seats.owner
        self.in_top = np.zeros((n, n))
        self.in_count = np.zeros((n, n), dtype=int)
        self.in_second = np.zeros((n, n))
        for j in range(n):
            mine = np.nonzero(owner == j)[0]
            if len(mine):
                self.in_top[:, j], self.in_count[:, j], self.in_second[:, j] = _top_two(
                    data.vm[:, mine])
        outside = owner[None, :] != np.arange(n)[:, None]
        self.out_top, self.out_count, self.out_second = _top_two(
            np.where(outside, data.vm, -np.inf))
        # held_required[j, d]: how many goods that pool d requires j holds
        self.held_required = seats.held.T @ data.required.astype(float)

    def bounds(self, goods: np.ndarray, to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(upper, lower) bounds on Σ s after moving ``goods[c]`` to agent ``to[c]``."""
        uppers, lowers = [], []
        for first in range(0, len(goods), MOVE_CHUNK):
            u, lo = self._bounds(goods[first:first + MOVE_CHUNK], to[first:first + MOVE_CHUNK])
            uppers.append(u)
            lowers.append(lo)
        if not uppers:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(uppers), np.concatenate(lowers)

    def _bounds(self, g: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        data, seats = self.data, self.seats
        S, mx = seats.value, seats.max_in
        r = data.ratio
        j = seats.owner[g]
        count = len(g)
        rows = np.arange(count)
        vg = data.vm[:, g].T  # vg[c, k] = v_k(g_c)
        a = vg[rows, i]  # what the receiver gains
        lose = vg[rows, j]  # what the giver loses
        own = np.diag(S)
        # Column i (every k's view of the receiver's bundle) and column j (of the giver's).
        mx_i = np.maximum(mx[:, i].T, vg)
        keeps = (vg < self.in_top[:, j].T) | (self.in_count[:, j].T >= 2)
        mx_j = np.where(keeps, self.in_top[:, j].T, self.in_second[:, j].T)
        b_ki = r[:, i].T * (S[:, i].T + vg - mx_i) - own[None, :]
        b_kj = r[:, j].T * (S[:, j].T - vg - mx_j) - own[None, :]
        need_ki = b_ki - self.margin_pool[:, i].T
        need_kj = b_kj - self.margin_pool[:, j].T
        # Every other pair of row k: the largest need outside columns i and j.
        top = self.top_index[None, :, :]
        other = (top != i[:, None, None]) & (top != j[:, None, None])
        rest = np.where(other, self.top_need[None, :, :], -np.inf).max(axis=2)
        ef = self.data.ef_rows
        new = np.where(ef[None, :], np.maximum(0.0, np.maximum(rest, np.maximum(need_ki,
                                                                              need_kj))),
                       self.slack[None, :])
        # The receiver's and the giver's own rows shift with their own seat value.
        recv = np.maximum(0.0, np.maximum(rest[rows, i], need_kj[rows, i]) - a)
        give = np.maximum(0.0, np.maximum(rest[rows, j], need_ki[rows, j]) + lose)
        out_i = np.where((a < self.out_top[i]) | (self.out_count[i] >= 2), self.out_top[i],
                         self.out_second[i])
        out_j = np.maximum(seats.max_out[j], lose)
        prop_i = np.maximum(0.0, self.prop_need[i] - a - (out_i - seats.max_out[i]))
        prop_j = np.maximum(0.0, self.prop_need[j] + lose - (out_j - seats.max_out[j]))
        new[rows, i] = np.where(ef[i], recv, np.where(data.prop_rows[i], prop_i, 0.0))
        new[rows, j] = np.where(ef[j], give, np.where(data.prop_rows[j], prop_j, 0.0))
        upper = new.sum(axis=1)
        if data.required.any():
            # The giver's shares of a pool that needs g become infeasible if g was its last
            # required good there: no bound from the kept shares.
            last = data.required[g] & (self.held_required[j] == 1) & (self.x[j] > ZERO_SHARE)
            upper = np.where(last.any(axis=1), np.inf, upper)
        # Lower bound: φ + y·Δb over the rows the LP has (other rows have no dual).
        y = self.dual_ef
        delta_ki = r[:, i].T * (vg - (mx_i - mx[:, i].T))
        delta_kj = r[:, j].T * (-vg - (mx_j - mx[:, j].T))
        outside = (np.arange(len(own))[None, :] != i[:, None]) & \
            (np.arange(len(own))[None, :] != j[:, None])
        change = (np.where(outside, y[:, i].T * delta_ki + y[:, j].T * delta_kj, 0.0)
                  .sum(axis=1))
        row_i = y.sum(axis=1)[i] - y[i, j]
        row_j = y.sum(axis=1)[j] - y[j, i]
        change += -a * row_i + lose * row_j
        change += y[i, j] * (delta_kj[rows, i] - a) + y[j, i] * (delta_ki[rows, j] + lose)
        change += self.dual_prop[i] * (-a - (out_i - seats.max_out[i]))
        change += self.dual_prop[j] * (lose - (out_j - seats.max_out[j]))
        return upper, self.violation + change


class _ShareLp:
    """The LP over divisible shares (see the module docstring), kept across seat moves.

    One HiGHS model lives through the whole search: a seat move only changes constants — row
    bounds, the λ coefficients, the share columns' bounds — so it is built once, and envy rows
    added for one assignment serve all later ones. Every row lists all the columns it may ever
    use, so updates never change a row's sparsity.
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
        self.stage_one = np.zeros(0)  # the last stage-1 solution
        self.warm = False  # whether HiGHS holds a basis from an earlier solve
        self._completeness()
        self.prop_agents = np.nonzero(data.prop_rows)[0]
        self.prop_first = self.h.getNumRow()
        self._add_rows(
            [self._cols(i, self.col_lprop) for i in self.prop_agents],
            [np.concatenate([data.vd[i], [1.0, 0.0]]) for i in self.prop_agents],
        )
        self.own_first = self.h.getNumRow()
        self._objective_rows()
        self.own_last = self.h.getNumRow()

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

    def envy_rows(self, pairs: list[tuple[int, int]]) -> None:
        """Add EF-type rows for these pairs (i, j): i's shares, j's shares, s_i and λ_ef;
        the constants are those of the current seats. Weighted EF-type criteria compare
        V_i(A_i)/w_i with V_i(A_j)/w_j (times w_i); EFM compares unweighted."""
        pairs = [p for p in pairs if p not in self.pairs]
        if not pairs:
            return
        data = self.data
        index, value = [], []
        for i, j in pairs:
            index.append(np.concatenate([self._x(i), self._x(j), [self.col_s + i,
                                                                 self.col_lef]]))
            value.append(np.concatenate([data.vd[i], -data.ratio[i, j] * data.vd[i],
                                         [1.0, 0.0]]))
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
        r = data.ratio[i, j]
        base = data.base[i]
        efm = data.kind[i] == EFM_KIND
        # EFM: V_i(A_i) ≥ V_i(A_j) − λ·Mx_i(A_j) (docs/architecture.md §2's exact branch, relaxed
        # by λ; at λ = 1 it is also the branch for j without divisible goods). Weighted:
        # V_i(A_i) ≥ r·(V_i(A_j) − f_i·Mx_i(A_j)), f_i = base + λ(1−base).
        lower = np.where(efm, theirs - own, r * theirs - r * base * mx - own)
        slope = np.where(efm, mx, (1 - base) * r * mx)
        rows = np.array([self.pairs[p] for p in pairs], dtype=np.int32)
        self._row_bounds(len(rows), rows, lower, np.full(len(rows), INF))
        for row, coef in zip(rows, slope, strict=True):
            self.h.changeCoeff(int(row), self.col_lef, float(coef))

    def assign(self, seats: _Seats) -> None:
        """Switch the model to another seat assignment."""
        data = self.data
        self.seats = seats
        upper = np.where(seats.share_ok, 1.0, 0.0).ravel()
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
        r = data.ratio  # EFM: r = 1 and base 0, its exact branch relaxed by λ
        base = data.base[:, None]
        mx = seats.max_in
        out = own - r * (view - base * mx) + lam_ef * (1 - base) * r * mx + s[:, None]
        out[~data.ef_rows, :] = np.inf
        np.fill_diagonal(out, np.inf)
        return out

    def _run(self) -> np.ndarray:
        """One solve from the current basis. Dual simplex from a warm basis is capped at
        WARM_PIVOTS and, past the cap, solved once more from scratch: the first stage has no
        cost on the shares, and dual simplex stalls on that degeneracy (primal simplex after a
        change of costs does not: measured, capping it only lost time)."""
        dual = self.h.getOptionValue("simplex_strategy")[1] == DUAL_SIMPLEX
        for cap in ((WARM_PIVOTS, None) if self.warm and dual else (None,)):
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise SolverError("highs: time limit reached in the share LP")
            # HiGHS's time limit counts its run time since the model was created.
            self.h.setOptionValue("time_limit", self.h.getRunTime() + float(remaining))
            self.h.setOptionValue("simplex_iteration_limit", cap or 2**31 - 1)
            if not self.warm:
                # From scratch, primal simplex: measured 3,000 pivots where dual took 13,000.
                self.h.setOptionValue("simplex_strategy", PRIMAL_SIMPLEX)
            self.h.run()
            status = self.h.getModelStatus()
            if status == highspy.HighsModelStatus.kIterationLimit and cap:
                log.debug("share LP: %d pivots from a warm basis; solving afresh", cap)
                self.clear()
                continue
            if status != highspy.HighsModelStatus.kOptimal:
                raise SolverError(f"highs: share LP ended {self.h.modelStatusToString(status)}")
            break
        self.warm = True
        return np.asarray(self.h.getSolution().col_value)

    def clear(self) -> None:
        """Forget the basis: the next solve starts from scratch."""
        self.h.clearSolver()
        self.warm = False

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
            self.envy_rows(new)

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
        """Stage 1: the least total violation Σ s_i at λ = 1; returns it with the basis.

        ``basis``: a stage-1 basis of a nearby assignment. Only bounds differ from its model,
        so it stays dual feasible and dual simplex re-solves in a few pivots (rows added since
        it was taken enter as basic)."""
        n, data = self.n, self.data
        s_cols = np.arange(self.col_s, self.col_lef)
        self._bound(s_cols, np.zeros(n), np.where(data.positive, INF, 0.0))
        # λ fixed at 1: every row is weakest there (its λ coefficient is ≥ 0), so this is the
        # least violation any λ allows, and λ's coefficients become right-hand-side terms
        # (what _Moves's dual bound needs).
        self._bound(np.array([self.col_lef, self.col_lprop]), np.ones(2), np.ones(2))
        if self.objective == "egalitarian":
            self.h.changeColBounds(self.col_aux, 0.0, 1.0)
        self._costs({int(c): 1.0 for c in s_cols})
        if basis is not None:
            missing = self.h.getNumRow() - len(basis.row_status)
            basis.row_status = [*basis.row_status, *[highspy.HighsBasisStatus.kBasic] * missing]
            self.h.setBasis(basis)
            self.h.setOptionValue("simplex_strategy", DUAL_SIMPLEX)
            self.warm = True
        col = self._stage()
        self.stage_one = col
        return float(col[s_cols].sum()), self.h.getBasis()

    def duals(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """The last solve's row duals: (envy rows as an n × n matrix, PROP rows per agent,
        whether they give a valid lower bound — the objective's own rows must be slack)."""
        row_dual = np.asarray(self.h.getSolution().row_dual)
        ef = np.zeros((self.n, self.n))
        if self.pairs:
            pairs = np.array(list(self.pairs))
            ef[pairs[:, 0], pairs[:, 1]] = row_dual[list(self.pairs.values())]
        prop = np.zeros(self.n)
        prop[self.prop_agents] = row_dual[self.prop_first:self.prop_first
                                          + len(self.prop_agents)]
        own = row_dual[self.own_first:self.own_last]
        return (np.maximum(ef, 0.0), np.maximum(prop, 0.0),
                not len(own) or float(np.abs(own).max()) <= VIOLATED)

    def concentrate(self) -> float:
        """After ``violation`` with slack left: shift it onto fewer agents. Reweighted ℓ1
        (Candès, Wakin and Boyd, "Enhancing Sparsity by Reweighted ℓ1 Minimization", 2008):
        minimise Σ s_i/(s_i' + δ) with s' the last solution's slacks, a few times; keep the
        solution with the fewest agents whose slack exceeds the checker's tolerance (ties:
        the least total). Σ s may grow; the agents that still fail are what the certificate
        reports. Returns the kept Σ s."""
        s_cols = np.arange(self.col_s, self.col_lef)
        best = self.stage_one
        s = best[s_cols]
        score = (int((s > TOLERANCE).sum()), float(s.sum()))
        for _ in range(CONCENTRATE_ROUNDS):
            self._costs(dict(zip(s_cols.tolist(), (1.0 / (s + CONCENTRATE_DELTA)).tolist(),
                                 strict=True)))
            col = self._stage()
            s = col[s_cols]
            trial = (int((s > TOLERANCE).sum()), float(s.sum()))
            if trial < score:
                best, score = col, trial
        self.stage_one = best
        return score[1]

    def finish(self) -> tuple[np.ndarray, float, float, float]:
        """Stages 2 and 3 after ``violation``: (x, λ_ef, λ_prop, objective).

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

    def _finish(self, pad: float) -> tuple[np.ndarray, float, float, float]:
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
        return x, float(col[self.col_lef]), float(col[self.col_lprop]), value

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
class _Point:
    """One seat assignment with its first-stage optimum (what the search compares)."""

    owner: np.ndarray  # owner[g]: index of the agent holding indivisible good g (-1: none)
    seats: _Seats
    violation: float  # Σ s_i at λ = 1
    x: np.ndarray  # the first stage's shares x[j, d]
    dual_ef: np.ndarray  # its envy rows' duals, n × n (0 where the LP has no row)
    dual_prop: np.ndarray  # its PROP rows' duals per agent
    dual_valid: bool  # whether φ + y·Δb is a lower bound (see _ShareLp.duals)
    basis: highspy.HighsBasis


@dataclass
class _Trial:
    """The final assignment with the LP's three-stage answer."""

    owner: np.ndarray
    x: np.ndarray  # shares x[j, d]
    violation: float  # Σ s_i at λ = 1 that these shares leave
    lam_ef: float
    lam_prop: float
    value: float  # the objective (normalised units; NaN when only the first stage finished)


class _Search:
    """Seat assignment search around one persistent share LP."""

    def __init__(
        self, data: _Data, objective: Objective, deadline: float,
        previous: dict[str, str] | None, churn_limit: int | None,
    ) -> None:
        self.data, self.deadline = data, deadline
        self.churn_limit = churn_limit
        self.lp = _ShareLp(data, objective, deadline)
        self.at: np.ndarray | None = None  # the assignment the LP last solved stage 1 for
        # Seconds of the slowest first-stage solve of a move so far, and of the initial solve:
        # that one adds most envy rows in rounds, so it is no measure of the warm solves that
        # finish the search.
        self.slowest_move_s = 0.0
        self.initial_solve_s = 0.0
        self.solves = 0  # move solves so far, against LOCAL_SEARCH_MOVES
        self.previous_owner = (
            np.array([data.index.get(previous.get(g, ""), -1) for g in data.goods])
            if previous is not None else None
        )

    def solve(
        self, owner: np.ndarray, basis: highspy.HighsBasis | None, fresh: bool = False,
        initial: bool = False,
    ) -> _Point:
        """Stage 1 at this assignment (raises SolverError past the deadline); ``fresh``: from
        HiGHS's initial basis, not the last one; ``initial``: the search's first solve."""
        if fresh:
            self.lp.clear()
        began = time.monotonic()
        seats = _Seats(self.data, owner)
        self.lp.assign(seats)
        self.at = owner
        violation, new_basis = self.lp.violation(basis)
        if initial:
            self.initial_solve_s = time.monotonic() - began
        else:
            self.slowest_move_s = max(self.slowest_move_s, time.monotonic() - began)
        ef, prop, valid = self.lp.duals()
        col = self.lp.stage_one
        x = col[: self.lp.col_s].reshape(self.lp.n, self.lp.nd)
        return _Point(owner, seats, violation, x, ef, prop, valid, new_basis)

    def finish(self, best: _Point) -> _Trial:
        """Stages 2 and 3 at the best assignment; if they fail (the deadline), the first
        stage's shares at λ = 1, which the search already has."""
        try:
            if self.at is not best.owner:
                best = self.solve(best.owner, best.basis)
            violation = best.violation
            if violation > VIOLATED:
                violation = self.lp.concentrate()
            x, lam_ef, lam_prop, value = self.lp.finish()
        except SolverError as exc:
            log.warning("share LP: %s; keeping the first stage's shares", exc)
            return _Trial(best.owner, best.x, best.violation, 1.0, 1.0, math.nan)
        return _Trial(best.owner, x, violation, lam_ef, lam_prop, value)

    def evaluate(self, owner: np.ndarray) -> _Point | None:
        """Stage 1 at a moved assignment, from HiGHS's initial basis (None if it fails).

        Not from the best assignment's basis: that stays dual feasible, but on this degenerate
        LP (no cost on the shares) dual simplex from it often stalls — measured at 64 × 64,
        0.15–3 s and once 117,000 pivots without progress, against 0.25–0.45 s from scratch."""
        try:
            return self.solve(owner, None, fresh=True)
        except SolverError as exc:
            log.info("a seat move was not evaluated: %s", exc)
            return None

    def improve(
        self, best: _Point, until: float | None = None
    ) -> tuple[_Point, int, bool]:
        """Seat moves while they lower the violation, time is left and the budget of
        LOCAL_SEARCH_MOVES solves (over every call) lasts; returns the best point, the moves
        made, and whether the search stopped only because ``until`` came (another call goes on
        from there; a search that stopped otherwise has nothing left to try)."""
        moves = 0
        while best.violation > VIOLATED and self.solves < LOCAL_SEARCH_MOVES:
            if not self._time_for_one_more(until):
                return best, moves, self._time_for_one_more()
            owner, sure = self._sure_moves(best)
            if sure:
                self.solves += 1
                point = self.evaluate(owner)
                # The kept shares prove the improvement; the LP can only do better.
                if point is not None and point.violation < best.violation - VIOLATED:
                    best, moves = point, moves + sure
                    continue
            found, tried, cut = None, 0, False
            for g, i in self._ranked(best):
                if tried == SOLVES_PER_ROUND or self.solves >= LOCAL_SEARCH_MOVES:
                    break
                if not self._time_for_one_more(until):
                    cut = True
                    break
                if not self._allowed(best.owner, g, i):
                    continue
                owner = best.owner.copy()
                owner[g] = i
                self.solves, tried = self.solves + 1, tried + 1
                point = self.evaluate(owner)
                if point is not None and point.violation < best.violation - VIOLATED:
                    found = point
                    break
            if found is None:
                # Cut short by ``until`` before the round ended: the untried moves remain.
                return best, moves, cut and self._time_for_one_more()
            best, moves = found, moves + 1
        return best, moves, False

    def reserve(self) -> float:
        """Seconds to keep for the stages after the search: FINISH_RESERVE of its slowest move
        solves, or before any move, the time of a first solve."""
        return (FINISH_RESERVE * self.slowest_move_s if self.slowest_move_s
                else self.initial_solve_s)

    def _time_for_one_more(self, until: float | None = None) -> bool:
        """Whether one more solve still leaves time for the stages after the search (and
        starts before ``until``)."""
        now = time.monotonic()
        return now + self.reserve() < self.deadline and (until is None or now < until)

    def _candidates(self, best: _Point) -> tuple[_Moves, np.ndarray, np.ndarray]:
        """Moves (good, receiver) that could lower the violation with the shares kept: to an
        agent that fails, or away from a bundle some failing agent's tightest row is against.
        Forbidden pairs are left out; caps and the churn bound are checked when a move is
        taken."""
        data = self.data
        bounds = _Moves(data, best.seats, best.x, best.dual_ef, best.dual_prop,
                        best.violation)
        failing = bounds.slack > VIOLATED
        envied = np.zeros(len(data.agents), dtype=bool)
        rows = np.nonzero(failing & data.ef_rows)[0]
        envied[bounds.top_index[rows, 0]] = True
        owner = best.owner
        take = data.allowed & (owner[None, :] != np.arange(len(data.agents))[:, None])
        take &= (failing[:, None] | envied[owner][None, :]) & (owner >= 0)[None, :]
        to, goods = np.nonzero(take)
        # One move per (kind of good, giver, receiver): the lowest-numbered good stands for it.
        key = (data.kind_of[goods] * len(data.agents) + owner[goods]) * len(data.agents) + to
        _, first = np.unique(key, return_index=True)
        first.sort()
        return bounds, goods[first], to[first]

    def _sure_moves(self, best: _Point) -> tuple[np.ndarray, int]:
        """Apply, one at a time, the move whose kept-shares bound is lowest while that bound
        is below the current violation; returns the new assignment and how many were made."""
        owner = best.owner.copy()
        seats, violation, made = best.seats, best.violation, 0
        while made < len(owner):
            point = _Point(owner, seats, violation, best.x, best.dual_ef, best.dual_prop,
                           False, best.basis)
            bounds, goods, to = self._candidates(point)
            upper, _ = bounds.bounds(goods, to)
            chosen = None
            for k in np.argsort(upper, kind="stable"):
                if upper[k] >= violation - VIOLATED:
                    break
                if self._allowed(owner, int(goods[k]), int(to[k])):
                    chosen = k
                    break
            if chosen is None:
                break
            owner = owner.copy()
            owner[goods[chosen]] = to[chosen]
            seats = _Seats(self.data, owner)
            violation = float(upper[chosen])
            made += 1
        return owner, made

    def _ranked(self, best: _Point) -> list[tuple[int, int]]:
        """Moves worth a re-solve, most promising first: by the dual lower bound, which must
        leave room below the current violation where it is valid (ties: the kept-shares
        bound). Caps and the churn bound are not checked here."""
        bounds, goods, to = self._candidates(best)
        upper, lower = bounds.bounds(goods, to)
        if best.dual_valid and not self.data.required.any():
            keep = lower < best.violation - VIOLATED
            goods, to, upper, lower = goods[keep], to[keep], upper[keep], lower[keep]
        order = np.lexsort((upper, lower))
        return [(int(goods[k]), int(to[k])) for k in order]

    def _allowed(self, owner: np.ndarray, g: int, i: int) -> bool:
        """Whether giving good g to agent i keeps the churn bound and i's caps."""
        data = self.data
        if self.churn_limit is not None and self.previous_owner is not None:
            moved = owner != self.previous_owner
            moved[g] = i != self.previous_owner[g]
            if int((moved & (self.previous_owner >= 0)).sum()) > self.churn_limit:
                return False
        caps = data.instance.caps.get(data.agents[i], ())
        if caps:
            held = {data.goods[k] for k in np.nonzero(owner == i)[0]} | {data.goods[g]}
            return all(len(held.intersection(group)) <= most for group, most in caps)
        return True


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


def _seed_rows(data: _Data, owner: np.ndarray, guidance: Guidance) -> list[tuple[int, int]]:
    """Envy pairs likely to bind in the first share LP: those the relaxation's pool shares
    leave tightest under the rounded seats (saves the LP rounds that would add them)."""
    seats = _Seats(data, owner)
    view = seats.value + data.vd @ guidance.pools.T
    own = np.diag(view)[:, None]
    margin = own - data.ratio * (view - seats.max_in)
    margin[~data.ef_rows, :] = np.inf
    np.fill_diagonal(margin, np.inf)
    tight = margin <= margin.min(axis=1, keepdims=True) + SEED_MARGIN
    # At most SEED_PAIRS_PER_AGENT per agent, the tightest: past a hundred agents nearly
    # every pair lies within SEED_MARGIN, and a first solve with all of them costs more than
    # the rounds that add the few that bind.
    rank = np.argsort(np.argsort(margin, axis=1, kind="stable"), axis=1, kind="stable")
    tight &= rank < SEED_PAIRS_PER_AGENT
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(tight & np.isfinite(margin)),
                                               strict=True)]


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
    guidance = None
    if constructive.supports(instance) and len(data.goods) and churn_limit is None:
        now = time.monotonic()
        guidance = fractional_seats(data.vm, data.vd, data.weight, data.kind, data.positive,
                                    now + FRACTIONAL_SHARE * (deadline - now))
    if guidance is not None:
        start, owner = "fractional", guidance.owner
        search.lp.seats = _Seats(data, owner)
        search.lp.envy_rows(_seed_rows(data, owner, guidance))
    else:
        start = "picking"
        owner = _owner(data, _start(instance, previous if churn_limit is not None else None))
    best = search.solve(owner, None, initial=True)
    log.info("seats from the %s start: violation %.3g", start, best.violation)
    bounded = constructive.supports(instance)
    now = time.monotonic()
    # With a relaxation bound to come, the search gets part of the time first (see above).
    until = now + SEARCH_SHARE * (deadline - search.reserve() - now) if bounded else None
    best, moves, paused = search.improve(best, until)
    if moves:
        log.info("local search: %d seat moves, violation now %.3g", moves, best.violation)
    bound = None
    if best.violation > VIOLATED and bounded:
        bound = relaxation_bound(data.vm, data.vd, data.weight, data.kind, data.positive,
                                 deadline - search.reserve())
        if paused:
            best, more, _ = search.improve(best)
            if more:
                log.info("local search after the bound: %d more seat moves, violation now "
                         "%.3g", more, best.violation)
            moves += more
    trial = search.finish(best)
    if trial.violation <= VIOLATED:
        bound = None  # every criterion holds at some λ ≤ 1: nothing for the bound to say
    return Outcome(
        allocation=_allocation(data, trial.owner, trial.x),
        violation=trial.violation,
        lambda_ef=trial.lam_ef,
        lambda_prop=trial.lam_prop,
        objective=trial.value,
        moves=moves,
        start=start,
        lower_bound=bound,
    )
