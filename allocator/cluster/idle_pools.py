"""Idle pools: the stream pools the core division left unassigned, shared where fairness allows.

Pools are ``optional`` in the core, so the division may leave part of a pool to nobody: when
the seated tenants' single streams already serve their demand (values are capped at demand, so
nobody values more streams), or when giving more would make another tenant envy. Idle streams
help nobody, so :func:`share_idle_pools` then splits each seated GPU's unassigned pool among the
tenants seated there in proportion to their weights — as far as every tenant's criterion
allows, which the one checker decides; the certificate is computed on this completed
allocation, the one the plans are cut from. A GPU where nobody is seated keeps its pool idle.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from allocator.certificate import Bundles, Certificate, bundles, certify, constraint_terms
from allocator.instance import Allocation, Instance
from allocator.objectives import objective_ratio

log = logging.getLogger(__name__)

# Less than this fraction of a pool is not worth handing out (and not worth a note).
IDLE_SHARE = 1e-6


def share_idle_pools(
    instance: Instance, allocation: Allocation, certificate: Certificate
) -> tuple[Allocation, Certificate, dict[str, dict[str, float]]]:
    """Make the division work-conserving: split every optional divisible good's unassigned
    part among the holders of its required goods (a pool among the tenants seated on its
    GPU), in proportion to their weights, as far as fairness allows.

    Why by weight: the part left over is one the core had no reason to give (nobody seated
    values it) or a reason not to (envy), so where it can be given at all it goes by
    entitlement to those who can use it. And giving seated
    ``j`` the fraction ``t·L·w_j/W_S`` of a leftover ``L`` raises ``V_i(A_j)/w_j`` by the same
    ``t·L·u_i/W_S`` for every ``j`` seated there, and ``V_i(A_i)/w_i`` of a seated ``i`` by as
    much: weighted envy between seated tenants, and every PROP-type margin, cannot get worse.
    What can is the envy of a tenant that values the pool but holds no seat there (its
    candidate seat went to another), unweighted EFM, and EFM towards a tenant that held no
    divisible good before. So pool by pool (in the instance's order) ``t ∈ [0, 1]`` is the
    largest step that keeps every criterion margin of the one checker at least
    ``min(its margin before, 0)`` at the agent's own least λ — the margins are affine in ``t`` —
    and the part ``(1 − t)·L`` stays unassigned, with a note naming the tenant whose criterion
    stops it. No agent whose criterion held stops holding, and the returned certificate is the
    checker's, computed on the returned allocation. Returns (allocation, certificate, the
    shares added: good -> agent -> fraction).
    """
    weight = {a.name: a.weight for a in instance.agents}
    # Each agent's margins at its own least λ (1 where it fails even there): an agent that
    # holds exactly keeps its exact margins, a relaxed one its λ.
    lam = {name: 1.0 if row.lam is None else row.lam for name, row in certificate.agents.items()}
    efm = [a.name for a in instance.agents if a.criterion == "efm"]
    shares = {d: dict(s) for d, s in allocation.divisible.items()}
    b = bundles(instance, allocation)
    added: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for d in instance.divisible:
        if d not in instance.requires or d not in instance.optional:
            continue
        seated = sorted({h for g in instance.requires[d]
                         if (h := allocation.indivisible.get(g)) is not None})
        left = 1.0 - sum(shares[d].values())
        if not seated or left < IDLE_SHARE:
            continue
        total = sum(weight[j] for j in seated)
        step = {j: left * weight[j] / total for j in seated}
        t, binding, after = _largest_step(instance, b, d, step, lam, efm)
        if t * left >= IDLE_SHARE:
            for j, x in step.items():
                shares[d][j] = shares[d].get(j, 0.0) + t * x
            added[d] = {j: t * x for j, x in step.items()}
            b = after
        if (1.0 - t) * left >= IDLE_SHARE:
            notes.append(f"{d}: {(1.0 - t) * left:.1%} of the pool left unassigned: sharing it "
                         f"with the tenants seated there would break {binding}'s criterion")
    if not added and not notes:
        return allocation, certificate, {}
    shared = Allocation(dict(allocation.indivisible), shares)
    again = certify(instance, shared, objective=certificate.objective,
                    lambda_lower_bound=certificate.lambda_lower_bound,
                    solver=certificate.solver, status=certificate.status, gap=certificate.gap,
                    time_s=certificate.time_s, notes=(*certificate.notes, *notes))
    best = certificate.unconstrained_value
    if best is not None:
        if math.isfinite(again.objective_value):
            # The shared allocation is feasible for the unconstrained problem too.
            best = max(best, again.objective_value)
        counted = sum(1 for row in again.agents.values() if row.total > 0)
        again = replace(again, unconstrained_value=best, ratio=objective_ratio(
            again.objective, again.objective_value, best, counted))
    broken = [a for a, row in certificate.agents.items()
              if (row.holds and not again.agents[a].holds)
              or (row.lam is not None and again.agents[a].lam is None)]
    if broken:
        log.warning("sharing idle pools would break %s's criterion; pools left as divided",
                    broken[0])
        return allocation, certificate, {}
    return shared, again, added


def _largest_step(
    instance: Instance, b: Bundles, d: str, step: dict[str, float], lam: dict[str, float],
    efm: list[str],
) -> tuple[float, str, Bundles]:
    """The largest ``t ∈ [0, 1]`` by which ``step`` (agent -> more of ``d``) may be given
    without any criterion margin going below ``min(its margin now, 0)``; the agent whose
    margin bounds it ("" if none does) and the bundles after giving ``t·step``.

    Views are linear in the shares, so every margin is affine in ``t`` once the agents given
    ``d`` count as holding a divisible good (EFM's switch, taken at ``t > 0``).
    """
    valuers = [i for i in b.agents if instance.value(i, d) > 0]
    switch = any(not b.holds_divisible[j] for j in step)
    start = replace(b, holds_divisible={**b.holds_divisible, **dict.fromkeys(step, True)})
    end = _moved(start, instance, d, valuers, step, 1.0)
    t, binding = 1.0, ""
    for i in sorted(set(valuers) | (set(efm) if switch else set())):
        for (_, a_now, b_now), (_, a0, b0), (_, a1, _) in zip(
                constraint_terms(instance, b, i), constraint_terms(instance, start, i),
                constraint_terms(instance, end, i), strict=True):
            floor = min(a_now + b_now * lam[i], 0.0)
            m0, m1 = a0 + b0 * lam[i], a1 + b0 * lam[i]
            if m1 >= floor:
                continue
            limit = 0.0 if m0 < floor else (m0 - floor) / (m0 - m1)
            if limit < t:
                t, binding = limit, i
    if t >= 1.0:
        return 1.0, "", end
    # Shave the step a little below the bound so that rounding cannot cross it.
    t *= 1.0 - 1e-9
    return t, binding, _moved(start, instance, d, valuers, step, t)


def _moved(b: Bundles, instance: Instance, d: str, valuers: list[str],
           step: dict[str, float], t: float) -> Bundles:
    """``b`` after every seated ``j`` gains ``t·step[j]`` of ``d`` (only valuers' views move)."""
    view = dict(b.view)
    for i in valuers:
        u = instance.value(i, d)
        row = dict(view[i])
        for j, x in step.items():
            row[j] += t * x * u
        view[i] = row
    return replace(b, view=view)
