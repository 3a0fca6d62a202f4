"""The seat search: seat moves around one persistent share LP while violations remain.

Step 3 of allocator.scalable.path: moves sure to improve (by the kept-shares bound of
allocator.scalable.moves) are taken without a solve; the others are re-solved in the order of
their dual bound, the first that lowers the violation kept; then stages 2 and 3 of the share LP
(allocator.scalable.share_lp) finish the best assignment.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import highspy
import numpy as np

from allocator.errors import SolverError
from allocator.objectives import Objective
from allocator.scalable.data import Data, Seats
from allocator.scalable.moves import Moves
from allocator.scalable.share_lp import VIOLATED, ShareLp

log = logging.getLogger(__name__)

# Most first-stage solves the seat search spends (each about 0.05–0.5 s at 64 × 64); it also
# stops near the deadline, and when none of the SOLVES_PER_ROUND moves the dual bound ranks
# first lowers the violation. Measured on the benchmark's 64 × 64 instances: improving moves
# lie further down the ranking, but taking them lowered Σ s without making fewer agents fail
# (8, 3, 3 instead of 8, 2, 3) and used the whole time limit.
LOCAL_SEARCH_MOVES = 400
SOLVES_PER_ROUND = 32
# The search stops while this many of its slowest solves still fit before the deadline: one
# for the move, three for what follows (the reweighting and the last two stages, all from a
# warm basis). If the deadline still cuts them short, the first stage's shares are returned.
FINISH_RESERVE = 4.0


@dataclass
class _Point:
    """One seat assignment with its first-stage optimum (what the search compares)."""

    owner: np.ndarray  # owner[g]: index of the agent holding indivisible good g (-1: none)
    seats: Seats
    violation: float  # Σ s_i at λ = 1
    x: np.ndarray  # the first stage's shares x[j, d]
    dual_ef: np.ndarray  # its envy rows' duals, n × n (0 where the LP has no row)
    dual_prop: np.ndarray  # its PROP rows' duals per agent
    dual_valid: bool  # whether φ + y·Δb is a lower bound (see ShareLp.duals)
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


class Search:
    """Seat assignment search around one persistent share LP."""

    def __init__(
        self, data: Data, objective: Objective, deadline: float,
        previous: dict[str, str] | None, churn_limit: int | None,
    ) -> None:
        self.data, self.deadline = data, deadline
        self.churn_limit = churn_limit
        self.lp = ShareLp(data, objective, deadline)
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
        seats = Seats(self.data, owner)
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
        LP (no cost on the shares) dual simplex from it often stalls (docs/benchmarks.md,
        "Measurements behind design choices")."""
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

    def _candidates(self, best: _Point) -> tuple[Moves, np.ndarray, np.ndarray]:
        """Moves (good, receiver) that could lower the violation with the shares kept: to an
        agent that fails, or away from a bundle some failing agent's tightest row is against.
        Forbidden pairs are left out; caps and the churn bound are checked when a move is
        taken."""
        data = self.data
        bounds = Moves(data, best.seats, best.x, best.dual_ef, best.dual_prop,
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
            seats = Seats(self.data, owner)
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
