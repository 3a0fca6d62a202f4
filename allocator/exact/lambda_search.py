"""The λ search around the exact MILP (docs/architecture.md §2).

Every agent's own criterion first; if no allocation meets them all, the EF-type agents are
relaxed by the smallest λ (bisection on feasibility, then one solve at the λ found), and only if
EF1 for them is still infeasible, the PROP-type agents likewise. Its welfare is the optimum
among the allocations that meet the criteria so relaxed. PuLP is imported on the first solve
(by allocator.exact.milp), so that importing this module, and ``divide``'s, stays light.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from allocator.criteria import EF_TYPE
from allocator.errors import InfeasibleError
from allocator.instance import Allocation, Instance
from allocator.objectives import Objective
from allocator.options import Churn, SolveOptions

if TYPE_CHECKING:
    from allocator.exact.milp import MilpResult

log = logging.getLogger(__name__)

BISECTION_STEPS = 7  # λ to within 1/128 before the exact λ is read off the final allocation


class LambdaSearch:
    """The MILP with the λ search of docs/architecture.md §2 around it."""

    def __init__(
        self,
        instance: Instance,
        objective: Objective,
        options: SolveOptions,
        deadline: float,
        start: Allocation | None,
        churn: Churn | None,
        exact: frozenset[str] = frozenset(),
    ) -> None:
        self.instance = instance
        self.objective = objective
        self.options = options
        self.deadline = deadline
        self.start = start
        self.churn = churn
        self.exact = exact  # agents never relaxed (the guaranteed ones)
        # What the search proved about λ* (the least λ_ef at which an allocation meets every
        # criterion, PROP-type exactly): every λ below this was found infeasible by the MILP.
        # 1.0 when even λ_ef = 1 is infeasible (then λ_prop is searched).
        self.lower_bound = 0.0

    def solve(
        self, lambda_ef: float, lambda_prop: float, objective: Objective | None
    ) -> MilpResult:
        from allocator.exact.milp import solve_fair

        return solve_fair(
            self.instance,
            objective=objective,
            lambda_ef=lambda_ef,
            lambda_prop=lambda_prop,
            solver=self.options.solver,
            gap=self.options.gap,
            deadline=self.deadline,
            start=self.start,
            churn=self.churn,
            exact=self.exact,
        )

    def feasible(self, lambda_ef: float, lambda_prop: float) -> bool:
        try:
            self.solve(lambda_ef, lambda_prop, None)
        except InfeasibleError:
            return False
        return True

    def relaxed(self) -> MilpResult:
        try:
            return self.solve(0.0, 0.0, self.objective)
        except InfeasibleError:
            log.info("the criteria are infeasible as stated; searching the smallest λ")
        has_ef = any(a.criterion in EF_TYPE for a in self.instance.agents)
        if has_ef and self.feasible(1.0, 0.0):
            lam = self._bisect(lambda x: self.feasible(x, 0.0))
            return self.solve(lam, 0.0, self.objective)
        self.lower_bound = 1.0
        if not self.feasible(1.0, 1.0):
            raise InfeasibleError(
                "no allocation meets the side constraints even with every criterion relaxed "
                "to EF1/PROP1"
            )
        mu = self._bisect(lambda x: self.feasible(1.0, x))
        return self.solve(1.0, mu, self.objective)

    def _bisect(self, feasible: Any) -> float:
        low, high = 0.0, 1.0
        for _ in range(BISECTION_STEPS):
            mid = (low + high) / 2
            if feasible(mid):
                high = mid
            else:
                low = mid
        self.lower_bound = max(self.lower_bound, low)
        return high
