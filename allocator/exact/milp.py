"""The fair-division MILP: the only module of gpufair that imports PuLP.

One model serves every criterion and objective of docs/architecture.md §2. Binary ``y[i,g]`` gives
the indivisible good ``g`` to agent ``i``; continuous ``x[i,d]`` is ``i``'s share of the divisible
good ``d``. Values are divided by each agent's total ``T_i`` so that every row has coefficients
in [0, 1] (HiGHS's tolerances then mean the same thing for every agent).

"Up to a good" terms such as ``Mx_i(A_j)`` are maxima; the model writes them with continuous
``z`` variables on a simplex restricted to the goods in question (``z ≤ y``, ``Σ z ≤ 1``):
with integral ``y`` the best ``z`` picks exactly the most valuable good, so the formulation is
exact without extra binaries. Goods an agent values equally are grouped into one class per
agent, which keeps these families small on clusters (the seats of one GPU are identical).

EF-type constraints are O(n²·m). They are added lazily: solve, check every envy pair with the
one checker (allocator.certificate), add the violated pairs, solve again — a subset of the
constraints that is infeasible proves the full set infeasible, and a solution of a subset that
violates no pair is a solution of the full set. Each round may warm-start HiGHS from a known
allocation (the previous round's or a constructive one).

Statuses: a proven optimum is "optimal"; a solution returned at the time limit or gap is
"feasible" (accepted, with its gap); infeasibility raises InfeasibleError; a time limit without
a solution raises SolverTimeoutError; anything else raises SolverError.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pulp

from allocator.certificate import TOLERANCE, ZERO_SHARE, bundles, certify, constraint_terms
from allocator.criteria import EF_TYPE, PROP_TYPE, base_factor
from allocator.errors import InfeasibleError, SolverError, SolverTimeoutError
from allocator.instance import Allocation, Instance
from allocator.objectives import NASH_FLOOR, NASH_POINTS, Objective
from allocator.options import Churn

log = logging.getLogger(__name__)

# Envy pairs added per agent and round: the worst ones only. Adding every violated pair at once
# inflates the model with pairs the next solution satisfies anyway.
PAIRS_PER_ROUND = 2


@dataclass(frozen=True)
class MilpResult:
    allocation: Allocation
    status: str  # "optimal" or "feasible"
    gap: float | None  # relative MIP gap reported by the solver (None: unknown)
    solver: str
    rounds: int  # solves done (lazy envy rounds, second stages)
    objective: float  # the model's objective value (normalised units)


class _Data:
    """The instance flattened for the model: indices, normalised values, goods grouped by type.

    Indivisible goods that no agent and no side constraint tells apart (the seats of one GPU)
    form one *type* with an integer count per agent instead of one binary per good: the model
    shrinks by the number of seats per GPU and, above all, loses the symmetry that makes
    branch-and-bound enumerate identical seat permutations.
    """

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.agents = [a.name for a in instance.agents]
        self.spec = {a.name: a for a in instance.agents}
        self.weight_sum = sum(a.weight for a in instance.agents)
        self.total: dict[str, float] = {}
        self.alpha: dict[str, float] = {}
        self.nv: dict[str, dict[str, float]] = {}
        for i in self.agents:
            vals = instance.values.get(i, {})
            indiv = sum(vals.get(g, 0.0) for g in instance.indivisible)
            t = indiv + sum(vals.get(d, 0.0) for d in instance.divisible)
            self.total[i] = t
            self.alpha[i] = indiv / t if t > 0 else 0.0
            goods = (*instance.indivisible, *instance.divisible)
            self.nv[i] = {g: vals.get(g, 0.0) / t for g in goods if t > 0 and vals.get(g, 0.0)}
        self.types = self._types(instance)
        self.type_of = {g: c for c, members in enumerate(self.types) for g in members}
        self.allowed = {
            (i, c)
            for i in self.agents
            for c, members in enumerate(self.types)
            if (i, members[0]) not in instance.forbidden
        }
        self.holders: dict[int, list[str]] = defaultdict(list)
        for i in self.agents:
            for c in range(len(self.types)):
                if (i, c) in self.allowed:
                    self.holders[c].append(i)
        self.required_types = {
            d: sorted({self.type_of[g] for g in goods}) for d, goods in instance.requires.items()
        }
        # Agent i may take a share of d only where it may hold one of d's required goods.
        self.share_ok = {
            (i, d)
            for i in self.agents
            for d in instance.divisible
            if d not in instance.requires
            or any((i, c) in self.allowed for c in self.required_types[d])
        }
        # classes[i]: (value, types) for each positive value i gives to indivisible goods
        self.classes: dict[str, list[tuple[float, list[int]]]] = {}
        for i in self.agents:
            by_value: dict[float, list[int]] = defaultdict(list)
            for c, members in enumerate(self.types):
                v = self.nv[i].get(members[0], 0.0)
                if v > 0:
                    by_value[v].append(c)
            self.classes[i] = sorted(by_value.items(), reverse=True)
        self.positive = [i for i in self.agents if self.total[i] > 0]

    @staticmethod
    def _types(instance: Instance) -> list[list[str]]:
        requires_of: dict[str, list[str]] = defaultdict(list)
        for d, goods in instance.requires.items():
            for g in goods:
                requires_of[g].append(d)
        caps_of: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for i, caps in instance.caps.items():
            for k, (group, _) in enumerate(caps):
                for g in group:
                    caps_of[g].append((i, k))
        forbidden_of: dict[str, list[str]] = defaultdict(list)
        for i, g in instance.forbidden:
            forbidden_of[g].append(i)
        groups: dict[tuple[object, ...], list[str]] = {}
        for g in instance.indivisible:
            key = (
                tuple(instance.value(a.name, g) for a in instance.agents),
                tuple(sorted(forbidden_of[g])),
                tuple(requires_of[g]),
                tuple(caps_of[g]),
                g in instance.optional,
            )
            groups.setdefault(key, []).append(g)
        return list(groups.values())


class _Model:
    """One PuLP problem over the data; families are added by the methods below."""

    def __init__(self, data: _Data, name: str) -> None:
        self.data = data
        self.prob = pulp.LpProblem(name, pulp.LpMaximize)
        self.idx = {a: k for k, a in enumerate(data.agents)}
        self.didx = {d: k for k, d in enumerate(data.instance.divisible)}
        self.y = {}
        for i, c in sorted(data.allowed, key=lambda p: (self.idx[p[0]], p[1])):
            size = len(data.types[c])
            self.y[i, c] = pulp.LpVariable(
                f"y_{self.idx[i]}_{c}", 0, size,
                cat=pulp.LpBinary if size == 1 else pulp.LpInteger,
            )
        self.x = {
            (i, d): pulp.LpVariable(f"x_{self.idx[i]}_{self.didx[d]}", 0, 1)
            for i, d in sorted(data.share_ok, key=lambda p: (self.idx[p[0]], self.didx[p[1]]))
        }
        self.flags: dict[str, pulp.LpVariable] = {}
        self._completeness()

    def _add(self, constraint: pulp.LpConstraint, name: str) -> None:
        self.prob.addConstraint(constraint, name)

    def view(self, i: str, j: str) -> pulp.LpAffineExpression:
        """V_i(A_j) / T_i as an expression of j's variables."""
        nv, types = self.data.nv[i], self.data.types
        terms = [
            (var, nv[types[c][0]])
            for (k, c), var in self._held(j)
            if types[c][0] in nv
        ]
        terms += [(self.x[j, d], nv[d]) for d in self.data.instance.divisible
                  if d in nv and (j, d) in self.x]
        return pulp.LpAffineExpression(terms)

    def _held(self, j: str) -> list[tuple[tuple[str, int], pulp.LpVariable]]:
        return [((j, c), self.y[j, c]) for c in range(len(self.data.types)) if (j, c) in self.y]

    def _completeness(self) -> None:
        inst, types = self.data.instance, self.data.types
        # Every indivisible good goes to exactly one agent (at most one if optional).
        for c, members in enumerate(types):
            holders = [self.y[i, c] for i in self.data.holders.get(c, [])]
            if not holders:
                continue  # forbidden to everyone: stays unallocated (validate_allocation allows it)
            total = pulp.lpSum(holders)
            count = len(members)
            rule = total <= count if members[0] in inst.optional else total == count
            self._add(rule, f"good_once_{c}")
        # Every divisible good is divided completely (at most completely if optional).
        for d in inst.divisible:
            total = pulp.lpSum(self.x[i, d] for i in self.data.agents if (i, d) in self.x)
            rule = total <= 1 if d in inst.optional else total == 1
            self._add(rule, f"divided_{self.didx[d]}")
        # A share of a coupled divisible good needs one of its required goods (streams are
        # usable only on a GPU where the tenant holds a seat).
        for (i, d), share in self.x.items():
            if d in self.data.required_types:
                seats = pulp.lpSum(
                    self.y[i, c] for c in self.data.required_types[d] if (i, c) in self.y
                )
                self._add(share <= seats, f"share_needs_seat_{self.idx[i]}_{self.didx[d]}")
        # Caps: an agent holds at most so many goods of a group (replicas wanted, demand).
        for i, caps in inst.caps.items():
            for k, (group, most) in enumerate(caps):
                kinds = sorted({self.data.type_of[g] for g in group})
                held = [self.y[i, c] for c in kinds if (i, c) in self.y]
                if sum(len(types[c]) for c in kinds if (i, c) in self.y) > most:
                    self._add(pulp.lpSum(held) <= most, f"cap_{self.idx[i]}_{k}")

    def churn(self, churn: Churn) -> None:
        # Stability: at most `limit` goods leave their previous holder (seat moves). Goods of a
        # type are interchangeable, so a move is a drop in an agent's count of the type.
        before: dict[tuple[str, int], int] = defaultdict(int)
        for g, p in churn.previous.items():
            if g in self.data.type_of and p in self.idx:
                before[p, self.data.type_of[g]] += 1
        moved: list[pulp.LpAffineExpression | pulp.LpVariable | int] = []
        for (p, c), count in sorted(before.items(), key=lambda kv: (self.idx[kv[0][0]], kv[0][1])):
            if (p, c) not in self.y:
                moved.append(count)
                continue
            drop = pulp.LpVariable(f"moved_{self.idx[p]}_{c}", 0, count)
            self._add(drop >= count - self.y[p, c], f"moves_{self.idx[p]}_{c}")
            moved.append(drop)
        if moved:
            self._add(pulp.lpSum(moved) <= churn.limit, "churn_moves")

    def _max_out(self, i: str) -> pulp.LpAffineExpression:
        """Mx_i(M ∖ A_i)/T_i: a value class counts if i does not hold all of its goods."""
        k = self.idx[i]
        z = []
        for c, (v, kinds) in enumerate(self.data.classes[i]):
            var = pulp.LpVariable(f"zo_{k}_{c}", 0, 1)
            not_held = sum(len(self.data.types[t]) for t in kinds) - pulp.lpSum(
                self.y[i, t] for t in kinds if (i, t) in self.y
            )
            self._add(var <= not_held, f"maxout_{k}_{c}")
            z.append((var, v))
        if z:
            self._add(pulp.lpSum(var for var, _ in z) <= 1, f"maxout_one_{k}")
        return pulp.LpAffineExpression(z)

    def _max_in(self, i: str, j: str, budget: pulp.LpAffineExpression | float) -> (
        pulp.LpAffineExpression
    ):
        """Mx_i(A_j)/T_i, with the simplex Σz ≤ budget."""
        k, kj = self.idx[i], self.idx[j]
        z = []
        for c, (v, kinds) in enumerate(self.data.classes[i]):
            held = [self.y[j, t] for t in kinds if (j, t) in self.y]
            if not held:
                continue
            var = pulp.LpVariable(f"zi_{k}_{kj}_{c}", 0, 1)
            self._add(var <= pulp.lpSum(held), f"maxin_{k}_{kj}_{c}")
            z.append((var, v))
        if z:
            self._add(pulp.lpSum(var for var, _ in z) <= budget, f"maxin_one_{k}_{kj}")
        return pulp.LpAffineExpression(z)
    def proportionality(self, i: str, lam: float | pulp.LpVariable) -> None:
        # PROP-type criteria: V_i(A_i) + f_i·Mx_i(M∖A_i) ≥ (w_i/W)·T_i, all divided by T_i.
        spec = self.data.spec[i]
        f = base_factor(spec.criterion, self.data.alpha[i])
        f += lam * (1 - f)
        share = spec.weight / self.data.weight_sum
        lhs = self.view(i, i)
        if not isinstance(f, int | float) or f > 0:
            lhs = lhs + f * self._max_out(i)
        self._add(lhs >= share, f"prop_{self.idx[i]}")

    def envy(self, i: str, j: str, lam: float | pulp.LpVariable) -> None:
        # EF-type criteria, pair (i, j): weighted EF up to f_i of j's best good (EFM: unweighted,
        # exact towards bundles holding a divisible share, relaxed by λ only there).
        spec, other = self.data.spec[i], self.data.spec[j]
        name = f"envy_{self.idx[i]}_{self.idx[j]}"
        own, theirs = self.view(i, i), self.view(i, j)
        if spec.criterion == "efm":
            mx = self._max_in(i, j, 1 - (1 - lam) * self._divisible_flag(j))
            self._add(own - theirs + mx >= 0, name)
            return
        f = base_factor(spec.criterion, self.data.alpha[i])
        f += lam * (1 - f)
        ratio = spec.weight / other.weight
        positive = not isinstance(f, int | float) or f > 0
        rhs = theirs - f * self._max_in(i, j, 1) if positive else theirs
        self._add(own - ratio * rhs >= 0, name)

    def _divisible_flag(self, j: str) -> pulp.LpVariable:
        """Binary h_j ≥ every share of j: 1 when j may hold some divisible good."""
        if j not in self.flags:
            kj = self.idx[j]
            flag = pulp.LpVariable(f"h_{kj}", cat=pulp.LpBinary)
            # EFM distinguishes bundles with a divisible share; h_j marks them.
            for d in self.data.instance.divisible:
                if (j, d) in self.x:
                    self._add(self.x[j, d] <= flag, f"holds_divisible_{kj}_{self.didx[d]}")
            self.flags[j] = flag
        return self.flags[j]

    def objective(self, objective: Objective | None) -> None:
        """Set the objective; None: a feasibility problem (the solver stops at any solution)."""
        data = self.data
        if objective is None:
            self.prob.setObjective(pulp.LpAffineExpression())
        elif objective == "utilitarian":
            self.prob.setObjective(pulp.lpSum(self.view(i, i) for i in data.positive))
        elif objective == "egalitarian":
            t = pulp.LpVariable("t_min", 0, 1)
            # The objective is the smallest normalised value.
            for i in data.positive:
                self._add(t <= self.view(i, i), f"egal_{self.idx[i]}")
            self.prob.setObjective(t)
        else:
            logs = []
            for i in data.positive:
                k = self.idx[i]
                lv = pulp.LpVariable(f"log_{k}", NASH_FLOOR, 0)
                own = self.view(i, i)
                # Tangent cuts: log is concave, so log(v) ≤ log(a) + (v − a)/a at every a.
                for c, a in enumerate(NASH_POINTS):
                    self._add(lv <= math.log(a) + (own - a) * (1 / a), f"nash_cut_{k}_{c}")
                logs.append(lv)
            self.prob.setObjective(pulp.lpSum(logs))

    def floor(self, level: float) -> None:
        # Second egalitarian stage: keep every normalised value at the proven max-min level.
        for i in self.data.positive:
            self._add(self.view(i, i) >= level, f"egal_floor_{self.idx[i]}")

    def start(self, allocation: Allocation | None) -> dict[pulp.LpVariable, float]:
        if allocation is None:
            return {}
        start = {var: 0.0 for var in self.y.values()}
        for g, holder in allocation.indivisible.items():
            c = self.data.type_of.get(g)
            if holder is not None and c is not None and (holder, c) in self.y:
                start[self.y[holder, c]] += 1.0
        return start

    def allocation(self, previous: dict[str, str] | None = None) -> Allocation:
        """The solution as an allocation; goods of a type stay with their previous holder
        where the counts allow, and are otherwise handed out in name order."""
        inst = self.data.instance
        indivisible: dict[str, str | None] = dict.fromkeys(inst.indivisible)
        for c, members in enumerate(self.data.types):
            left = {
                i: round(self.y[i, c].varValue or 0.0)
                for i in self.data.holders.get(c, [])
            }
            free = []
            for g in members:
                p = (previous or {}).get(g)
                if p is not None and left.get(p, 0) > 0:
                    indivisible[g] = p
                    left[p] -= 1
                else:
                    free.append(g)
            queue = [i for i in self.data.agents for _ in range(max(0, left.get(i, 0)))]
            for g, i in zip(free, queue, strict=False):
                indivisible[g] = i
        divisible: dict[str, dict[str, float]] = {}
        for d in inst.divisible:
            shares = {}
            for i in self.data.agents:
                if (i, d) in self.x:
                    value = min(1.0, max(0.0, self.x[i, d].varValue or 0.0))
                    if value > ZERO_SHARE:
                        shares[i] = value
            total = sum(shares.values())
            if total > 0 and (d not in inst.optional or total > 1):
                shares = {i: v / total for i, v in shares.items()}
            divisible[d] = shares
        return Allocation(indivisible=indivisible, divisible=divisible)


class _HighsStarted(pulp.HiGHS):  # type: ignore[misc, name-defined]
    """HiGHS through highspy, handed a (partial) starting solution before it runs."""

    def __init__(self, start: dict[pulp.LpVariable, float], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._start = start

    def callSolver(self, lp: pulp.LpProblem) -> None:  # noqa: N802 - PuLP's name
        if self._start:
            index = np.array([v.index for v in self._start], dtype=np.int32)
            value = np.array(list(self._start.values()), dtype=np.float64)
            lp.solverModel.setSolution(len(index), index, value)
        lp.solverModel.run()


def _run(
    model: _Model, solver: str, time_limit: float, gap: float, start: Allocation | None
) -> tuple[str, float | None]:
    """Solve once; return (status, gap) or raise the typed error for the solver's verdict."""
    prob = model.prob
    limit = max(0.05, time_limit)
    began = time.monotonic()
    if solver == "highs":
        backend = _HighsStarted(
            model.start(start), msg=False, timeLimit=limit, gapRel=gap, threads=1
        )
    else:
        for var, value in model.start(start).items():
            var.setInitialValue(value)
        backend = pulp.PULP_CBC_CMD(
            msg=False, timeLimit=limit, gapRel=gap, warmStart=start is not None, threads=1
        )
    try:
        prob.solve(backend)
    except pulp.PulpSolverError as exc:
        raise SolverError(f"{solver}: {exc}") from exc
    status, sol = prob.status, prob.sol_status
    elapsed = time.monotonic() - began
    if sol == pulp.LpSolutionOptimal:
        return "optimal", 0.0
    if sol == pulp.LpSolutionIntegerFeasible:
        mip_gap = None
        if solver == "highs":
            mip_gap = float(prob.solverModel.getInfo().mip_gap)
        return "feasible", mip_gap if mip_gap is None or math.isfinite(mip_gap) else None
    if status == pulp.LpStatusInfeasible or sol == pulp.LpSolutionInfeasible:
        raise InfeasibleError(f"{solver}: the model is infeasible")
    if elapsed >= limit * 0.95:
        raise SolverTimeoutError(f"{solver}: no solution within {limit:.3g} s")
    raise SolverError(
        f"{solver}: status {pulp.LpStatus.get(status, status)!r}, solution status {sol}"
    )


def solve_fair(
    instance: Instance,
    *,
    objective: Objective | None,
    lambda_ef: float = 0.0,
    lambda_prop: float = 0.0,
    solver: str = "highs",
    gap: float = 1e-4,
    deadline: float,
    start: Allocation | None = None,
    churn: Churn | None = None,
    fair: bool = True,
    exact: frozenset[str] = frozenset(),
) -> MilpResult:
    """Best allocation meeting every agent's (relaxed) criterion, by lazy envy rounds.

    ``exact`` names agents whose criterion is not relaxed whatever λ (the guaranteed ones).
    ``objective=None`` asks only for feasibility. ``fair=False`` drops the criteria (the
    unconstrained optimum used for the welfare ratio). ``deadline`` is a time.monotonic() value
    shared by all rounds.
    """
    data = _Data(instance)
    ef_agents = [i for i in data.positive if data.spec[i].criterion in EF_TYPE] if fair else []
    pairs: set[tuple[str, str]] = set()
    rounds = 0
    stage_floor: float | None = None
    stage_objective = objective
    while True:
        rounds += 1
        model = _Model(data, "gpufair_divide")
        if fair:
            for i in data.positive:
                if data.spec[i].criterion in PROP_TYPE:
                    model.proportionality(i, 0.0 if i in exact else lambda_prop)
            for i, j in sorted(pairs):
                model.envy(i, j, 0.0 if i in exact else lambda_ef)
        if churn is not None:
            model.churn(churn)
        if stage_floor is not None:
            model.floor(stage_floor)
        model.objective(stage_objective)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SolverTimeoutError(f"{solver}: time limit reached after {rounds - 1} rounds")
        status, mip_gap = _run(model, solver, remaining, gap, start)
        allocation = model.allocation(churn.previous if churn else None)
        value = float(pulp.value(model.prob.objective) or 0.0)
        new_pairs = _violated_pairs(
            instance, allocation, [i for i in ef_agents if i not in exact], lambda_ef, pairs
        ) | _violated_pairs(instance, allocation, [i for i in ef_agents if i in exact], 0.0,
                            pairs)
        log.debug("round %d: %s, objective %.6g, %d new envy pairs", rounds, status,
                  value, len(new_pairs))
        if new_pairs:
            pairs |= new_pairs
            start = allocation
            continue
        if stage_objective == "egalitarian" and stage_floor is None:
            # Second stage: among max-min allocations, the most utilitarian (ties broken).
            stage_floor = max(0.0, value - 1e-7)
            stage_objective = "utilitarian"
            start = allocation
            continue
        return MilpResult(allocation, status, mip_gap, solver, rounds, value)


def _violated_pairs(
    instance: Instance, allocation: Allocation, ef_agents: list[str], lam: float,
    known: set[tuple[str, str]] | None = None,
    per_agent: int = PAIRS_PER_ROUND,
) -> set[tuple[str, str]]:
    """New violated envy pairs: for each agent its ``per_agent`` worst ones."""
    if not ef_agents:
        return set()
    known = known or set()
    b = bundles(instance, allocation)
    violated: set[tuple[str, str]] = set()
    for i in ef_agents:
        worst = sorted(
            (a + slope * lam, j)
            for j, a, slope in constraint_terms(instance, b, i)
            if j is not None and (i, j) not in known and a + slope * lam < -TOLERANCE / 4
        )
        violated.update((i, j) for _, j in worst[:per_agent])
    return violated


def unconstrained_optimum(
    instance: Instance,
    objective: Objective,
    *,
    solver: str,
    gap: float,
    deadline: float,
    churn: Churn | None = None,
) -> float | None:
    """The objective's optimum without fairness criteria (None if it cannot be had in time).

    allocator.division computes the separable case (utilitarian, no coupling) without a solver.
    """
    try:
        result = solve_fair(
            instance, objective=objective, solver=solver, gap=gap, deadline=deadline,
            churn=churn, fair=False,
        )
    except (SolverError, InfeasibleError) as exc:
        log.warning("unconstrained optimum not computed: %s", exc)
        return None
    return certify(instance, result.allocation, objective=objective).objective_value
