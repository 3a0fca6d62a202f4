"""Seat moves and swaps that give no criterion back: the welfare step's search over the seats.

allocator.guarantee builds an allocation meeting every criterion the guarantees table promises,
and allocator.welfare re-divides its divisible shares with the seats fixed. The seats are the
construction's (round robin, then EFM's rotations, or the weighted picking sequence): chosen for
the guarantee, not for welfare, and blind to the criteria the table does not cover (a heavy
PROP^α tenant gets the seats of a light one). This module improves them by local search with
the shares fixed: single-seat moves (seat g from its holder j to agent i) and pairwise swaps
(g from j to i, h from i to j).

**Acceptance.** A move is *admissible* when, for every agent k, its exact slack (the one
checker's smallest margin at λ = 0, allocator.certificate) stays at least
``max(min(slack_k, 0), −TOLERANCE/2)`` if k's criterion held, so a criterion that held still
holds, and at least ``slack_k`` if it did not, so no failing agent fails by more; for an agent
that does not hold exactly, its slack at λ = 1 likewise (so none that held at λ = 1 stops). An
admissible move is *taken* when it makes fewer agents fail even at λ = 1, or (as many) fewer
agents fail exactly, or (as many of both) lowers the total shortfall of the failing agents
without lowering welfare, or raises welfare. Each taken move strictly improves that order, so
the search cannot cycle. Because every agent's slack is no worse, the agents the guarantee
covers keep their criterion; ``divide`` still checks the result with the one checker before it
takes it.

**Incremental margins.** Moving or swapping seats between agents i and j changes, for every
agent k, only its view of bundles i and j (columns i and j of every envy row, with
``Mx_k(A_i)``, ``Mx_k(A_j)``), the own values of i and j (every row of i and j shifts by the
change) and ``Mx_i(M∖A_i)``, ``Mx_j(M∖A_j)`` (their PROP rows). So a candidate is evaluated in
O(n) from per-row minima over the other columns (the three smallest margins of each row) and
the two largest seat values per bundle and per complement; candidates are evaluated in
vectorised batches, the improving ones then taken in order of improvement, each re-evaluated
against the current seats first. tests/allocator/test_exchange.py checks the evaluation against
the one checker on random moves and swaps.

**Candidates.** Per round: for each failing agent, the seats it values most relative to their
holder's value (``REPAIR_SEATS``); then for each seat, the agents valuing it most above its
holder (``WELFARE_RECEIVERS``), largest gain first; each of those also as a swap, the receiver
giving back the seat of its own that the giver values most relative to itself; at most
``ROUND_ELEMENTS`` / n moves a round. Rounds repeat until none improves, for at most
``MAX_ROUNDS`` rounds and until the deadline (the evaluation stops there; the best candidate it
found is still taken).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from allocator.arrays import value_matrices
from allocator.certificate import TOLERANCE, ZERO_SHARE
from allocator.criteria import EF_TYPE, PROP_TYPE, base_factor
from allocator.instance import Allocation, Instance
from allocator.objectives import Objective

log = logging.getLogger(__name__)

# A held criterion's slack is kept at or above −HELD_FLOOR (half the checker's tolerance, so
# the checker still sees it hold); NOISE absorbs float rounding of recomputed margins.
HELD_FLOOR = TOLERANCE / 2
NOISE = 1e-12
GAIN = 1e-9  # smallest change of welfare or total shortfall that counts as one
REPAIR_SEATS = 16  # seats tried per failing agent and round
WELFARE_RECEIVERS = 4  # receivers tried per seat and round
MAX_ROUNDS = 50
CHUNK = 1 << 19  # candidates × agents evaluated at once (bounds memory at 512 agents)
# Candidates × agents per round (moves; each may bring its swap): 4,096 moves at 512 agents,
# about 0.8 s of evaluation on a 2-core VM, so that a round ends well within the budget.
ROUND_ELEMENTS = 1 << 21
NASH_ZERO = 1e-300  # a zero value enters Σ log as log of this


@dataclass(frozen=True)
class Outcome:
    """What :func:`exchange_seats` did: the allocation (seats changed, shares as given) and
    how many moves and swaps it took."""

    allocation: Allocation
    moves: int
    swaps: int


def _top_two(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row (masked entries −inf): the largest value (0 if none), how many entries reach
    it, the largest below it (0 if none)."""
    top = values.max(axis=1, initial=-np.inf)
    count = np.where(np.isfinite(top), (values == top[:, None]).sum(axis=1), 0)
    below = np.where(values < top[:, None], values, -np.inf).max(axis=1, initial=-np.inf)
    return (np.where(np.isfinite(top), top, 0.0), count,
            np.where(np.isfinite(below), below, 0.0))


def _without(top: np.ndarray, count: np.ndarray, second: np.ndarray,
             value: np.ndarray) -> np.ndarray:
    """The largest value left once one entry worth ``value`` is removed."""
    return np.where((value < top) | (count >= 2), top, second)


def _smallest_three(margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the indices and values of the three smallest entries (padded with +inf)."""
    n = margins.shape[0]
    if margins.shape[1] < 3:
        margins = np.hstack([margins, np.full((n, 3 - margins.shape[1]), np.inf)])
    index = np.argpartition(margins, 2, axis=1)[:, :3]
    values = np.take_along_axis(margins, index, axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    return np.take_along_axis(index, order, axis=1), np.take_along_axis(values, order, axis=1)


def _rest(index: np.ndarray, values: np.ndarray, rows: np.ndarray, i: np.ndarray,
          j: np.ndarray) -> np.ndarray:
    """[c, k]: the smallest of row k's entries outside columns ``i[c]`` and ``j[c]``, from its
    three smallest (``index``, ``values`` over ``rows``)."""
    ix, val = index[rows], values[rows]
    other = (ix[None] != i[:, None, None]) & (ix[None] != j[:, None, None])
    return np.where(other, val[None], np.inf).min(axis=2)


@dataclass(frozen=True)
class Evaluation:
    """Every agent's exact slack and slack at λ = 1 after each candidate ([c, k]), and the
    welfare change (primary, secondary: the objective, then the utilitarian sum for the
    egalitarian and Nash objectives)."""

    slack: np.ndarray
    slack_one: np.ndarray
    welfare: np.ndarray
    welfare_tie: np.ndarray


class Exchange:
    """The seats of one allocation with every quantity the checker's margins are made of, in
    values normalised by each agent's total ``T_k`` (as the checker's margins are)."""

    def __init__(self, instance: Instance, allocation: Allocation, objective: Objective) -> None:
        self.objective = objective
        agents = [a.name for a in instance.agents]
        index = {a: k for k, a in enumerate(agents)}
        self.n = n = len(agents)
        vm, vd = value_matrices(instance)
        total = vm.sum(axis=1) + vd.sum(axis=1)
        self.positive = total > 0
        scale = np.where(self.positive, total, 1.0)
        self.vm = vm / scale[:, None]
        shares = np.zeros((n, len(instance.divisible)))
        for d, good in enumerate(instance.divisible):
            for holder, x in allocation.divisible[good].items():
                shares[index[holder], d] = float(x)
        self.pool = (vd / scale[:, None]) @ shares.T  # pool[k, j] = k's value of j's shares
        self.owner = np.array([index[str(allocation.indivisible[g])]
                               for g in instance.indivisible], dtype=np.int64)
        self.goods = tuple(instance.indivisible)
        self.names = tuple(agents)
        criteria = [a.criterion for a in instance.agents]
        weight = np.array([a.weight for a in instance.agents])
        alpha = np.where(self.positive, self.vm.sum(axis=1), 0.0)
        self.base = np.array([base_factor(c, float(alpha[k])) for k, c in enumerate(criteria)])
        self.share = weight / weight.sum()
        self.ef = np.array([c in EF_TYPE for c in criteria]) & self.positive
        self.prop = np.array([c in PROP_TYPE for c in criteria]) & self.positive
        efm = np.array([c == "efm" for c in criteria])
        holds_divisible: np.ndarray = np.asarray((shares > ZERO_SHARE).any(axis=1))
        # margin[k, l] = own_k − ratio·(V_k(A_l) − coef·Mx_k(A_l)); at λ = 1 coef is 1
        self.ratio = np.where(efm[:, None], 1.0, weight[:, None] / weight[None, :])
        self.coef = np.where(efm[:, None], np.where(holds_divisible[None, :], 0.0, 1.0),
                             self.base[:, None] * np.ones((1, n)))
        self._refresh()

    # --- the state -------------------------------------------------------------------------

    def _bundle(self, j: int) -> None:
        """Seat values, top two of bundle j (column j of seats and in_*)."""
        mine = self.owner == j
        held = self.vm[:, mine]  # only its own columns: O(n·|A_j|), not O(n·m)
        self.seats[:, j] = held.sum(axis=1)
        top, count, second = _top_two(held)
        self.in_top[:, j], self.in_count[:, j], self.in_second[:, j] = top, count, second
        outside = np.where(mine, -np.inf, self.vm[j])[None, :]
        top, count, second = _top_two(outside)
        self.out_top[j], self.out_count[j], self.out_second[j] = top[0], count[0], second[0]

    def _refresh(self, changed: tuple[int, ...] | None = None) -> None:
        """Recompute the seats' quantities (of the bundles in ``changed``, else all), every
        margin, every agent's slacks and the rows' three smallest margins."""
        n = self.n
        if changed is None:
            self.seats = np.zeros((n, n))
            self.in_top, self.in_second = np.zeros((n, n)), np.zeros((n, n))
            self.in_count = np.zeros((n, n), dtype=np.int64)
            self.out_top, self.out_second = np.zeros(n), np.zeros(n)
            self.out_count = np.zeros(n, dtype=np.int64)
            changed = tuple(range(n))
        for j in changed:
            self._bundle(j)
        view = self.seats + self.pool
        self.own = np.diag(view).copy()
        off = ~np.eye(n, dtype=bool) & self.ef[:, None]
        exact = self.own[:, None] - self.ratio * (view - self.coef * self.in_top)
        one = self.own[:, None] - self.ratio * (view - self.in_top)
        self.margin = np.where(off, exact, np.inf)
        self.margin_one = np.where(off, one, np.inf)
        self.prop_margin = np.where(self.prop, self.own + self.base * self.out_top - self.share,
                                    np.inf)
        self.prop_one = np.where(self.prop, self.own + self.out_top - self.share, np.inf)
        self.slack = np.minimum(self.margin.min(axis=1, initial=np.inf), self.prop_margin)
        self.slack_one = np.minimum(self.margin_one.min(axis=1, initial=np.inf), self.prop_one)
        self.low, self.low_value = _smallest_three(self.margin)
        self.low_one, self.low_one_value = _smallest_three(self.margin_one)
        owns = np.where(self.positive, self.own, np.inf)[:, None]
        self.poorest, self.poorest_value = _smallest_three(owns.T)

    # --- evaluating candidates -------------------------------------------------------------

    def evaluate(self, g: np.ndarray, h: np.ndarray, i: np.ndarray) -> Evaluation:
        """Every agent's slacks after each candidate: seat ``g[c]`` to agent ``i[c]`` and,
        where ``h[c] ≥ 0``, seat ``h[c]`` (held by ``i[c]``) to ``g[c]``'s holder."""
        count = len(g)
        rows = np.arange(count)
        j = self.owner[g]
        swap = h >= 0
        vg = self.vm[:, g].T  # vg[c, k] = v_k(g_c)
        vh = np.where(swap[:, None], self.vm[:, np.where(swap, h, 0)].T, 0.0)
        moved = vg - vh  # the change of every agent's view of bundle i (−moved: of bundle j)
        mx_i = np.maximum(np.where(swap[:, None], _without(self.in_top[:, i].T,
                                                          self.in_count[:, i].T,
                                                          self.in_second[:, i].T, vh),
                                   self.in_top[:, i].T), vg)
        mx_j = np.maximum(_without(self.in_top[:, j].T, self.in_count[:, j].T,
                                   self.in_second[:, j].T, vg), vh)
        change = np.zeros((count, self.n))  # of every agent's own value
        change[rows, i] = moved[rows, i]
        change[rows, j] = -moved[rows, j]
        own = self.own[None, :] + change
        view_i = (self.seats[:, i] + self.pool[:, i]).T + moved
        view_j = (self.seats[:, j] + self.pool[:, j]).T - moved
        ratio_i, ratio_j = self.ratio[:, i].T, self.ratio[:, j].T
        col_i = own - ratio_i * (view_i - self.coef[:, i].T * mx_i)
        col_j = own - ratio_j * (view_j - self.coef[:, j].T * mx_j)
        one_i = own - ratio_i * (view_i - mx_i)
        one_j = own - ratio_j * (view_j - mx_j)
        for column in (col_i, one_i):
            column[rows, i] = np.inf
        for column in (col_j, one_j):
            column[rows, j] = np.inf
        ef = self.ef[None, :]
        everyone = np.arange(self.n)
        rest = _rest(self.low, self.low_value, everyone, i, j) + change
        rest_one = _rest(self.low_one, self.low_one_value, everyone, i, j) + change
        slack = np.where(ef, np.minimum(rest, np.minimum(col_i, col_j)), np.inf)
        slack_one = np.where(ef, np.minimum(rest_one, np.minimum(one_i, one_j)), np.inf)
        # PROP rows: only i's and j's change (their own value and Mx(M ∖ A)).
        out_i = np.maximum(_without(self.out_top[i], self.out_count[i], self.out_second[i],
                                    vg[rows, i]), vh[rows, i])
        out_j = np.maximum(np.where(swap, _without(self.out_top[j], self.out_count[j],
                                                   self.out_second[j], vh[rows, j]),
                                    self.out_top[j]), vg[rows, j])
        prop = np.broadcast_to(self.prop_margin, (count, self.n)).copy()
        prop_one = np.broadcast_to(self.prop_one, (count, self.n)).copy()
        for who, out in ((i, out_i), (j, out_j)):
            mine = own[rows, who] - self.share[who]
            prop[rows, who] = np.where(self.prop[who], mine + self.base[who] * out, np.inf)
            prop_one[rows, who] = np.where(self.prop[who], mine + out, np.inf)
        welfare, tie = self._welfare(own, rows, i, j)
        return Evaluation(np.minimum(slack, prop), np.minimum(slack_one, prop_one),
                          welfare, tie)

    def _welfare(self, own: np.ndarray, rows: np.ndarray, i: np.ndarray,
                 j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos_i, pos_j = self.positive[i], self.positive[j]
        gain_i = np.where(pos_i, own[rows, i] - self.own[i], 0.0)
        gain_j = np.where(pos_j, own[rows, j] - self.own[j], 0.0)
        total = gain_i + gain_j
        if self.objective == "utilitarian":
            return total, np.zeros_like(total)
        if self.objective == "nash":
            def log(v: np.ndarray) -> np.ndarray:
                return np.log(np.maximum(v, NASH_ZERO))
            change = (np.where(pos_i, log(own[rows, i]) - log(self.own[i]), 0.0)
                      + np.where(pos_j, log(own[rows, j]) - log(self.own[j]), 0.0))
            return change, total
        others = _rest(self.poorest, self.poorest_value, np.zeros(1, dtype=np.int64), i, j)[:, 0]
        after = np.minimum(others, np.minimum(np.where(pos_i, own[rows, i], np.inf),
                                              np.where(pos_j, own[rows, j], np.inf)))
        before = float(self.poorest_value[0, 0])
        if not math.isfinite(before):
            return np.zeros_like(total), total
        return after - before, total

    # --- judging and taking ----------------------------------------------------------------

    def _floor(self, slack: np.ndarray) -> np.ndarray:
        held = slack >= -TOLERANCE
        return np.where(held, np.maximum(np.minimum(slack, 0.0), -HELD_FLOOR), slack) - NOISE

    def judge(self, e: Evaluation) -> tuple[np.ndarray, np.ndarray]:
        """Which candidates are taken (see the module docstring), and the columns of the key
        that orders them (fewer failing at λ = 1, fewer failing exactly, less shortfall, more
        welfare: ``np.lexsort`` of the rows, last row first)."""
        held = self.slack >= -TOLERANCE
        admissible = ((e.slack >= self._floor(self.slack)[None, :]).all(axis=1)
                      & ((e.slack_one >= self._floor(self.slack_one)[None, :])
                         | held[None, :]).all(axis=1))
        fail_one = ((e.slack_one < -TOLERANCE).sum(axis=1)
                    - int((self.slack_one < -TOLERANCE).sum()))
        inexact = (e.slack < -TOLERANCE).sum(axis=1) - int((~held).sum())
        shortfall = (np.where(e.slack < -TOLERANCE, -e.slack, 0.0).sum(axis=1)
                     - float(np.where(held, 0.0, -self.slack).sum()))
        welfare_up = (e.welfare > GAIN) | ((np.abs(e.welfare) <= GAIN) & (e.welfare_tie > GAIN))
        welfare_kept = e.welfare >= -GAIN
        counts_equal = (fail_one == 0) & (inexact == 0)
        taken = admissible & (
            (fail_one < 0) | ((fail_one == 0) & (inexact < 0))
            | (counts_equal & (((shortfall < -GAIN) & welfare_kept) | welfare_up))
        )
        key = np.vstack([-e.welfare_tie, -e.welfare, shortfall, inexact, fail_one])
        return taken, key

    def take(self, g: int, h: int, i: int) -> None:
        j = int(self.owner[g])
        self.owner[g] = i
        if h >= 0:
            self.owner[h] = j
        self._refresh((i, j))

    # --- candidates --------------------------------------------------------------------------

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(g, h, i) of this round's moves (h = −1) and swaps, best-looking first."""
        n, m = self.n, len(self.owner)
        if m == 0 or n < 2:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        holder_value = self.vm[self.owner, np.arange(m)]
        gain = self.vm - holder_value[None, :]  # gain[k, g]: k's value of g above its holder's
        gain[self.owner, np.arange(m)] = -np.inf
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        failing = np.nonzero(self.slack < -TOLERANCE)[0]
        if len(failing):
            wanted = np.where(self.vm[failing] > 0, gain[failing], -np.inf)
            best = np.argsort(-wanted, axis=1, kind="stable")[:, :REPAIR_SEATS]
            ok = np.isfinite(np.take_along_axis(wanted, best, axis=1))
            pairs.append((best[ok], np.repeat(failing[:, None], best.shape[1], axis=1)[ok]))
        receivers = np.argsort(-gain, axis=0, kind="stable")[:WELFARE_RECEIVERS]  # [r, g]
        gains = np.take_along_axis(gain, receivers, axis=0)
        ok = gains > GAIN
        seats = np.broadcast_to(np.arange(m)[None, :], receivers.shape)
        by_gain = np.argsort(-gains[ok], kind="stable")
        pairs.append((seats[ok][by_gain], receivers[ok][by_gain]))
        g = np.concatenate([p[0] for p in pairs]).astype(np.int64)
        i = np.concatenate([p[1] for p in pairs]).astype(np.int64)
        if not len(g):
            return g, g, i
        first = np.sort(np.unique(g * n + i, return_index=True)[1])
        # Repairs first, then by welfare gain, each move followed by its swap; as many as
        # ROUND_ELEMENTS allows.
        g, i = g[first][: ROUND_ELEMENTS // n], i[first][: ROUND_ELEMENTS // n]
        back = self._give_back(i, self.owner[g])
        order = np.column_stack([g, i, np.full(len(g), -1)])
        swaps = np.column_stack([g, i, back])
        both = np.stack([order, swaps], axis=1).reshape(-1, 3)
        both = both[(np.arange(len(both)) % 2 == 0) | (both[:, 2] >= 0)]
        return both[:, 0], both[:, 2], both[:, 1]

    def _give_back(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """For each pair, the seat of ``i`` that ``j`` values most above ``i`` (−1: none)."""
        order = np.argsort(self.owner, kind="stable")
        starts = np.searchsorted(self.owner[order], np.arange(self.n))
        ends = np.searchsorted(self.owner[order], np.arange(self.n), side="right")
        out = np.full(len(i), -1, dtype=np.int64)
        for agent in np.unique(i):
            mine = order[starts[agent]:ends[agent]]
            if not len(mine):
                continue
            at = np.nonzero(i == agent)[0]
            edge = self.vm[j[at]][:, mine] - self.vm[agent, mine][None, :]
            out[at] = mine[edge.argmax(axis=1)]
        return out


def _taken(state: Exchange, g: np.ndarray, h: np.ndarray, i: np.ndarray) -> bool:
    taken, _ = state.judge(state.evaluate(g, h, i))
    return bool(taken[0])


def exchange_seats(
    instance: Instance, allocation: Allocation, objective: Objective, deadline: float
) -> Outcome | None:
    """The allocation with seats moved and swapped as the module docstring says, shares kept;
    None when no move was taken. ``instance`` is plain, canonical and validated."""
    if not instance.indivisible or len(instance.agents) < 2:
        return None
    state = Exchange(instance, allocation, objective)
    moves = swaps = 0
    for _ in range(MAX_ROUNDS):
        g, h, i = state.candidates()
        if not len(g) or time.monotonic() >= deadline:
            break
        per_chunk = max(1, CHUNK // state.n)
        taken_parts, key_parts = [], []
        for first in range(0, len(g), per_chunk):
            part = slice(first, first + per_chunk)
            taken, key = state.judge(state.evaluate(g[part], h[part], i[part]))
            taken_parts.append(taken)
            key_parts.append(key)
            if time.monotonic() >= deadline:
                break
        taken = np.concatenate(taken_parts)
        key = np.hstack(key_parts)[:, taken]
        chosen = np.nonzero(taken)[0][np.lexsort(key)]
        giver = state.owner[g]
        took = 0
        for c in chosen:
            # The first was judged on the current seats: taking it costs one refresh, so it is
            # taken even at the deadline (the evaluation that found it stopped there).
            if took and time.monotonic() >= deadline:
                break
            one = np.array([c])
            # The first is judged on the current seats; the others since changed, and a
            # candidate whose seats changed hands meanwhile is not one any more.
            if took and (state.owner[g[c]] != giver[c]
                         or (h[c] >= 0 and state.owner[h[c]] != i[c])
                         or not _taken(state, g[one], h[one], i[one])):
                continue
            state.take(int(g[c]), int(h[c]), int(i[c]))
            took += 1
            if h[c] >= 0:
                swaps += 1
            else:
                moves += 1
        if not took:
            break
    if not moves and not swaps:
        return None
    log.info("seat exchange: %d moves, %d swaps", moves, swaps)
    indivisible: dict[str, str | None] = {
        good: state.names[k] for good, k in zip(state.goods, state.owner, strict=True)
    }
    return Outcome(Allocation(indivisible=indivisible, divisible=allocation.divisible),
                   moves, swaps)
