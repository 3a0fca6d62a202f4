"""Bounds on the share LP's first stage after one seat move, with no LP solve.

The seat search (allocator.scalable.search) ranks and takes moves by these bounds: keeping the
current shares gives an upper bound on the violation after a move, the first stage's row duals
a lower bound (derived in :class:`Moves`).
"""

from __future__ import annotations

import numpy as np

from allocator.certificate import ZERO_SHARE
from allocator.scalable.data import Data, Seats

# Candidate moves scored at once (rows of the C × n arrays); bounds memory at large sizes.
MOVE_CHUNK = 4096


def _top_two(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``values`` (masked entries −inf): the largest value (0 if none), how many
    entries reach it, and the largest value below it (0 if none)."""
    top = values.max(axis=1, initial=-np.inf)
    count = np.where(np.isfinite(top), (values == top[:, None]).sum(axis=1), 0)
    below = np.where(values < top[:, None], values, -np.inf).max(axis=1, initial=-np.inf)
    return (np.where(np.isfinite(top), top, 0.0), count,
            np.where(np.isfinite(below), below, 0.0))


class Moves:
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
        self, data: Data, seats: Seats, x: np.ndarray, dual_ef: np.ndarray,
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
