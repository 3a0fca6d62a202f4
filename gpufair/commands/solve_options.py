"""The solve flags that ``gpufair divide`` and ``gpufair allocate`` share, and their overlay.

Both commands solve with :class:`allocator.options.SolveOptions` built from ``[allocator]`` of
the settings, each value replaced by its flag when the flag is given. One place adds the flags
(with the allocator's own lists of solvers and objectives as choices) and one function applies
them, so the two commands cannot drift apart: a flag given as ``0`` is a value, not "unset",
and a value the allocator refuses (``--time-limit 0``) is an input error, never silently
replaced by the setting.
"""

from __future__ import annotations

import argparse

from allocator.options import SOLVERS, SolveOptions
from allocator.snapshot import OBJECTIVES
from gpufair.settings import AllocatorSettings


def add_solve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objective", choices=OBJECTIVES,
                        help="objective among fair allocations (default: the input's own)")
    parser.add_argument("--solver", choices=SOLVERS,
                        help="MILP backend (default: settings allocator.solver)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="wall-clock limit of the solve, > 0 (default: settings "
                        "allocator.time_limit_s)")
    parser.add_argument("--gap", type=float,
                        help="relative MIP gap in [0, 1] (default: settings allocator.gap)")


def solve_options(
    settings: AllocatorSettings, args: argparse.Namespace, churn_limit: int | None = None
) -> SolveOptions:
    """The settings with each given flag in place of its value; InstanceError if out of range."""
    return SolveOptions(
        solver=args.solver if args.solver is not None else settings.solver,
        time_limit_s=args.time_limit if args.time_limit is not None else settings.time_limit_s,
        gap=args.gap if args.gap is not None else settings.gap,
        objective=args.objective,
        churn_limit=churn_limit if churn_limit is not None else settings.churn_limit,
    )
