"""The scalable path's view of an instance: dense numpy arrays, and one seat assignment.

:class:`Data` holds the instance in canonical order as matrices of normalised values, with each
agent's family of rows (``kind``: PROP_KIND, EF_KIND or EFM_KIND) and the goods grouped into
kinds that no value or constraint tells apart; :class:`Seats` holds the constants of one
assignment of the indivisible goods (an ``owner`` array: the agent index holding each good,
-1 for none). :func:`seat_owners` and :func:`allocation_from` convert between those arrays and
an :class:`~allocator.instance.Allocation`.
"""

from __future__ import annotations

import numpy as np

from allocator.arrays import value_matrices
from allocator.certificate import ZERO_SHARE
from allocator.criteria import EF_TYPE, PROP_TYPE, base_factor
from allocator.instance import Allocation, Instance

# Data.kind: an agent's family of rows (PROP-type, weighted EF-type, or unweighted EFM).
PROP_KIND, EF_KIND, EFM_KIND = 0, 1, 2


class Data:
    """The instance as dense numpy arrays in canonical (sorted) order."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.agents = [a.name for a in instance.agents]
        self.index = {a: k for k, a in enumerate(self.agents)}
        self.goods = list(instance.indivisible)
        self.good_index = {g: k for k, g in enumerate(self.goods)}
        self.pools = list(instance.divisible)
        n, m, d = len(self.agents), len(self.goods), len(self.pools)
        raw_m, raw_d = value_matrices(instance)
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


class Seats:
    """Constants of one indivisible assignment: S[i,j] = V_i(seats of j)/T_i, Mx, Mx_out."""

    def __init__(self, data: Data, owner: np.ndarray) -> None:
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


def seat_owners(data: Data, allocation: Allocation) -> np.ndarray:
    """The allocation's indivisible goods as an owner array (agent index per good, -1: none)."""
    owner = np.full(len(data.goods), -1)
    for g, holder in allocation.indivisible.items():
        if holder is not None:
            owner[data.good_index[g]] = data.index[holder]
    return owner


def allocation_from(data: Data, owner: np.ndarray, x: np.ndarray) -> Allocation:
    """The allocation of an owner array and shares ``x[j, d]`` (clipped to [0, 1]; a pool's
    shares rescaled to sum to 1, or to at most 1 where the pool is optional)."""
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
