"""The share LP: once the seats are fixed, the divisible goods divided by one lexicographic LP.

With the indivisible goods fixed every ``Mx_i(·)`` is a constant, so every criterion is a linear
row in the shares, the relaxation λ and a slack per agent; the stages (least violation, least
λ, the objective) and the lazy envy rows are step 2 of allocator.scalable.path, the
reweighting towards fewer failing agents its step 4.

Degeneracy: the first stage has no cost on the shares, and HiGHS's dual simplex from a warm
basis can stall on it for a hundred times the pivots of a solve from scratch (docs/benchmarks.md,
"Measurements behind design choices"). So a warm dual solve is capped at WARM_PIVOTS
and then restarted from scratch, from-scratch solves use primal simplex, and the seat search
(allocator.scalable.search) evaluates a move from scratch rather than from the best
assignment's basis.
"""

from __future__ import annotations

import logging
import math
import time

import highspy
import numpy as np

from allocator.certificate import TOLERANCE
from allocator.errors import SolverError
from allocator.objectives import NASH_FLOOR, NASH_POINTS, Objective
from allocator.scalable.data import EFM_KIND, Data, Seats

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
# Pivot cap of a re-solve from a warm basis (then from scratch): about what a fresh solve
# takes at the sizes served, far below what a stalled dual simplex runs.
WARM_PIVOTS = 1500
# Reweighting rounds of ShareLp.concentrate, and its δ (normalised units: a slack below it
# weighs about 1/δ, one far above it about 1/s).
CONCENTRATE_ROUNDS = 4
CONCENTRATE_DELTA = 1e-4
DUAL_SIMPLEX, PRIMAL_SIMPLEX = 1, 4  # HiGHS's simplex_strategy values


class ShareLp:
    """The LP over divisible shares (see the module docstring), kept across seat moves.

    One HiGHS model lives through the whole search: a seat move only changes constants — row
    bounds, the λ coefficients, the share columns' bounds — so it is built once, and envy rows
    added for one assignment serve all later ones. Every row lists all the columns it may ever
    use, so updates never change a row's sparsity.
    """

    def __init__(self, data: Data, objective: Objective, deadline: float) -> None:
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
        self.seats: Seats | None = None
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

    def assign(self, seats: Seats) -> None:
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
                # From scratch, primal simplex: a fraction of dual's pivots on this LP.
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
        # (what Moves's dual bound needs).
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
