"""``divide``: certified fair division of one core instance (docs/architecture.md §2).

The pipeline: validate the instance and put it in canonical order (agents and goods sorted by
name, so the answer does not depend on input order); then

* **small instances** (few agents and kinds of indivisible goods, see ``EXACT_AGENTS`` and
  ``EXACT_TYPES``) go to the exact MILP (allocator.exact) with every agent's own criterion; if
  that is infeasible, the EF-type agents are relaxed by the smallest λ (bisection on
  feasibility), and only if EF1 for them is still infeasible, the PROP-type agents likewise.
  Its welfare is the optimum among fair allocations;
* **everything else**, and small instances whose MILP finds nothing in its share of the time
  limit or nothing even fully relaxed, go to the scalable path (allocator.scalable): seats
  by a weighted picking sequence, divisible goods by a lexicographic LP (least violation, then
  least λ, then the objective), then seat moves while violations remain; if some remain, a
  relaxation bound says in the certificate's notes whether any allocation could meet every
  criterion at λ = 1;
  if the scalable path has no answer before the deadline, the plain picking-sequence
  allocation;
* then, if that allocation is not exactly fair, nothing proves that none is, and the instance is
  of middling size (``COMPLETION_AGENTS``, ``COMPLETION_TYPES``), the exact MILP with its λ
  search gets the time left, warm-started from it, and its answer is taken when it is fairer
  (or as fair with more welfare).

``divide`` never fails for lack of fairness on a valid instance: it returns the best allocation
it found with the certificate the one checker computes for it — each agent's ``holds`` and
slack, λ ∈ [0, 1], the solver and its status ("optimal", "feasible", "heuristic",
"constructive"). It raises only for malformed input, for side constraints nothing can meet,
or when no allocation at all was found within the time limit.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from allocator import constructive
from allocator.certificate import (
    Certificate,
    bundles,
    certify,
    constraint_terms,
    minimal_relaxation,
)
from allocator.criteria import EF_TYPE
from allocator.errors import InfeasibleError, SolverError, SolverTimeoutError
from allocator.exact.lambda_search import LambdaSearch
from allocator.instance import Allocation, Instance, canonical, validate_instance
from allocator.objectives import Objective
from allocator.options import Churn, SolveOptions
from allocator.scalable.fractional import PROOF_MARGIN
from allocator.scalable.path import divide_fixed_seats

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
EXACT_PROOF_NOTE = ("the exact MILP proved that no allocation meets every criterion even "
                    "relaxed to EF1/PROP1; this is the scalable path's best")
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
    solver ("highs", "cbc", "highs-lp+fractional", "highs-lp+picking", "picking"), its status
    ("optimal", "feasible", "heuristic", "constructive") and the MIP gap when known."""

    allocation: Allocation
    solver: str
    status: str
    gap: float | None


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
    found: _Candidate | None = None
    exact_infeasible = False
    if len(inst.agents) <= EXACT_AGENTS and _types(inst) <= EXACT_TYPES:
        try:
            found = _exact(inst, objective, options,
                           began + options.time_limit_s * EXACT_SHARE, churn)
        except InfeasibleError as exc:
            log.info("exact MILP: %s", exc)
            exact_infeasible = True
            notes = (*notes, EXACT_PROOF_NOTE)
    scalable: _Candidate | None = None
    scalable_notes: tuple[str, ...] = ()
    impossible = False
    if found is None:
        scalable, scalable_notes, impossible = _scalable(inst, objective, deadline, churn)
        found = scalable
    # The welfare ratio's denominator before the completion, which may take all the time left.
    best_value = _unconstrained(inst, objective, options, deadline, churn)
    completion_notes: tuple[str, ...] = ()
    if (scalable is not None and not (impossible or exact_infeasible)
            and _completion_worthwhile(inst, deadline)):
        found, completion_notes = _complete(inst, objective, options, deadline, churn, scalable)
    if found is scalable:
        notes = (*notes, *scalable_notes)
    notes = (*notes, *completion_notes)
    allocation = found.allocation
    lambda_prop, lambda_ef = _needed_relaxation(inst, allocation)

    def certificate_against(best: float | None) -> Certificate:
        return certify(
            inst,
            allocation,
            lambda_ef=lambda_ef,
            lambda_prop=lambda_prop,
            objective=objective,
            unconstrained_value=best,
            solver=found.solver,
            status=found.status,
            gap=found.gap,
            time_s=time.monotonic() - began,
            notes=notes,
        )

    certificate = certificate_against(best_value)
    value = certificate.objective_value
    if best_value is not None and math.isfinite(value) and value > best_value:
        # The fair allocation is feasible for the unconstrained problem too: an unconstrained
        # MILP stopped short of its optimum is no ratio's denominator.
        certificate = certificate_against(value)
    if not certificate.holds:
        failing = sorted(a.agent for a in certificate.agents.values() if not a.holds)
        log.warning("no allocation found meets every criterion; %d agents fail: %s",
                    len(failing), ", ".join(failing[:8]))
    return Division(allocation=allocation, certificate=certificate)


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
) -> _Candidate | None:
    """The exact MILP with the λ search, warm-started from ``start`` (by default the PROP^α
    construction); None when it finds nothing in time. Raises InfeasibleError when nothing
    meets even the fully relaxed criteria (the scalable path then reports what it can)."""
    if start is None and constructive.supports(inst):
        start = constructive.prop_alpha_allocation(inst)
    try:
        result = LambdaSearch(inst, objective, options, deadline, start, churn).relaxed()
    except SolverTimeoutError:
        log.info("exact MILP found nothing before its deadline")
        return None
    return _Candidate(result.allocation, result.solver, result.status, result.gap)


def _completion_worthwhile(inst: Instance, deadline: float) -> bool:
    """Whether the exact MILP may still find a fairer allocation than the scalable path's in
    the time left: the instance is small enough and enough time is left to build the model."""
    return (len(inst.agents) <= COMPLETION_AGENTS and _types(inst) <= COMPLETION_TYPES
            and deadline - time.monotonic() > COMPLETION_MIN_S)


def _complete(
    inst: Instance, objective: Objective, options: SolveOptions, deadline: float,
    churn: Churn | None, scalable: _Candidate,
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
        exact = _exact(inst, objective, options, deadline, churn, start=scalable.allocation)
    except InfeasibleError as exc:
        log.info("exact MILP after the scalable path: %s", exc)
        return scalable, (EXACT_PROOF_NOTE,)
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
    lambda_prop, lambda_ef = _needed_relaxation(inst, allocation)
    certificate = certify(inst, allocation, lambda_ef=lambda_ef, lambda_prop=lambda_prop,
                          objective=objective)
    failing = sum(1 for a in certificate.agents.values() if not a.holds)
    value = certificate.objective_value
    return failing, lambda_prop, lambda_ef, -value if math.isfinite(value) else math.inf


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
    found = _Candidate(outcome.allocation, f"highs-lp+{outcome.start}", "heuristic", None)
    if outcome.lower_bound is None:
        return found, (), False
    if outcome.lower_bound > PROOF_MARGIN:
        return found, (
            "no allocation meets every criterion, even with every agent relaxed to its 'up to "
            "one good' version (lambda = 1): the fractional relaxation proves a total "
            f"shortfall of at least {outcome.lower_bound:.3g} (fractions of the agents' total "
            f"values, summed); this allocation's is {outcome.violation:.3g}",
        ), True
    return found, (
        "the fractional relaxation does not rule out an allocation meeting every criterion "
        f"at lambda = 1; this heuristic one falls short by {outcome.violation:.3g} in total",
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
        total = {a.name: sum(inst.values.get(a.name, {}).values()) for a in inst.agents}
        best = 0.0
        for g in (*inst.indivisible, *inst.divisible):
            best += max(
                (inst.value(i, g) / t for i, t in total.items()
                 if t > 0 and (i, g) not in inst.forbidden),
                default=0.0,
            )
        return best
    from allocator.exact.milp import unconstrained_optimum

    now = time.monotonic()
    limit = min(deadline, now + UNCONSTRAINED_SHARE * options.time_limit_s)
    return unconstrained_optimum(
        inst, objective, solver=options.solver, gap=options.gap,
        deadline=max(limit, now + 0.5), churn=churn,
    )


def _needed_relaxation(instance: Instance, allocation: Allocation) -> tuple[float, float]:
    """(λ_prop, λ_ef) in [0, 1]: the smallest relaxations under which every agent that can
    hold at all (at λ = 1) holds; the others fail and the certificate says so."""
    b = bundles(instance, allocation)
    lam_ef = lam_prop = 0.0
    for a in instance.agents:
        lam = minimal_relaxation(constraint_terms(instance, b, a.name))
        if lam > 1.0:
            continue
        if a.criterion in EF_TYPE:
            lam_ef = max(lam_ef, lam)
        else:
            lam_prop = max(lam_prop, lam)
    return lam_prop, lam_ef
