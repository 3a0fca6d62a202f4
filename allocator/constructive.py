"""Constructive fair division with guarantees: EFM (Bei et al. 2021) and a PROP^α construction.

Both run in polynomial time without a solver. ``divide`` uses them as the MILP's warm start
and as the fallback when the solver hits its time limit; the result is always certified by
the one checker, which reports the λ it actually achieves.

* :func:`efm_allocation` — Bei, Li, Liu, Liu and Lu, "Fair Division of Mixed Divisible and
  Indivisible Goods" (AIJ 2021), for homogeneous divisible goods: envy-cycle elimination
  (Lipton et al. 2004) gives an EF1 allocation of the indivisible goods; then the divisible
  goods are poured, in equal pieces, into an *addable set* — agents whom nobody envies and whom
  nobody outside the set values as much as their own bundle — until someone outside becomes
  indifferent; cycles of the envy/equality graph that contain an envy edge are rotated away.
  Every step keeps EFM, so the output is EFM (hence unweighted EF1). Arithmetic is exact
  (fractions), because the algorithm branches on equalities.
* :func:`prop_alpha_allocation` — a greedy construction in normalised values: each
  indivisible good goes to the agent with the highest value of it per unit of divisible value
  (``v_i(g)/(T_i − V_i(M))``) among agents still below their proportional share; then the
  divisible goods top every agent up to its PROP^α target, in equal fractions of every
  divisible good, and the rest is split by weight. Its output is checked; it is a best-effort
  construction (see docs/fairness.md) — the MILP is what guarantees PROP^α.

Neither supports the cluster layer's side constraints; they apply to plain instances only.
"""

from __future__ import annotations

from fractions import Fraction

from allocator.errors import SolverError
from allocator.instance import Allocation, Instance


def _has_side_constraints(instance: Instance) -> bool:
    return bool(instance.forbidden or instance.requires or instance.caps or instance.optional)


def supports(instance: Instance) -> bool:
    """True when the constructive algorithms apply (a plain instance, no side constraints)."""
    return not _has_side_constraints(instance)


def efm_allocation(instance: Instance) -> Allocation:
    """An EFM allocation of a plain instance (no side constraints)."""
    if _has_side_constraints(instance):
        raise ValueError("efm_allocation: side constraints are not supported")
    agents = [a.name for a in instance.agents]
    n = len(agents)
    val = [[Fraction(instance.value(i, g)) for g in instance.indivisible] for i in agents]
    uval = [[Fraction(instance.value(i, d)) for d in instance.divisible] for i in agents]
    bundle_goods: list[list[int]] = [[] for _ in agents]  # bundle k: indivisible good indices
    bundle_share: list[list[Fraction]] = [[Fraction(0)] * len(instance.divisible) for _ in agents]
    owner = list(range(n))  # owner[k]: the agent holding bundle k
    # view[i][k] = agent i's value of bundle k
    view = [[Fraction(0)] * n for _ in agents]

    def own(i: int) -> int:
        return owner.index(i)

    def rotate(cycle: list[int]) -> None:
        # Each agent on the cycle takes the bundle of the agent it points to.
        targets = [own(cycle[(p + 1) % len(cycle)]) for p in range(len(cycle))]
        for agent, bundle in zip(cycle, targets, strict=True):
            owner[bundle] = agent

    def find_cycle(edge: list[list[int]], need_strict: bool) -> list[int] | None:
        # edge[i][j]: 2 strict envy, 1 equality, 0 none. DFS for a cycle (with a strict edge).
        for start in range(n):
            stack = [(start, [start], False)]
            seen: set[tuple[int, bool]] = set()
            while stack:
                node, path, strict = stack.pop()
                for nxt in range(n):
                    kind = edge[node][nxt]
                    if not kind:
                        continue
                    s2 = strict or kind == 2
                    if nxt == start and (s2 or not need_strict):
                        return path
                    if nxt in path or (nxt, s2) in seen:
                        continue
                    seen.add((nxt, s2))
                    stack.append((nxt, [*path, nxt], s2))
        return None

    def edges(with_equal: bool) -> list[list[int]]:
        out = [[0] * n for _ in range(n)]
        for i in range(n):
            mine = view[i][own(i)]
            for j in range(n):
                if i == j:
                    continue
                theirs = view[i][own(j)]
                if theirs > mine:
                    out[i][j] = 2
                elif with_equal and theirs == mine:
                    out[i][j] = 1
        return out

    # Phase 1: envy-cycle elimination over the indivisible goods.
    for g in range(len(instance.indivisible)):
        while True:
            e = edges(with_equal=False)
            sources = [j for j in range(n) if not any(e[i][j] for i in range(n))]
            if sources:
                break
            cycle = find_cycle(e, need_strict=True)
            assert cycle is not None  # a graph without sources has a cycle
            rotate(cycle)
        k = own(sources[0])
        bundle_goods[k].append(g)
        for i in range(n):
            view[i][k] += val[i][g]

    # Phase 2: pour the divisible goods into addable sets.
    remaining = [Fraction(1)] * len(instance.divisible)
    limit = 50 * n * n + 1000
    for _ in range(limit):
        if not any(remaining):
            break
        e = edges(with_equal=True)
        cycle = find_cycle(e, need_strict=True)
        if cycle is not None:
            rotate(cycle)
            continue
        members = _addable_set(e, n)
        pool = [sum((r * u for r, u in zip(remaining, uval[i], strict=True)), Fraction(0))
                for i in range(n)]
        step = Fraction(1, len(members))
        inside = set(members)
        for i in range(n):
            if i in inside or pool[i] == 0:
                continue
            mine = view[i][own(i)]
            for j in members:
                step = min(step, (mine - view[i][own(j)]) / pool[i])
        for j in members:
            k = own(j)
            for d, r in enumerate(remaining):
                bundle_share[k][d] += step * r
            for i in range(n):
                view[i][k] += step * pool[i]
        remaining = [r * (1 - step * len(members)) for r in remaining]
    else:
        raise SolverError("efm_allocation: the divisible phase did not finish")

    indivisible: dict[str, str | None] = {}
    divisible: dict[str, dict[str, float]] = {d: {} for d in instance.divisible}
    for k in range(n):
        holder = agents[owner[k]]
        for g in bundle_goods[k]:
            indivisible[instance.indivisible[g]] = holder
        for d, share in enumerate(bundle_share[k]):
            if share:
                divisible[instance.divisible[d]][holder] = float(share)
    for good, shares in divisible.items():
        if not shares and agents:
            shares[agents[0]] = 1.0  # nothing was poured: nobody has anything to compare
        total = sum(shares.values())
        divisible[good] = {i: x / total for i, x in shares.items()}
    return Allocation(indivisible=indivisible, divisible=divisible)


def _addable_set(edge: list[list[int]], n: int) -> list[int]:
    """Agents nobody envies, closed under incoming equality edges (Bei et al.'s addable set)."""
    j = 0
    for _ in range(n + 1):
        members = {j}
        frontier = [j]
        while frontier:
            node = frontier.pop()
            for i in range(n):
                if edge[i][node] == 1 and i not in members:
                    members.add(i)
                    frontier.append(i)
        envier = next(
            (i for i in range(n) for m in members if edge[i][m] == 2), None
        )
        if envier is None:
            return sorted(members)
        j = envier
    raise SolverError("efm_allocation: no addable set (the graph has an envy cycle)")


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
    """Indivisible goods by a weighted picking sequence; divisible goods split by weight.

    The agent with the fewest picks per unit of weight picks next (ties: name order), taking
    its most valuable remaining good in normalised value that it may hold (forbidden pairs and
    caps respected). With equal weights this is round robin, which is EF1 on the indivisible
    goods; with weights it is the weighted picking sequence of Chakraborty, Igarashi,
    Suksompong and Zick (2021), which is WEF1. ``divide`` uses it as the fixed indivisible part
    of its fix-and-optimise step, where an LP then divides the divisible goods.
    """
    agents = [a.name for a in instance.agents]
    weight = {a.name: a.weight for a in instance.agents}
    total = {
        i: sum(instance.value(i, g) for g in (*instance.indivisible, *instance.divisible))
        or 1.0
        for i in agents
    }
    caps = {i: [(set(group), most) for group, most in instance.caps.get(i, ())] for i in agents}
    remaining = sorted(instance.indivisible)
    picks = dict.fromkeys(agents, 0)
    indivisible: dict[str, str | None] = dict.fromkeys(instance.indivisible)
    active = list(agents)
    while remaining and active:
        i = min(active, key=lambda a: ((picks[a] + 1) / weight[a], a))
        options = [
            g for g in remaining
            if (i, g) not in instance.forbidden
            and all(g not in group or most > 0 for group, most in caps[i])
        ]
        if not options:
            active.remove(i)
            continue
        g = max(options, key=lambda h: (instance.value(i, h) / total[i], [-ord(c) for c in h]))
        if instance.value(i, g) <= 0 and g in instance.optional:
            active.remove(i)
            continue
        indivisible[g] = i
        remaining.remove(g)
        picks[i] += 1
        caps[i] = [(group, most - (g in group)) for group, most in caps[i]]
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
