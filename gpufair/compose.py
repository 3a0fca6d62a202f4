"""Composition: each part's configuration, built from the settings, in one place.

The parts (``allocator``, ``executor``, ``api``) never read gpufair's settings: each defines
the configuration type it needs and takes it as an argument. This module, at the top, is the
only one that knows both sides — one function per part maps the settings (and, for a solve, the
command's flags) onto that part's type — and every command and the API's tests go through it,
so the mapping cannot differ between them.

The solve flags that ``gpufair divide`` and ``gpufair allocate`` share live here too: one place
adds them (with the allocator's own lists of solvers and objectives as choices) and one function
applies them, so a flag given as ``0`` is a value, not "unset", and a value the allocator
refuses (``--time-limit 0``) is an input error, never silently replaced by the setting.
"""

from __future__ import annotations

import argparse
import os

from allocator import OBJECTIVES, Objective
from allocator.options import SOLVERS, SolveOptions, SolverName
from api.config import ApiConfig
from executor.scheduling.config import SchedulerConfig
from gpufair import __version__
from gpufair.settings import (
    DEVELOPMENT_ADMIN_TOKEN,
    AllocatorSettings,
    ExecutorSettings,
    Settings,
)


def solve_options(
    settings: AllocatorSettings,
    *,
    solver: SolverName | None = None,
    time_limit_s: float | None = None,
    gap: float | None = None,
    objective: Objective | None = None,
    churn_limit: int | None = None,
) -> SolveOptions:
    """``[allocator]`` with each value given here (not None) in its place; InstanceError if one
    is out of range. No objective: the input's own (the API's default is :func:`api_config`'s)."""
    return SolveOptions(
        solver=solver if solver is not None else settings.solver,
        time_limit_s=time_limit_s if time_limit_s is not None else settings.time_limit_s,
        gap=gap if gap is not None else settings.gap,
        objective=objective,
        churn_limit=churn_limit if churn_limit is not None else settings.churn_limit,
    )


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


def flagged_solve_options(
    settings: AllocatorSettings, args: argparse.Namespace, churn_limit: int | None = None
) -> SolveOptions:
    """:func:`solve_options` with the flags of :func:`add_solve_flags` that were given."""
    return solve_options(
        settings,
        solver=args.solver,
        time_limit_s=args.time_limit,
        gap=args.gap,
        objective=args.objective,
        churn_limit=churn_limit,
    )


def scheduler_config(settings: ExecutorSettings) -> SchedulerConfig:
    """The executor's scheduler knobs from ``[executor]``; the rest keep the scheduler's own."""
    return SchedulerConfig(
        max_queue=settings.max_queue,
        batch_max_delay_s=settings.batch_max_delay_ms / 1000.0,
        max_batch_candidates=settings.max_batch_candidates,
        drain_timeout_s=settings.drain_timeout_s,
        memory_limit_mb=settings.memory_limit_mb,
    )


def front_count(settings: ExecutorSettings, cores: int | None = None) -> int:
    """The executor's front processes: ``fronts``, or for 0 one per 8 of the node's cores (at
    least one), so that the fronts' reading and parsing keeps up with what the engine serves
    and leaves it most of the cores."""
    if settings.fronts > 0:
        return settings.fronts
    available = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, available // 8)


def api_config(settings: Settings) -> ApiConfig:
    """The control plane's configuration from ``[database]``, ``[api]`` and ``[allocator]``."""
    return ApiConfig(
        version=__version__,
        database_url=settings.database.url,
        database_echo=settings.database.echo,
        database_pool_size=settings.database.pool_size,
        database_wait_timeout_s=settings.database.wait_timeout_s,
        host=settings.api.host,
        port=settings.api.port,
        admin_token=settings.api.admin_token,
        development_admin_token=DEVELOPMENT_ADMIN_TOKEN,
        dev_mode=settings.api.dev_mode,
        max_body_bytes=settings.api.max_body_bytes,
        artifact_check_memory_mb=settings.api.artifact_check_memory_mb,
        artifact_check_timeout_s=settings.api.artifact_check_timeout_s,
        max_long_poll_s=settings.api.max_long_poll_s,
        failed_credentials_per_minute=settings.api.failed_credentials_per_minute,
        solve_interval_s=settings.api.solve_interval_s,
        sla_history_s=settings.api.sla_history_s,
        solve_options=solve_options(settings.allocator),
        default_objective=settings.allocator.objective,
    )
