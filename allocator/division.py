"""``divide``: certified fair division of one core instance (docs/architecture.md §2).

The pipeline (docs/fairness.md, "Guaranteed vs best effort"): validate the instance and put it
in canonical order (agents and goods sorted by name, so the answer does not depend on input
order); then

* **the guarantee** (allocator.guarantee): on a plain instance, the construction of the
  guarantees table that covers the most agents — EFM (Bei et al. 2021) or the weighted picking
  sequence (Chakraborty et al. 2021) — whose covered agents meet their criterion exactly; then
  improved without giving any criterion back: its divisible shares re-divided by an LP that
  keeps every criterion row (allocator.welfare), its seats moved and swapped
  (allocator.exchange), the shares once more;
* **the search**, when not every criterion holds exactly (beside a guarantee only up to
  ``GUARANTEED_SEARCH_AGENTS``, or at any size, before the guarantee's improvement, when every
  agent asks for a PROP-type criterion and the guarantee covers only some of them or its share
  LP is too large): the exact MILP with its λ search on small instances
  (``EXACT_AGENTS``, ``EXACT_TYPES``), never relaxing a guaranteed agent; else the scalable
  path (allocator.scalable: seats from the fractional relaxation or the picking sequence,
  shares by a lexicographic LP, seat moves, the relaxation bound), and up to
  ``COMPLETION_AGENTS``/``COMPLETION_TYPES`` the exact MILP in the time left; when every
  criterion already holds exactly on a small instance, the exact MILP for more welfare;
* **the choice**: among the answers that meet every guaranteed criterion exactly (the
  guaranteed allocation always does), fewest criteria failing even at λ = 1, then fewest not
  met exactly, then the least λ, then the most welfare.

``divide`` never fails for lack of fairness on a valid instance: it returns the best allocation
it found with the certificate the one checker computes for it — ``fair`` only when every
criterion holds exactly, each agent's least λ, the guaranteed agents, what was proven about λ*.
It raises only for malformed input, for side constraints nothing can meet, or when no
allocation at all was found within the time limit.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from allocator import constructive
from allocator.arrays import value_matrices
from allocator.certificate import Certificate, certify
from allocator.errors import InfeasibleError, SolverError, SolverTimeoutError
from allocator.exact.lambda_search import LambdaSearch
from allocator.exchange import GAIN, exchange_seats
from allocator.guarantee import Guarantee, guarantee
from allocator.instance import Allocation, Instance, canonical, validate_instance
from allocator.objectives import Objective
from allocator.options import Churn, SolveOptions
from allocator.scalable.fractional import PROOF_MARGIN
from allocator.scalable.path import divide_fixed_seats
from allocator.welfare import MAX_SHARES, improve_shares

log = logging.getLogger(__name__)

# Share of the time limit the exact MILP may use before the scalable path takes over.
EXACT_SHARE = 0.5
# The exact MILP runs first up to this size, counted in agents and in *types* of indivisible
# goods (goods every agent values alike, such as the seats of one GPU, form one type with an
# integer count in the MILP): up to this size it answers within a fraction of the default time
# limit (docs/benchmarks.md, "Measurements behind design choices").
EXACT_AGENTS = 8
EXACT_TYPES = 16
# After the scalable path, if its allocation is not exactly fair and nothing proves that none
# is, the exact MILP gets the time left, up to this size (agents, types of indivisible goods):
# there it finds exactly fair allocations the scalable path missed, beyond it nothing in time
# (docs/benchmarks.md, "Measurements behind design choices").
COMPLETION_AGENTS = 24
COMPLETION_TYPES = 64
COMPLETION_MIN_S = 0.5  # less time left than this: not worth building the MILP


def _proof_note(guaranteed: frozenset[str]) -> str:
    """What the exact MILP proved when it found nothing even at λ = 1."""
    if guaranteed:
        return ("the exact MILP proved that no allocation meets every guaranteed criterion "
                "exactly and every other one relaxed to EF1/PROP1")
    return ("the exact MILP proved that no allocation meets every criterion even relaxed to "
            "EF1/PROP1")


# Beside a guaranteed allocation that does not meet every criterion, the search (exact MILP,
# scalable path, completion) runs up to this many agents: its answer counts only when it keeps
# every guaranteed criterion exactly, which the scalable path does not aim at. Measured on the
# benchmark's instances (seeds 0–2): at 16 and 32 tenants it found a fairer allocation on 3 of
# 6; at 64 × 64, 32 × 8 and 128 × 32 it was dropped every time, after seconds.
GUARANTEED_SEARCH_AGENTS = 32
# Most of the time limit the welfare LP on the guaranteed allocation may take (from the start),
# the seat moves and swaps after it, and when the second LP (for the moved seats) must end.
WELFARE_SHARE = 0.4
EXCHANGE_SHARE = 0.2
LAST_LP_END = 0.9
# Most of the time limit the unconstrained optimum (the welfare ratio's denominator) may take
# when it needs a MILP (Nash, egalitarian, side constraints); past it the ratio is not given.
UNCONSTRAINED_SHARE = 0.25


@dataclass(frozen=True)
class Division:
    allocation: Allocation
    certificate: Certificate

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of docs/architecture.md §3.1."""
        return {
            "indivisible": dict(self.allocation.indivisible),
            "divisible": {d: dict(s) for d, s in self.allocation.divisible.items()},
            "certificate": self.certificate.to_dict(),
        }


@dataclass(frozen=True)
class _Candidate:
    """An allocation one path found, with what its certificate will say of the search: the
    solver ("efm+lp+moves+lp", "highs", "cbc", "highs-lp+fractional", "highs-lp+picking",
    "picking"), its status ("optimal", "feasible", "heuristic", "constructive"), the MIP gap
    when known, and what the path proved about λ* (None: nothing)."""

    allocation: Allocation
    solver: str
    status: str
    gap: float | None
    lambda_lower_bound: float | None = None


def divide(
    instance: Instance,
    options: SolveOptions | None = None,
    *,
    churn: Churn | None = None,
    notes: tuple[str, ...] = (),
) -> Division:
    """The best allocation found, with its honest certificate (see the module docstring)."""
    options = options or SolveOptions()
    began = time.monotonic()
    deadline = began + options.time_limit_s
    validate_instance(instance)
    inst = canonical(instance)
    objective: Objective = options.objective or inst.objective
    promised = guarantee(inst) if churn is None else None
    held: frozenset[str] = frozenset()  # agents the guaranteed allocation meets exactly
    guaranteed: frozenset[str] = frozenset()
    candidates: list[_Candidate] = []
    search_notes: tuple[str, ...] = ()
    if promised is not None:
        guaranteed, held = promised.agents, promised.held
    if (promised is not None and len(inst.agents) > GUARANTEED_SEARCH_AGENTS
            and _proportional_only(inst)
            and (len(held) < len(inst.agents)
                 or len(inst.agents) * len(inst.divisible) > MAX_SHARES)):
        # The search first, with the whole time limit from here (the construction took some
        # of it), then the guarantee's improvement in what time is left: see
        # _proportional_only.
        start = time.monotonic()
        found, search_notes = _search(inst, objective, options, start,
                                      start + options.time_limit_s, churn, guaranteed)
        # Where the share LP cannot run and the search's answer is exactly fair, the seat
        # moves alone would not make the guarantee's answer the better one: skip them.
        first = (_Candidate(promised.allocation, promised.construction, "constructive", None)
                 if len(inst.agents) * len(inst.divisible) > MAX_SHARES
                 and certify(inst, found.allocation).fair
                 else _guaranteed(inst, objective, options, promised, began))
        candidates = [first, found]
    elif promised is not None:
        candidates.append(_guaranteed(inst, objective, options, promised, began))
    if len(held) < len(inst.agents) and (promised is None
                                         or len(inst.agents) <= GUARANTEED_SEARCH_AGENTS):
        found, search_notes = _search(inst, objective, options, began, deadline, churn,
                                      guaranteed)
        candidates.append(found)
    elif len(inst.agents) <= EXACT_AGENTS and _types(inst) <= EXACT_TYPES:
        # Every criterion holds exactly: the exact MILP finds the best such allocation.
        # Its own share of the time limit from here: the guarantee's improvement took some.
        try:
            exact = _exact(inst, objective, options,
                           time.monotonic() + options.time_limit_s * EXACT_SHARE,
                           churn, start=candidates[0].allocation)
        except InfeasibleError:  # pragma: no cover - the construction is feasible
            exact = None
        if exact is not None:
            candidates.append(exact)
    chosen = _best(inst, objective, candidates, guaranteed)
    notes = (*notes, *search_notes)
    # What any path proved about λ* holds whichever allocation is returned.
    bounds = [c.lambda_lower_bound for c in candidates if c.lambda_lower_bound is not None]
    lower_bound = max(bounds) if bounds else None
    # The welfare ratio's denominator.
    best_value = _unconstrained(inst, objective, options, deadline, churn)
    allocation = chosen.allocation

    def certificate_against(best: float | None) -> Certificate:
        return certify(
            inst,
            allocation,
            objective=objective,
            unconstrained_value=best,
            lambda_lower_bound=lower_bound,
            guarantee=promised.construction if promised is not None else None,
            guaranteed=guaranteed,
            solver=chosen.solver,
            status=chosen.status,
            gap=chosen.gap,
            time_s=time.monotonic() - began,
            notes=notes,
        )

    certificate = certificate_against(best_value)
    value = certificate.objective_value
    if best_value is not None and math.isfinite(value) and value > best_value:
        # The fair allocation is feasible for the unconstrained problem too: an unconstrained
        # MILP stopped short of its optimum is no ratio's denominator.
        certificate = certificate_against(value)
    if certificate.fair and certificate.lambda_lower_bound is None:
        certificate = replace(certificate, lambda_lower_bound=0.0)
    if not certificate.fair:
        failing = sorted(a.agent for a in certificate.agents.values() if not a.holds)
        log.warning("no allocation found meets every criterion exactly; %d agents do not: %s",
                    len(failing), ", ".join(failing[:8]))
    return Division(allocation=allocation, certificate=certificate)


def _proportional_only(inst: Instance) -> bool:
    """Whether every agent asks for a PROP-type criterion (prop, prop1, prop_alpha).

    On such an instance above GUARANTEED_SEARCH_AGENTS the search runs first, with the whole
    time limit, where the guarantee covers only some agents (weighted prop_alpha or prop1:
    those of at most the mean weight) or its share LP cannot run (more than MAX_SHARES share
    variables): the scalable path meets PROP-type criteria where the guarantee's improvement
    leaves heavier agents failing or has little welfare, and the choice keeps it only if it
    meets every guaranteed criterion. Measured on the benchmark's cluster_instance(512, 512, 0)
    with every agent prop_alpha (shared 2-core VM): with its weights the guarantee's answer left
    93 of the 187 heavier agents failing even at λ = 1, the scalable path's (when it finished
    in time) met every criterion; with equal weights both meet every criterion, welfare ratio
    0.46 against 0.64. At 64 × 64 both meet every criterion and the guarantee's answer, its
    share LP running, has more welfare (ratio 0.77 against 0.69 with the weights), which the
    choice keeps."""
    return all(a.criterion in ("prop", "prop1", "prop_alpha") for a in inst.agents)


def _guaranteed(
    inst: Instance, objective: Objective, options: SolveOptions, promised: Guarantee,
    began: float,
) -> _Candidate:
    """The construction's allocation improved without giving any criterion back: its shares
    re-divided by the LP that keeps every criterion row (allocator.welfare), its seats moved
    and swapped (allocator.exchange), then the shares once more for the new seats (if the
    first LP finished); each step taken only when the one checker finds it better
    (:func:`_improves`). The solver names the steps taken, e.g. "efm+lp+moves+lp"."""
    limit = options.time_limit_s
    allocation, steps = promised.allocation, [promised.construction]
    improved = improve_shares(inst, allocation, objective, began + WELFARE_SHARE * limit)
    if improved is not None and _improves(inst, allocation, improved, objective):
        allocation = improved
        steps.append("lp")
    exchanged = exchange_seats(inst, allocation, objective,
                               time.monotonic() + EXCHANGE_SHARE * limit)
    if exchanged is not None and _improves(inst, allocation, exchanged.allocation, objective):
        allocation = exchanged.allocation
        steps.append("moves")
        # Again only if the first finished: where it ran out of time, so would this one.
        again = None if improved is None else improve_shares(
            inst, allocation, objective,
            min(time.monotonic() + WELFARE_SHARE * limit, began + LAST_LP_END * limit))
        if again is not None and _improves(inst, allocation, again, objective):
            allocation = again
            steps.append("lp")
    return _Candidate(allocation, "+".join(steps), "constructive", None)


def _improves(inst: Instance, before: Allocation, after: Allocation,
              objective: Objective) -> bool:
    """Whether ``after`` meets exactly every criterion ``before`` met and is better, by the one
    checker: fewer criteria failing even at λ = 1, or (as many) fewer failing exactly, or (as
    many of both) more welfare (the objective, then the utilitarian sum), or less total
    shortfall (Σ −slack of the failing agents) at no less welfare — allocator.exchange's
    order."""
    old, new = (certify(inst, a, objective=objective) for a in (before, after))
    if not all(new.agents[name].holds for name, row in old.agents.items() if row.holds):
        return False
    counts_old, counts_new = _counts(old), _counts(new)
    if counts_new != counts_old:
        return counts_new < counts_old
    if _value(new) > _value(old) + GAIN or (
            abs(_value(new) - _value(old)) <= GAIN and _total(new) > _total(old) + GAIN):
        return True
    return _value(new) >= _value(old) - GAIN and _shortfall(new) < _shortfall(old) - GAIN


def _counts(certificate: Certificate) -> tuple[int, int]:
    """(criteria failing even at λ = 1, criteria not met exactly)."""
    return (certificate.violations,
            sum(1 for a in certificate.agents.values() if not a.holds))


def _total(certificate: Certificate) -> float:
    """The utilitarian sum, the tie-break of the egalitarian and Nash objectives."""
    return sum(a.normalised_value for a in certificate.agents.values())


def _shortfall(certificate: Certificate) -> float:
    return sum(-a.slack for a in certificate.agents.values()
               if not a.holds and a.slack is not None)


def _value(certificate: Certificate) -> float:
    value = certificate.objective_value
    return value if math.isfinite(value) else -math.inf


def _best(
    inst: Instance, objective: Objective, candidates: list[_Candidate],
    guaranteed: frozenset[str],
) -> _Candidate:
    """The best candidate among those meeting exactly every guaranteed criterion: fewest
    criteria failing even at λ = 1, then fewest not met exactly, then the least λ_prop and
    λ_ef, then the most welfare (to 1e-9), then a proven optimum (status "optimal") first.
    The guaranteed allocation, if any, is the first candidate and always qualifies, so nothing
    returned meets fewer guaranteed criteria."""
    if len(candidates) == 1:
        return candidates[0]
    ranked = []
    for k, candidate in enumerate(candidates):
        certificate = certify(inst, candidate.allocation, objective=objective)
        if not all(certificate.agents[name].holds for name in guaranteed):
            log.info("%s answer dropped: it breaks a guaranteed criterion",
                     candidate.solver)
            continue
        inexact = sum(1 for a in certificate.agents.values() if not a.holds)
        ranked.append(((certificate.violations, inexact, certificate.lambda_prop,
                        certificate.lambda_ef, -round(_value(certificate), 9),
                        candidate.status != "optimal", k), candidate))
    return min(ranked, key=lambda pair: pair[0])[1]


def _search(
    inst: Instance, objective: Objective, options: SolveOptions, began: float, deadline: float,
    churn: Churn | None, guaranteed: frozenset[str],
) -> tuple[_Candidate, tuple[str, ...]]:
    """The search beyond the guarantees: the exact MILP on small instances, the scalable path
    on the rest, the exact MILP's completion in the time left; with the certificate's notes.
    The exact MILP never relaxes a guaranteed criterion; the scalable path may, and then its
    answer is dropped (:func:`_best`)."""
    found: _Candidate | None = None
    notes: tuple[str, ...] = ()
    exact_infeasible = False
    if len(inst.agents) <= EXACT_AGENTS and _types(inst) <= EXACT_TYPES:
        try:
            found = _exact(inst, objective, options,
                           began + options.time_limit_s * EXACT_SHARE, churn, exact=guaranteed)
        except InfeasibleError as exc:
            log.info("exact MILP: %s", exc)
            exact_infeasible = True
            notes = (_proof_note(guaranteed),)
    if found is not None:
        return found, notes
    scalable, scalable_notes, impossible = _scalable(inst, objective, deadline, churn)
    if impossible or exact_infeasible or not _completion_worthwhile(inst, deadline):
        return scalable, (*notes, *scalable_notes)
    found, completion_notes = _complete(inst, objective, options, deadline, churn, scalable,
                                        guaranteed)
    if found is scalable:
        return found, (*notes, *scalable_notes, *completion_notes)
    return found, (*notes, *completion_notes)


def _types(inst: Instance) -> int:
    """How many indivisible goods differ in someone's value or a side constraint."""
    return len({
        (tuple(inst.value(a.name, g) for a in inst.agents),
         tuple((a.name, g) in inst.forbidden for a in inst.agents))
        for g in inst.indivisible
    })


def _exact(
    inst: Instance, objective: Objective, options: SolveOptions, deadline: float,
    churn: Churn | None, start: Allocation | None = None,
    exact: frozenset[str] = frozenset(),
) -> _Candidate | None:
    """The exact MILP with the λ search, warm-started from ``start`` (by default the PROP^α
    construction); None when it finds nothing in time. Raises InfeasibleError when nothing
    meets even the fully relaxed criteria (the scalable path then reports what it can)."""
    if start is None and constructive.supports(inst):
        start = constructive.prop_alpha_allocation(inst)
    search = LambdaSearch(inst, objective, options, deadline, start, churn, exact)
    try:
        result = search.relaxed()
    except SolverTimeoutError:
        log.info("exact MILP found nothing before its deadline")
        return None
    # With agents held exact, infeasibility says nothing of λ* (all EF-type agents relaxed).
    return _Candidate(result.allocation, result.solver, result.status, result.gap,
                      None if exact else search.lower_bound)


def _completion_worthwhile(inst: Instance, deadline: float) -> bool:
    """Whether the exact MILP may still find a fairer allocation than the scalable path's in
    the time left: the instance is small enough and enough time is left to build the model."""
    return (len(inst.agents) <= COMPLETION_AGENTS and _types(inst) <= COMPLETION_TYPES
            and deadline - time.monotonic() > COMPLETION_MIN_S)


def _complete(
    inst: Instance, objective: Objective, options: SolveOptions, deadline: float,
    churn: Churn | None, scalable: _Candidate, guaranteed: frozenset[str],
) -> tuple[_Candidate, tuple[str, ...]]:
    """The exact MILP in the time left, warm-started from the scalable path's allocation, if
    that one is not exactly fair; the exact answer replaces it when it is fairer (fewer failing
    agents, then smaller λ_prop, then smaller λ_ef) or as fair with more welfare. Also the
    certificate's note when the MILP proves that nothing meets even EF1/PROP1. The scalable
    answer is in hand, so a solver failure here is logged, not raised."""
    scalable_rank = _rank(inst, scalable.allocation, objective)
    if scalable_rank[:3] == (0, 0.0, 0.0):
        return scalable, ()
    try:
        exact = _exact(inst, objective, options, deadline, churn, start=scalable.allocation,
                       exact=guaranteed)
    except InfeasibleError as exc:
        log.info("exact MILP after the scalable path: %s", exc)
        return scalable, (_proof_note(guaranteed),)
    except SolverError as exc:
        log.warning("exact MILP after the scalable path failed (%s); keeping its answer", exc)
        return scalable, ()
    if exact is not None and _rank(inst, exact.allocation, objective) < scalable_rank:
        log.info("the exact MILP improved on the scalable path's allocation")
        return exact, ()
    return scalable, ()


def _rank(
    inst: Instance, allocation: Allocation, objective: Objective
) -> tuple[int, float, float, float]:
    """(agents failing even at λ = 1, λ_prop, λ_ef, −objective): smaller is better, and the
    first three are (0, 0, 0) when every criterion holds exactly as stated."""
    certificate = certify(inst, allocation, objective=objective)
    return (certificate.violations, certificate.lambda_prop, certificate.lambda_ef,
            -_value(certificate))


def _scalable(
    inst: Instance, objective: Objective, deadline: float, churn: Churn | None
) -> tuple[_Candidate, tuple[str, ...], bool]:
    """The scalable path (allocator.scalable); past the deadline without any LP answer, the
    picking sequence.
    Also the notes for the certificate (what the relaxation bound says when agents fail), and
    whether that bound proves that no allocation meets every criterion even at λ = 1."""
    try:
        outcome = divide_fixed_seats(
            inst, objective, deadline,
            previous=churn.previous if churn else None,
            churn_limit=churn.limit if churn else None,
        )
    except SolverError as exc:
        log.warning("scalable path failed (%s); returning the picking-sequence allocation", exc)
        allocation = constructive.picking_allocation(inst)
        if churn is not None and _moves(allocation, churn) > churn.limit:
            raise InfeasibleError(
                f"no allocation within {churn.limit} seat moves was found in time"
            ) from exc
        return _Candidate(allocation, "picking", "constructive", None), (), False
    if churn is not None and _moves(outcome.allocation, churn) > churn.limit:
        # The search keeps the bound from a start that keeps it; an answer past it is never
        # returned as if it held (it is a side constraint, not a criterion to relax).
        raise InfeasibleError(
            f"no allocation within {churn.limit} seat moves was found in time (the scalable "
            f"path's moves {_moves(outcome.allocation, churn)})"
        )
    found = _Candidate(outcome.allocation, f"highs-lp+{outcome.start}", "heuristic", None)
    if outcome.lower_bound is None:
        return found, (), False
    if outcome.lower_bound > PROOF_MARGIN:
        # Nothing meets every criterion even at λ_ef = 1: λ* exceeds 1.
        found = replace(found, lambda_lower_bound=1.0)
        return found, (
            "no allocation meets every criterion, even with every agent relaxed to its 'up to "
            "one good' version (lambda = 1): the fractional relaxation proves a total "
            f"shortfall of at least {outcome.lower_bound:.3g} (fractions of the agents' total "
            f"values, summed); the scalable path's allocation fell short by "
            f"{outcome.violation:.3g}",
        ), True
    return found, (
        "the fractional relaxation does not rule out an allocation meeting every criterion "
        f"at lambda = 1; the scalable path's allocation fell short by {outcome.violation:.3g} "
        "in total",
    ), False


def _moves(allocation: Allocation, churn: Churn) -> int:
    return sum(1 for g, p in churn.previous.items()
               if g in allocation.indivisible and allocation.indivisible[g] != p)


def _unconstrained(
    inst: Instance, objective: Objective, options: SolveOptions, deadline: float,
    churn: Churn | None,
) -> float | None:
    """The objective's optimum without fairness (the welfare ratio's denominator).

    Utilitarian welfare without coupling constraints separates by good: each good goes to an
    agent valuing it most (normalised), no solver needed. Otherwise an unconstrained MILP in
    what remains of the time limit (None if it finds nothing)."""
    if (objective == "utilitarian" and not inst.requires and not inst.caps
            and not inst.optional and churn is None):
        vm, vd = value_matrices(inst)
        values = np.concatenate([vm, vd], axis=1)
        total = values.sum(axis=1)
        normalised = values[total > 0] / total[total > 0, None]
        if inst.forbidden:
            index = {a.name: k for k, a in enumerate(inst.agents)}
            column = {g: k for k, g in enumerate(inst.indivisible)}
            allowed = np.ones(values.shape, dtype=bool)
            for i, g in inst.forbidden:
                allowed[index[i], column[g]] = False
            normalised = np.where(allowed[total > 0], normalised, 0.0)
        return float(normalised.max(axis=0, initial=0.0).sum())
    from allocator.exact.milp import unconstrained_optimum

    now = time.monotonic()
    limit = min(deadline, now + UNCONSTRAINED_SHARE * options.time_limit_s)
    return unconstrained_optimum(
        inst, objective, solver=options.solver, gap=options.gap,
        deadline=max(limit, now + 0.5), churn=churn,
    )
