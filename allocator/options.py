"""Options of one allocator solve, shared by the core (``divide``) and the cluster layer.

A frozen value so that a solve is a pure function of (instance or snapshot, options). The
defaults are for library users and tests, and equal the ``[allocator]`` settings' (a test
guards it); a deployment's options are built from its settings and the commands' flags by the
composition layer (``gpufair/compose.py``) and handed to the allocator and the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from allocator.errors import InstanceError
from allocator.objectives import OBJECTIVES, Objective

SolverName = Literal["highs", "cbc"]
SOLVERS: tuple[SolverName, ...] = ("highs", "cbc")


@dataclass(frozen=True)
class Churn:
    """At most ``limit`` indivisible goods change holder from ``previous`` (cluster layer)."""

    previous: dict[str, str]  # indivisible good -> its previous holder
    limit: int


@dataclass(frozen=True)
class SolveOptions:
    solver: SolverName = "highs"  # MILP backend: HiGHS via highspy, or CBC shipped with PuLP
    time_limit_s: float = 8.0  # wall-clock limit of the whole solve (all MILP rounds together)
    gap: float = 1e-4  # relative MIP gap at which the solver may stop
    objective: Objective | None = None  # None: the instance's (or snapshot's) own objective
    churn_limit: int | None = None  # cluster layer: most seat moves from the previous plan

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise InstanceError(f"options.solver: expected one of {SOLVERS}, got {self.solver!r}")
        if not self.time_limit_s > 0:
            raise InstanceError(f"options.time_limit_s: must be positive, got {self.time_limit_s}")
        if not 0 <= self.gap <= 1:
            raise InstanceError(f"options.gap: must lie in [0, 1], got {self.gap}")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise InstanceError(
                f"options.objective: expected one of {OBJECTIVES}, got {self.objective!r}"
            )
        if self.churn_limit is not None and self.churn_limit < 0:
            raise InstanceError(f"options.churn_limit: must be ≥ 0, got {self.churn_limit}")
