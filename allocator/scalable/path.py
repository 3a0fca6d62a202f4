"""The scalable path of ``divide``: seats fixed first, divisible goods by one LP.

The exact MILP (allocator.exact.milp) decides every indivisible good and every share at once;
past a few agents and kinds of goods it no longer finishes in seconds. This path splits the
decision:

1. **Indivisible goods.** On plain instances, the rounded fractional relaxation of
   allocator.scalable.fractional (every good divisible, every criterion exact). With side
   constraints (the cluster layer's forbidden pairs, caps, coupled pools) or a churn bound, the
   weighted picking sequence of Chakraborty, Igarashi, Suksompong and Zick ("Weighted
   Envy-Freeness in Indivisible Item Allocation", TEAC 2021) — next picker argmin
   (picks_i + 1)/w_i, each taking its most valued remaining good it may hold; round robin (EF1
   on the seats) with equal weights, WEF1 otherwise — with previous holders keeping their goods
   under a churn bound.
2. **Divisible goods** are divided by one LP (allocator.scalable.share_lp: HiGHS through
   highspy, matrices built with numpy). Once the indivisible goods are fixed every ``Mx_i(·)``
   is a constant, so every criterion of docs/architecture.md §2 is a linear row in the shares
   ``x_jd``, the relaxation λ and a non-negative per-agent slack ``s_i`` (the amount, as a
   fraction of ``T_i``, by which the agent's criterion would fail). The LP is solved
   lexicographically: minimise Σ s_i with λ = 1 (every row is weakest there, so this is the
   least violation any λ allows); then, with the slacks kept, minimise 1000·λ_prop + λ_ef
   (PROP-type agents are relaxed only where EF1 is not enough, as in the MILP's λ search); then,
   with both kept, maximise the objective. EF-type rows are O(n²) and are added lazily: all
   currently violated pairs per round, until none is violated (each stage's final solution
   satisfies every row, so the next stage is always feasible); the first solve starts with the
   pairs the relaxation's own shares leave tight.
3. **Seat moves** while some slack remains and time is left (allocator.scalable.search, with the
   bounds of allocator.scalable.moves). Moving one good from ``j`` to ``i`` changes only
   constants of the first stage (the right-hand sides at λ = 1), so two bounds on its new
   optimum cost no solve: keeping the current shares gives an *upper* bound (the slacks those
   shares need under the new seats, every envy pair counted); the stage's row duals give a
   *lower* bound (its optimal value is convex in the right-hand sides, and the duals are a
   subgradient). A move whose upper bound is below the current violation is an improvement for
   sure and is taken without a solve; otherwise the moves whose lower bound leaves room are
   re-solved in that order and the first that lowers Σ s is kept. Only the final assignment goes
   through the second and third stages. On plain instances the search first gets SEARCH_SHARE of
   the time; if slack remains then, allocator.scalable.fractional.relaxation_bound says whether
   any allocation could meet every criterion at λ = 1 (``Outcome.lower_bound``), and a search
   that share cut short goes on.
4. **Fewest failing agents.** If slack remains, the first stage is re-solved a few times with
   reweighted slacks (:meth:`~allocator.scalable.share_lp.ShareLp.concentrate`) so that it falls
   on as few agents as possible before the later stages.

Nothing here is a guarantee: the certificate says what holds (docs/fairness.md). PuLP is not
imported, so this path starts fast.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from allocator import constructive
from allocator.constructive import picking_allocation
from allocator.instance import Allocation, Instance
from allocator.objectives import Objective
from allocator.scalable.data import Data, Seats, allocation_from, seat_owners
from allocator.scalable.fractional import Guidance, fractional_seats, relaxation_bound
from allocator.scalable.search import Search
from allocator.scalable.share_lp import VIOLATED

log = logging.getLogger(__name__)

# Share of the time after the first solve (less the finishing reserve) that the seat search
# may use before the relaxation bound is computed (on plain instances with a criterion still
# failing): the bound needs its time (about 1.5 s at 64 × 64); a search the share cut short
# then goes on in the rest.
SEARCH_SHARE = 0.3
# Most of the time left that the fractional relaxation may take; if it runs out, the picking
# sequence still has time for its share LP.
FRACTIONAL_SHARE = 0.6
# Envy rows of the share LP's first solve taken from the relaxation's answer: per EF-type
# agent, the pairs whose margin there is within this of its tightest (normalised units).
SEED_MARGIN = 0.003
# ... and of those at most this many per agent. Measured on the benchmark's instances: at
# 64 × 64 about 4 pairs per EF-type agent lie within SEED_MARGIN (no change); at 256 × 64
# about 120, and the first solve with all of them took 3.7 s, so the share LP did not finish
# within the default 8 s and divide fell back to the picking sequence.
SEED_PAIRS_PER_AGENT = 8


@dataclass(frozen=True)
class Outcome:
    """The best allocation of this path and the numbers its LP proved for it."""

    allocation: Allocation
    # Σ s_i at λ = 1 of the returned shares: the total slack the criteria still lack (0: every
    # criterion holds at some λ ≤ 1)
    violation: float
    lambda_ef: float
    lambda_prop: float
    objective: float  # the LP's objective value in normalised units (its welfare stage)
    moves: int  # seat moves the local search kept
    start: str  # where the seats came from: "fractional" or "picking"
    # The fractional relaxation's bound: the least total violation of *any* allocation at
    # λ = 1 (allocator.scalable.fractional.relaxation_bound); None when it was not computed.
    lower_bound: float | None = None


def _start(instance: Instance, previous: dict[str, str] | None) -> Allocation:
    """The picking sequence; with a churn bound, previous holders keep their goods first."""
    if not previous:
        return picking_allocation(instance)
    agents = {a.name for a in instance.agents}
    kept = {
        g: p for g, p in previous.items()
        if g in instance.indivisible and p in agents and (p, g) not in instance.forbidden
    }
    rest = picking_allocation(instance)
    for i, caps in instance.caps.items():
        for group, most in caps:
            if sum(1 for g, p in kept.items() if p == i and g in group) > most:
                # Keeping every previous seat would break a cap: start from the picking order.
                return rest
    return Allocation(
        indivisible={g: kept.get(g, rest.indivisible[g]) for g in instance.indivisible},
        divisible=rest.divisible,
    )


def _seed_rows(data: Data, owner: np.ndarray, guidance: Guidance) -> list[tuple[int, int]]:
    """Envy pairs likely to bind in the first share LP: those the relaxation's pool shares
    leave tightest under the rounded seats (saves the LP rounds that would add them)."""
    seats = Seats(data, owner)
    view = seats.value + data.vd @ guidance.pools.T
    own = np.diag(view)[:, None]
    margin = own - data.ratio * (view - seats.max_in)
    margin[~data.ef_rows, :] = np.inf
    np.fill_diagonal(margin, np.inf)
    tight = margin <= margin.min(axis=1, keepdims=True) + SEED_MARGIN
    # At most SEED_PAIRS_PER_AGENT per agent, the tightest: past a hundred agents nearly
    # every pair lies within SEED_MARGIN, and a first solve with all of them costs more than
    # the rounds that add the few that bind.
    rank = np.argsort(np.argsort(margin, axis=1, kind="stable"), axis=1, kind="stable")
    tight &= rank < SEED_PAIRS_PER_AGENT
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(tight & np.isfinite(margin)),
                                               strict=True)]


def divide_fixed_seats(
    instance: Instance,
    objective: Objective,
    deadline: float,
    *,
    previous: dict[str, str] | None = None,
    churn_limit: int | None = None,
) -> Outcome:
    """The scalable path on a canonical, validated instance (see the module docstring).

    Raises SolverError only when HiGHS fails or the deadline passes before the first LP ends.
    """
    data = Data(instance)
    search = Search(data, objective, deadline, previous, churn_limit)
    guidance = None
    if constructive.supports(instance) and len(data.goods) and churn_limit is None:
        now = time.monotonic()
        guidance = fractional_seats(data.vm, data.vd, data.weight, data.kind, data.positive,
                                    now + FRACTIONAL_SHARE * (deadline - now))
    if guidance is not None:
        start, owner = "fractional", guidance.owner
        search.lp.seats = Seats(data, owner)
        search.lp.envy_rows(_seed_rows(data, owner, guidance))
    else:
        start = "picking"
        owner = seat_owners(data, _start(instance, previous if churn_limit is not None else None))
    best = search.solve(owner, None, initial=True)
    log.info("seats from the %s start: violation %.3g", start, best.violation)
    bounded = constructive.supports(instance)
    now = time.monotonic()
    # With a relaxation bound to come, the search gets part of the time first (see above).
    until = now + SEARCH_SHARE * (deadline - search.reserve() - now) if bounded else None
    best, moves, paused = search.improve(best, until)
    if moves:
        log.info("local search: %d seat moves, violation now %.3g", moves, best.violation)
    bound = None
    if best.violation > VIOLATED and bounded:
        bound = relaxation_bound(data.vm, data.vd, data.weight, data.kind, data.positive,
                                 deadline - search.reserve())
        if paused:
            best, more, _ = search.improve(best)
            if more:
                log.info("local search after the bound: %d more seat moves, violation now "
                         "%.3g", more, best.violation)
            moves += more
    trial = search.finish(best)
    if trial.violation <= VIOLATED:
        bound = None  # every criterion holds at some λ ≤ 1: nothing for the bound to say
    return Outcome(
        allocation=allocation_from(data, trial.owner, trial.x),
        violation=trial.violation,
        lambda_ef=trial.lam_ef,
        lambda_prop=trial.lam_prop,
        objective=trial.value,
        moves=moves,
        start=start,
        lower_bound=bound,
    )
