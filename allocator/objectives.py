"""The objectives: the welfare ``divide`` maximises among fair allocations, and its ratio.

Utilitarian (the sum), Nash (the sum of logs) and egalitarian (the minimum) of the agents'
normalised values ``V_i(A_i)/T_i``. :func:`objective_value` is the exact value a certificate
reports and :func:`objective_ratio` its welfare ratio (docs/fairness.md); the exact MILP
(allocator.exact.milp) and the share LP (allocator.scalable.share_lp) write the same
objectives into their own models, Nash through the tangent cuts at ``NASH_POINTS``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

Objective = Literal["utilitarian", "nash", "egalitarian"]

OBJECTIVES: tuple[Objective, ...] = ("utilitarian", "nash", "egalitarian")

# The Nash objective (Σ log of normalised values) enters the MILP and the share LP through
# tangent cuts log(v) ≤ log(a) + (v − a)/a at these points (a geometric grid), with the log
# variables bounded below by NASH_FLOOR (below the log of the smallest point).
NASH_POINTS = tuple(1e-4 * 1.5**k for k in range(23)) + (1.0,)
NASH_FLOOR = -12.0


def objective_value(objective: Objective, normalised: Iterable[float]) -> float:
    """Utilitarian Σ, Nash Σ log, egalitarian min of normalised values (agents with T_i > 0)."""
    values = list(normalised)
    if not values:
        return 0.0
    if objective == "utilitarian":
        return sum(values)
    if objective == "egalitarian":
        return min(values)
    return sum(math.log(v) if v > 0 else -math.inf for v in values)


def objective_ratio(objective: Objective, value: float, best: float, count: int) -> float | None:
    """Welfare against the unconstrained optimum; for Nash the ratio of geometric means."""
    if objective == "nash":
        if not math.isfinite(best) or count == 0:
            return None
        return math.exp((value - best) / count) if math.isfinite(value) else 0.0
    if best <= 0:
        return 1.0
    return value / best
