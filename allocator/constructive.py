"""Constructions with guarantees: EFM (Bei et al. 2021), weighted picking (Chakraborty et al.
2021), and a greedy PROP^α warm start.

Each runs in polynomial time without a solver; allocator.guarantee picks the one that the
guarantees table (docs/fairness.md) says covers the most agents of an instance, and the one
checker certifies what it returns.

* :func:`efm_allocation` — Bei, Li, Liu, Liu and Lu, "Fair Division of Mixed Divisible and
  Indivisible Goods" (AIJ 2021), for homogeneous divisible goods. The indivisible goods by
  round robin (EF1, hence EFM while nobody holds a divisible good). Then the divisible goods
  are poured into *addable sets* — bundles nobody envies, closed under "someone outside values
  a member's bundle as much as its own" — in equal uniform fractions of every remaining
  divisible good, until someone outside becomes indifferent; cycles of the envy/equality graph
  that contain an envy edge are rotated away. Every pour gives each member the same fraction of
  every divisible good, so all the divisible goods act as one homogeneous good worth
  ``U_i = Σ_d u_i(d)`` to agent i, and the pieces form the perfect partitions the algorithm
  needs. Every step keeps EFM, so the output is EFM.

  Arithmetic is in floats on values normalised by ``T_i``, with a tie rule: a difference
  within ``TIE`` (1e-11) counts as equality. A pour ends exactly on an equality (up to rounding,
  ~1e-16), which the rule sees as one; a rotation moves an agent along an edge worth at least
  ``−TIE`` to it, so each rotation can cost an agent at most ``TIE`` against the exact run.
  With at most ``MAX_ROTATIONS`` rotations every EFM margin stays above
  ``−(MAX_ROTATIONS + 1)·TIE`` = −1e-7, ten times inside the checker's tolerance (1e-6); past
  that cap the construction stops with a SolverError rather than return something unproven.
  Only the columns of the current addable set are computed per step, so a step costs
  ``O(n·|S|)``: 512 agents × 2,048 seats + 512 pools takes a fraction of a second.
* :func:`picking_allocation` — the weighted picking sequence of Chakraborty, Igarashi,
  Suksompong and Zick ("Weighted Envy-Freeness in Indivisible Item Allocation", TEAC 2021): the
  agent with the fewest picks per unit of weight, ``t_i/w_i``, picks next (ties: name order),
  its most valued remaining good; divisible goods split by weight. On a plain instance it is
  weighted EF1 on the seats, and the split by weight adds the same ``U_i/W`` to both sides of
  every weighted comparison, so it is weighted EF1 (the checker's ``ef1``) on the whole.
* :func:`prop_alpha_allocation` — a greedy construction in normalised values (see its
  docstring), the exact MILP's warm start; best effort, not a guarantee.

The first and last apply to plain instances only (no side constraints of the cluster layer);
the picking sequence respects them (forbidden pairs, caps, optional goods, coupled pools).
"""

from __future__ import annotations

import heapq

import numpy as np

from allocator.arrays import value_matrices
from allocator.errors import SolverError
from allocator.instance import Allocation, Instance

# Differences of normalised values within this count as equal in efm_allocation (see above).
TIE = 1e-11
MAX_ROTATIONS = 10_000


def _has_side_constraints(instance: Instance) -> bool:
    return bool(instance.forbidden or instance.requires or instance.caps or instance.optional)


def supports(instance: Instance) -> bool:
    """True when the plain constructions apply (no side constraints)."""
    return not _has_side_constraints(instance)


def efm_allocation(instance: Instance) -> Allocation:
    """An EFM allocation of a plain instance (no side constraints); see the module docstring."""
    if _has_side_constraints(instance):
        raise ValueError("efm_allocation: side constraints are not supported")
    vm, vd = value_matrices(instance)
    n = len(instance.agents)
    total = vm.sum(axis=1) + vd.sum(axis=1)
    scale = np.where(total > 0, total, 1.0)
    seats = vm / scale[:, None]
    owner = _round_robin(seats)
    by_bundle = np.zeros((n, n))  # by_bundle[k, i]: agent i's value of bundle k
    np.add.at(by_bundle, owner, seats.T)
    pour = _Pour(by_bundle, vd.sum(axis=1) / scale)
    if len(instance.divisible):
        pour.run()
    agents = [a.name for a in instance.agents]
    holder = np.empty(n, dtype=np.int64)
    holder[pour.bundle_of] = np.arange(n)  # holder[k]: the agent holding bundle k
    indivisible: dict[str, str | None] = {
        g: agents[holder[k]] for g, k in zip(instance.indivisible, owner, strict=True)
    }
    cake = pour.cake / pour.cake.sum() if pour.cake.sum() > 0 else np.full(n, 1.0 / n)
    shares = {agents[holder[k]]: float(c) for k, c in enumerate(cake) if c > 0}
    divisible = {d: dict(shares) for d in instance.divisible}
    return Allocation(indivisible=indivisible, divisible=divisible)


def _round_robin(values: np.ndarray) -> np.ndarray:
    """Round robin over the goods (agents in order, each taking its most valued remaining
    good): the bundle index (= the agent's) of every good. Goods that every agent values alike
    form one type with a count, so each pick skips exhausted types, not goods."""
    n, m = values.shape
    owner = np.zeros(m, dtype=np.int64)
    if m == 0:
        return owner
    columns = np.ascontiguousarray(values.T)
    types: dict[bytes, int] = {}
    kind = np.array([types.setdefault(columns[g].tobytes(), len(types)) for g in range(m)])
    counts = np.bincount(kind)
    members = [list(np.nonzero(kind == t)[0][::-1]) for t in range(len(counts))]
    type_values = np.zeros((n, len(counts)))
    type_values[:, kind] = values
    preference = np.argsort(-type_values, axis=1, kind="stable")
    pointer = np.zeros(n, dtype=np.int64)
    left = counts.copy()
    for turn in range(m):
        i = turn % n
        while left[preference[i, pointer[i]]] == 0:
            pointer[i] += 1
        t = preference[i, pointer[i]]
        left[t] -= 1
        owner[members[t].pop()] = i
    return owner


class _Pour:
    """Phase 2 of efm_allocation: pouring the divisible goods (one homogeneous good worth
    ``cake[i]`` to agent i) into addable sets, rotating envy cycles."""

    def __init__(self, by_bundle: np.ndarray, cake: np.ndarray) -> None:
        self.n = len(cake)
        # by_bundle[k, i]: agent i's (normalised) value of bundle k; bundle-major, so that a
        # pour into bundles and the columns of D read contiguous rows
        self.by_bundle = by_bundle
        self.value_of_cake = cake
        self.bundle_of = np.arange(self.n)  # the bundle each agent holds
        self.cake = np.zeros(self.n)  # fraction of the divisible goods in bundle k
        self.rotations = 0

    def columns(self, agents: np.ndarray) -> np.ndarray:
        """D[:, agents] with D[i, j] = V_i(A_j) − V_i(A_i)."""
        own = self.by_bundle[self.bundle_of, np.arange(self.n)]
        return self.by_bundle[self.bundle_of[agents]].T - own[:, None]

    def run(self) -> None:
        rest, start = 1.0, 0
        for _ in range(4 * self.n * self.n + 100):
            if rest <= 0:
                return
            members, block, cycle = self._addable(start)
            if cycle is not None:
                self._rotate(cycle)
                continue
            start = int(members[0])
            step = rest / len(members)
            inside = np.zeros(self.n, dtype=bool)
            inside[members] = True
            outside = ~inside & (self.value_of_cake > 0)
            if outside.any():
                gaps = -block[outside].max(axis=1)  # > TIE: no edge from outside into S
                limit = float((gaps / self.value_of_cake[outside]).min())
                if limit < step:
                    step = limit
                    rest -= step * len(members)
                else:
                    rest = 0.0
            else:
                rest = 0.0
            k = self.bundle_of[members]
            self.cake[k] += step
            self.by_bundle[k] += self.value_of_cake[None, :] * step
        raise SolverError("efm_allocation: the divisible phase did not finish")

    def _addable(self, start: int) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
        """An addable set (its members and their columns of D), or an envy cycle to rotate.

        The ancestors of ``start`` in the graph of envy and equality edges are closed under
        incoming edges; if none of those edges is envy, they are addable. If ``k`` envies a
        member ``l``, either ``l`` is an ancestor of ``k`` (a cycle with an envy edge) or the
        ancestors of ``k`` are a strictly smaller closed set without ``l``: try again there."""
        members, block, successor = self._ancestors(start)
        for _ in range(self.n + 1):
            envious = block > TIE
            if not envious.any():
                return members, block, None
            k, column = divmod(int(envious.argmax()), block.shape[1])
            envied = int(members[column])
            members, block, successor = self._ancestors(k)
            if successor[envied] >= 0:
                path = [envied]
                while path[-1] != k:
                    path.append(int(successor[path[-1]]))
                return members, block, path
        raise SolverError("efm_allocation: no addable set")

    def _ancestors(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every agent with a path to ``j`` (breadth first), their columns of D, and for each
        the next agent on its path (``successor[j] = j``; −1: not an ancestor)."""
        successor = np.full(self.n, -1)
        successor[j] = j
        order = [np.array([j])]
        blocks = [self.columns(order[0])]
        while True:
            edges = blocks[-1] >= -TIE
            new = edges.any(axis=1) & (successor < 0)
            if not new.any():
                break
            found = np.nonzero(new)[0]
            successor[found] = order[-1][edges[found].argmax(axis=1)]
            order.append(found)
            blocks.append(self.columns(found))
        return np.concatenate(order), np.concatenate(blocks, axis=1), successor

    def _rotate(self, cycle: list[int]) -> None:
        """Each agent on the cycle takes the bundle of the agent it points to."""
        self.rotations += 1
        if self.rotations > MAX_ROTATIONS:
            raise SolverError("efm_allocation: too many rotations for the tie rule's bound")
        taken = [self.bundle_of[cycle[(p + 1) % len(cycle)]] for p in range(len(cycle))]
        for agent, bundle in zip(cycle, taken, strict=True):
            self.bundle_of[agent] = bundle


def prop_alpha_allocation(instance: Instance) -> Allocation:
    """The greedy PROP^α construction described in the module docstring (plain instances)."""
    if _has_side_constraints(instance):
        raise ValueError("prop_alpha_allocation: side constraints are not supported")
    agents = [a.name for a in instance.agents]
    weight_sum = sum(a.weight for a in instance.agents)
    share = {a.name: a.weight / weight_sum for a in instance.agents}
    total = {
        i: sum(instance.value(i, g) for g in (*instance.indivisible, *instance.divisible))
        for i in agents
    }
    nv = {
        i: {g: instance.value(i, g) / total[i] for g in instance.indivisible} if total[i] else {}
        for i in agents
    }
    alpha = {i: sum(nv[i].values()) for i in agents}
    beta = {i: 1.0 - alpha[i] for i in agents}
    held: dict[str, float] = dict.fromkeys(agents, 0.0)
    indivisible: dict[str, str | None] = {}
    order = sorted(
        instance.indivisible,
        key=lambda g: (-max((nv[i].get(g, 0.0) for i in agents), default=0.0), g),
    )
    for g in order:
        below = [i for i in agents if total[i] and held[i] < share[i]] or agents

        def ratio(i: str, g: str = g) -> tuple[float, float, str]:
            v = nv[i].get(g, 0.0)
            return (v / beta[i] if beta[i] > 0 else float("inf") if v > 0 else 0.0, v, i)

        winner = max(below, key=lambda i: (ratio(i)[0], ratio(i)[1], [-ord(c) for c in i]))
        indivisible[g] = winner
        held[winner] += nv[winner].get(g, 0.0)
    need: dict[str, float] = {}
    for i in agents:
        if not total[i] or beta[i] <= 0:
            need[i] = 0.0
            continue
        out = max((v for g, v in nv[i].items() if indivisible[g] != i), default=0.0)
        deficit = share[i] - held[i] - alpha[i] * out
        need[i] = max(0.0, deficit) / beta[i]
    used = sum(need.values())
    scale = 1.0 / used if used > 1.0 else 1.0
    fractions = {i: need[i] * scale for i in agents}
    rest = 1.0 - sum(fractions.values())
    for i in agents:
        fractions[i] += rest * share[i]
    divisible = {
        d: {i: x for i, x in fractions.items() if x > 0} for d in instance.divisible
    }
    return Allocation(indivisible=indivisible, divisible=divisible)


def picking_allocation(instance: Instance) -> Allocation:
    """Indivisible goods by the weighted picking sequence; divisible goods split by weight.

    The agent with the fewest picks per unit of weight (``t_i/w_i``, ties: name order) picks
    next, taking its most valuable remaining good that it may hold (forbidden pairs and caps
    respected). On a plain instance this is weighted EF1 (module docstring; round robin with
    equal weights). ``divide`` uses it for the guarantee of weighted EF1 and as the fixed seats
    of the scalable path's start when side constraints rule out the fractional relaxation.
    """
    agents = [a.name for a in instance.agents]
    weight = {a.name: a.weight for a in instance.agents}
    goods = sorted(instance.indivisible)
    column = {g: k for k, g in enumerate(instance.indivisible)}
    vm, _ = value_matrices(instance)
    values = vm[:, [column[g] for g in goods]] if goods else vm
    # Each agent's goods from most to least valued, ties in name order: a good once taken,
    # forbidden or in a group whose cap is reached stays so, so each agent's pointer only moves
    # forward.
    preference = np.argsort(-values, axis=1, kind="stable")
    taken = np.zeros(len(goods), dtype=bool)
    pointer = [0] * len(agents)
    caps = {i: [(set(group), most) for group, most in instance.caps.get(i, ())] for i in agents}
    picks = dict.fromkeys(agents, 0)
    indivisible: dict[str, str | None] = dict.fromkeys(instance.indivisible)
    turns = [(0.0, name, k) for k, name in enumerate(agents)]  # (t_i/w_i, name): next picker
    heapq.heapify(turns)
    left = len(goods)
    while left and turns:
        _, i, k = heapq.heappop(turns)
        row, p = preference[k], pointer[k]
        while p < len(goods) and (
            taken[row[p]] or (i, goods[row[p]]) in instance.forbidden
            or any(goods[row[p]] in group and most <= 0 for group, most in caps[i])
        ):
            p += 1
        pointer[k] = p
        if p == len(goods):
            continue  # nothing left it may hold: it picks no more
        g = goods[row[p]]
        if values[k, row[p]] <= 0 and g in instance.optional:
            continue
        indivisible[g] = i
        taken[row[p]] = True
        left -= 1
        picks[i] += 1
        caps[i] = [(group, most - (g in group)) for group, most in caps[i]]
        heapq.heappush(turns, (picks[i] / weight[i], i, k))
    remaining = [g for g, t in zip(goods, taken, strict=True) if not t]
    for g in remaining:
        if g not in instance.optional:
            indivisible[g] = next(
                (i for i in agents if (i, g) not in instance.forbidden), None
            )
    divisible: dict[str, dict[str, float]] = {}
    for d in instance.divisible:
        # Split by weight among the agents that may hold a share (coupled goods: those holding
        # one of the required goods); a good nobody may share stays unallocated.
        needed = instance.requires.get(d)
        takers = [
            i for i in agents
            if needed is None or any(indivisible[g] == i for g in needed)
        ]
        weight_sum = sum(weight[i] for i in takers)
        divisible[d] = {i: weight[i] / weight_sum for i in takers}
    return Allocation(indivisible=indivisible, divisible=divisible)
