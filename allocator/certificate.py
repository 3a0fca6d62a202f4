"""The one checker: allocation validation, each criterion's margins, and the certificate.

Everything that decides whether an allocation is fair lives here, written once and used by the
solvers (to find violated envy pairs), by ``divide`` and the cluster layer (before anything is
returned), by the CLI and the API (before anything is stored) and by the tests.

Each agent's criterion (allocator.criteria) is a family of linear inequalities in the agent's own
values; every inequality is written as ``a + b·λ ≥ 0`` where λ is the relaxation
(``f_i = α_i + λ(1 − α_i)``), both sides divided by the agent's total value ``T_i`` so that
margins are comparable across agents. The *slack* reported for an agent is the smallest such
margin at λ = 0: a fraction of the agent's total value by which its criterion, exactly as
stated, holds (≥ 0) or fails (< 0); its *λ* is the least relaxation under which every margin
holds. An allocation is *fair* only when every agent's criterion holds exactly.
:func:`check_certificate` refuses a certificate whose figures are not the checker's for its
allocation (one tampered with, or stale). A cluster result has one more checker on top of this
one, allocator.cluster.allocate.validate_cluster_allocation.

The certificate's document — what ``Certificate.to_dict`` returns, what the API stores with an
allocation and serves, what ``gpufair divide``/``allocate`` print — is the pydantic model
:class:`CertificateDocument` (one :class:`AgentCertificateDocument` row per agent): ``to_dict``
builds it and the API reads a stored one back with :func:`parse_certificate` and names it as
its response model, so the document has one definition and the OpenAPI schema shows its fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from allocator.arrays import value_matrices
from allocator.criteria import EF_TYPE, PROP_TYPE, Criterion, base_factor, relaxed_factor
from allocator.errors import AllocationError, CertificateError
from allocator.instance import Allocation, Instance
from allocator.objectives import Objective, objective_ratio, objective_value

# Margins are fractions of T_i; a solver's feasibility tolerance (≈1e-7 on normalised rows)
# and float rounding of shares stay far below this.
TOLERANCE = 1e-6
# A share below this is treated as zero (EFM asks whether an agent holds *any* divisible good).
ZERO_SHARE = 1e-9
# How closely a figure a certificate states must match the checker's own: both come from the
# same code on the same allocation, so only float noise may tell them apart — a JSON round trip,
# or sums taken in another order (the cluster layer's instance is not in canonical order). The
# absolute part is a fraction of the agent's total value, as an envy row's noise is.
RESTATED_REL_TOL = 1e-9
RESTATED_ABS_TOL = 1e-12


@dataclass(frozen=True)
class Bundles:
    """Every agent's view of every bundle of one allocation (the numbers all notions use)."""

    agents: tuple[str, ...]
    total: dict[str, float]  # T_i
    alpha: dict[str, float]  # α_i
    view: dict[str, dict[str, float]]  # view[i][j] = V_i(A_j)
    max_in: dict[str, dict[str, float]]  # max_in[i][j] = Mx_i(A_j)
    max_out: dict[str, float]  # Mx_i(M ∖ A_i)
    holds_divisible: dict[str, bool]  # x_jd > 0 for some d


def bundles(instance: Instance, allocation: Allocation) -> Bundles:
    """Every agent's view of every bundle, as matrices: at 512 agents × 64 pools a walk over
    every agent, pool and share took 3 s per call (the picking sequence gives every agent a
    share of every pool); the products take milliseconds."""
    names = tuple(a.name for a in instance.agents)
    index = {name: k for k, name in enumerate(names)}
    n = len(names)
    vm, vd = value_matrices(instance)
    # holder[g]: index of the agent holding indivisible good g, -1 if nobody does
    holders: list[int] = []
    for g in instance.indivisible:
        name = allocation.indivisible.get(g)
        holders.append(index[name] if name is not None and name in index else -1)
    holder = np.array(holders, dtype=np.int64)
    shares = np.zeros((n, len(instance.divisible)))  # shares[j, d] = x_jd
    for column, good in enumerate(instance.divisible):
        for owner, x in allocation.divisible.get(good, {}).items():
            shares[index[owner], column] = float(x)
    held = np.zeros((len(holder), n))
    given = np.nonzero(holder >= 0)[0]
    held[given, holder[given]] = 1.0
    view = vm @ held + vd @ shares.T  # view[i, j] = V_i(A_j)
    max_in = np.zeros((n, n))  # max_in[i, j] = Mx_i(A_j)
    for k in range(n):
        mine = holder == k
        if mine.any():
            max_in[:, k] = vm[:, mine].max(axis=1)
    # Mx_i(M ∖ A_i): goods nobody holds count as outside every bundle.
    outside = np.where(holder[None, :] == np.arange(n)[:, None], 0.0, vm)
    max_out = outside.max(axis=1, initial=0.0)
    seat_total = vm.sum(axis=1)
    total = seat_total + vd.sum(axis=1)
    holds_divisible = [bool(row.any()) for row in shares > ZERO_SHARE]
    return Bundles(
        names,
        {i: float(total[k]) for k, i in enumerate(names)},
        {i: float(seat_total[k] / total[k]) if total[k] > 0 else 0.0
         for k, i in enumerate(names)},
        {i: dict(zip(names, view[k].tolist(), strict=True)) for k, i in enumerate(names)},
        {i: dict(zip(names, max_in[k].tolist(), strict=True)) for k, i in enumerate(names)},
        {i: float(max_out[k]) for k, i in enumerate(names)},
        dict(zip(names, holds_divisible, strict=True)),
    )


def constraint_terms(
    instance: Instance, b: Bundles, agent: str
) -> list[tuple[str | None, float, float]]:
    """The agent's criterion as ``(other agent or None, a, b)`` with margin ``a + b·λ``."""
    spec = next(a for a in instance.agents if a.name == agent)
    t = b.total[agent]
    if t <= 0:
        return []
    crit = spec.criterion
    base = base_factor(crit, b.alpha[agent])
    own = b.view[agent][agent]
    if crit in PROP_TYPE:
        weight_sum = sum(a.weight for a in instance.agents)
        share = spec.weight / weight_sum * t
        mx = b.max_out[agent]
        return [(None, (own + base * mx - share) / t, (1.0 - base) * mx / t)]
    terms: list[tuple[str | None, float, float]] = []
    for other in instance.agents:
        j = other.name
        if j == agent:
            continue
        vj, mx = b.view[agent][j], b.max_in[agent][j]
        if crit == "efm":
            if b.holds_divisible[j]:
                terms.append((j, (own - vj) / t, mx / t))
            else:
                terms.append((j, (own - vj + mx) / t, 0.0))
        else:
            scale = spec.weight / other.weight
            a = (own / spec.weight - (vj - base * mx) / other.weight) * spec.weight / t
            terms.append((j, a, (1.0 - base) * mx * scale / t))
    return terms


def minimal_relaxation(terms: Iterable[tuple[str | None, float, float]]) -> float:
    """Smallest λ ≥ 0 with every ``a + b·λ ≥ −TOLERANCE`` (inf if none in reach)."""
    lam = 0.0
    for _, a, b in terms:
        if a < -TOLERANCE:
            if b <= 0:
                return math.inf
            lam = max(lam, (-a - TOLERANCE / 2) / b)
    return lam


@dataclass(frozen=True)
class AgentCertificate:
    agent: str
    criterion: Criterion
    weight: float
    alpha: float  # indivisibility ratio α_i
    total: float  # T_i, the agent's value of everything
    value: float  # V_i(A_i)
    normalised_value: float  # V_i(A_i) / T_i (0 when T_i = 0)
    holds: bool  # the criterion holds exactly, as the agent stated it (λ = 0)
    slack: float | None  # smallest exact margin as a fraction of T_i; None: nothing to compare
    # the least λ ∈ [0, 1] at which the relaxed criterion holds (0 when it holds exactly);
    # None when it fails even at λ = 1
    lam: float | None
    factor: float | None  # f_i = base + λ(1 − base) at that λ; None with it
    guaranteed: bool  # the guarantees table promises this agent's criterion on this instance
    envy: dict[str, float]  # envy[j] = V_i(A_j) − V_i(A_i) (> 0: the agent envies j)

    def document(self) -> AgentCertificateDocument:
        """This row as the certificate document states it (the agent's name is its key)."""
        return AgentCertificateDocument(
            alpha=self.alpha,
            criterion=self.criterion,
            weight=self.weight,
            holds=self.holds,
            slack=self.slack,
            lam=self.lam,
            factor=self.factor,
            guaranteed=self.guaranteed,
            value=self.value,
            normalised_value=self.normalised_value,
            total=self.total,
            envy=self.envy,
        )


@dataclass(frozen=True)
class Certificate:
    agents: dict[str, AgentCertificate]
    objective: Objective
    objective_value: float  # exact, from the allocation (-inf for Nash with a zero value)
    unconstrained_value: float | None  # best objective without fairness (None: not computed)
    ratio: float | None  # objective_value against unconstrained_value (see docs/fairness.md)
    # A proven lower bound on λ*, the least λ at which *some* allocation meets every EF-type
    # criterion relaxed by λ (PROP-type ones exact); None when nothing proves one.
    lambda_lower_bound: float | None
    guarantee: str | None  # the construction of the guarantees table used (None: none applies)
    solver: str  # "efm+lp+moves+lp", "highs" (exact MILP), "highs-lp+fractional", ...
    # "optimal" / "feasible" (exact MILP, proven or stopped at limit/gap), "heuristic" (the
    # scalable path), "constructive" (a construction of the guarantees table, or the picking
    # sequence when nothing else finished)
    status: str
    gap: float | None  # relative MIP gap when known
    time_s: float  # wall time of the solve
    notes: tuple[str, ...] = field(default=())  # e.g. estimated throughput curves
    # tenant -> model -> its part of the tenant's bundle; only the cluster layer has models
    # (allocator.cluster.allocate.model_shares), a core instance's certificate has none
    models: dict[str, dict[str, ModelShare]] = field(default_factory=dict)

    @property
    def fair(self) -> bool:
        """Every agent's criterion holds exactly as stated (λ = 0 for everyone)."""
        return all(a.holds for a in self.agents.values())

    @property
    def relaxed(self) -> bool:
        """Some agent's criterion holds only relaxed (its λ > 0)."""
        return any(a.lam is not None and a.lam > 0 for a in self.agents.values())

    @property
    def violations(self) -> int:
        """How many agents' criteria fail even relaxed to λ = 1."""
        return sum(1 for a in self.agents.values() if a.lam is None)

    @property
    def lambda_ef(self) -> float:
        """The relaxation of the EF-type agents: the largest λ any of them needs (those that
        fail even at λ = 1 aside)."""
        return _largest_lambda(a for a in self.agents.values() if a.criterion in EF_TYPE)

    @property
    def lambda_prop(self) -> float:
        """The relaxation of the PROP-type agents, likewise."""
        return _largest_lambda(a for a in self.agents.values() if a.criterion in PROP_TYPE)

    def document(self) -> CertificateDocument:
        """The certificate as its document states it (see :class:`CertificateDocument`)."""
        return CertificateDocument(
            fair=self.fair,
            relaxed=self.relaxed,
            violations=self.violations,
            lambda_ef=self.lambda_ef,
            lambda_prop=self.lambda_prop,
            lambda_lower_bound=self.lambda_lower_bound,
            guarantee=self.guarantee,
            agents={name: a.document() for name, a in self.agents.items()},
            objective=self.objective,
            objective_value=self.objective_value if math.isfinite(self.objective_value) else None,
            unconstrained_value=self.unconstrained_value,
            ratio=self.ratio,
            solver=self.solver,
            status=self.status,
            gap=self.gap,
            time_s=self.time_s,
            notes=list(self.notes),
            models=self.models,
        )

    def to_dict(self) -> dict[str, Any]:
        """The certificate document as plain data (JSON-ready but for a non-finite number)."""
        return self.document().model_dump(by_alias=True)


def _largest_lambda(rows: Iterable[AgentCertificate]) -> float:
    return max((a.lam for a in rows if a.lam is not None), default=0.0)


class AgentCertificateDocument(BaseModel):
    """One agent's row of the certificate document (keyed by the agent's name)."""

    # Read back as written: unknown keys are refused. ``lambda`` (a Python keyword) is the name
    # in the document and ``lam`` the attribute.
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, serialize_by_alias=True
    )

    alpha: float = Field(
        description="indivisibility ratio α_i: the part of the agent's total value in seats"
    )
    criterion: Criterion = Field(description="the agent's fairness criterion")
    weight: float = Field(description="the agent's entitlement w_i")
    holds: bool = Field(
        description="whether its criterion holds exactly as stated (λ = 0); a criterion that "
        "holds only relaxed says false here and its λ in lambda"
    )
    slack: float | None = Field(
        description="its smallest exact margin, a fraction of its total value (< 0: the "
        "criterion fails by that much); null when there is nothing to compare"
    )
    lam: float | None = Field(
        alias="lambda",
        description="the least relaxation λ ∈ [0, 1] under which its criterion holds (0: "
        "exactly); null when it fails even at λ = 1",
    )
    factor: float | None = Field(
        description="f_i = base + λ(1 − base) at that λ: the fraction of a good allowed; null "
        "with lambda"
    )
    guaranteed: bool = Field(
        description="whether the guarantees table (docs/fairness.md) promises this agent's "
        "criterion on this instance; a guaranteed criterion always holds"
    )
    value: float = Field(description="V_i(A_i): its value of its own bundle")
    normalised_value: float = Field(description="value / total (0 when total is 0)")
    total: float = Field(description="T_i: its value of everything")
    envy: dict[str, float] = Field(
        description="per other agent j, V_i(A_j) − V_i(A_i) (> 0: it envies j)"
    )


class ModelShare(BaseModel):
    """One model's part of its tenant's bundle (docs/fairness.md, "Per-model weights"): the
    tenant is the agent of the division, and these parts add up to its row's value and total."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(description="ω_m, the model's weight as its tenant set it")
    entitlement: float = Field(
        description="ω_m over the weights of its tenant's models: the part of the tenant's "
        "value the model is weighted with"
    )
    seats: int = Field(description="seats the tenant holds for this model (one replica each)")
    value: float = Field(
        description="its part of the tenant's value: its seats' values and its part of the "
        "tenant's pool shares (the pools' optimal stream splits); the models' values add up "
        "to the tenant's value"
    )
    total: float = Field(description="its part of the tenant's total value T_i")
    share: float = Field(description="value over the tenant's value (0 when that is 0)")
    served: float = Field(
        description="the fraction of the model's demand its seats and streams serve within "
        "its SLA, as valued (value without the weight)"
    )


class CertificateDocument(BaseModel):
    """The certificate of an allocation: every agent's row and the allocation-level figures."""

    # As for the rows; ``lambda`` is ``lambda_ef`` here.
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, serialize_by_alias=True
    )

    fair: bool = Field(
        description="every agent's criterion holds exactly as stated (λ = 0 for everyone)"
    )
    relaxed: bool = Field(
        description="some agent's criterion holds only relaxed (its lambda > 0): the "
        "allocation is not fair in the sense that agent asked for"
    )
    violations: int = Field(description="how many agents' criteria fail even at λ = 1")
    lambda_ef: float = Field(
        alias="lambda",
        description="the largest λ an EF-type agent needs (0: none is relaxed)",
    )
    lambda_prop: float = Field(description="the largest λ a PROP-type agent needs")
    lambda_lower_bound: float | None = Field(
        description="a proven lower bound on λ*, the least λ at which some allocation meets "
        "every EF-type criterion relaxed by λ and every PROP-type one exactly: λ* lies in "
        "[lambda_lower_bound, lambda] when lambda_prop is 0; null when no bound is known"
    )
    guarantee: str | None = Field(
        description="the construction of the guarantees table this allocation started from, "
        "whose agents are marked guaranteed; null when none applies"
    )
    agents: dict[str, AgentCertificateDocument] = Field(description="the rows, by agent name")
    objective: Objective
    objective_value: float | None = Field(
        description="the objective of the allocation; null when not finite (Nash with a zero value)"
    )
    unconstrained_value: float | None = Field(
        description="the best objective without fairness; null when not computed"
    )
    ratio: float | None = Field(description="objective_value against unconstrained_value")
    solver: str = Field(description='e.g. "efm+lp+moves+lp" (a construction, then the share '
                        'LP, seat moves and swaps, the share LP again: the steps taken), '
                        '"highs" (exact MILP), "highs-lp+fractional"')
    status: str = Field(description='"optimal", "feasible", "heuristic" or "constructive"')
    gap: float | None = Field(description="the relative MIP gap, when known")
    time_s: float = Field(description="wall time of the solve")
    notes: list[str] = Field(description="e.g. curves that are estimates")
    models: dict[str, dict[str, ModelShare]] = Field(
        default_factory=dict,
        description="per tenant, per model id: the model's part of the tenant's bundle; empty "
        "for an instance without models (gpufair divide) and in certificates stored before "
        "models had weights",
    )


_CERTIFICATE: TypeAdapter[CertificateDocument] = TypeAdapter(CertificateDocument)


def parse_certificate(document: Any) -> CertificateDocument:
    """A stored certificate document read back; pydantic's ValidationError names a bad field."""
    return _CERTIFICATE.validate_python(document)


def certify(
    instance: Instance,
    allocation: Allocation,
    *,
    objective: Objective | None = None,
    unconstrained_value: float | None = None,
    lambda_lower_bound: float | None = None,
    guarantee: str | None = None,
    guaranteed: frozenset[str] = frozenset(),
    solver: str = "none",
    status: str = "unknown",
    gap: float | None = None,
    time_s: float = 0.0,
    notes: tuple[str, ...] = (),
) -> Certificate:
    """Validate the allocation and compute its certificate (never raises for unfairness).

    Every agent is measured exactly (``holds``, ``slack``) and by the least relaxation under
    which its criterion holds (``lam``); the allocation-level λ are the largest of those.
    ``guaranteed`` names the agents whose criterion the guarantees table promises (what
    allocator.guarantee found for the instance), ``lambda_lower_bound`` what a solver proved
    about λ*; both are the caller's claims, stated as given."""
    validate_allocation(instance, allocation)
    b = bundles(instance, allocation)
    objective = objective or instance.objective
    agents: dict[str, AgentCertificate] = {}
    for spec in instance.agents:
        i = spec.name
        terms = constraint_terms(instance, b, i)
        slack = min((a for _, a, _ in terms), default=None)
        lam: float | None = minimal_relaxation(terms)
        if lam is not None and lam > 1.0:
            # Beyond 1, unless λ = 1 itself is within the tolerance.
            lam = 1.0 if all(a + bb >= -TOLERANCE for _, a, bb in terms) else None
        t = b.total[i]
        agents[i] = AgentCertificate(
            agent=i,
            criterion=spec.criterion,
            weight=spec.weight,
            alpha=b.alpha[i],
            total=t,
            value=b.view[i][i],
            normalised_value=b.view[i][i] / t if t > 0 else 0.0,
            holds=slack is None or slack >= -TOLERANCE,
            slack=slack,
            lam=lam,
            factor=None if lam is None else relaxed_factor(spec.criterion, b.alpha[i], lam),
            guaranteed=i in guaranteed,
            envy={j: b.view[i][j] - b.view[i][i] for j in b.agents if j != i},
        )
    normalised = [a.normalised_value for a in agents.values() if a.total > 0]
    value = objective_value(objective, normalised)
    ratio = (
        objective_ratio(objective, value, unconstrained_value, len(normalised))
        if unconstrained_value is not None
        else None
    )
    return Certificate(
        agents=agents,
        objective=objective,
        objective_value=value,
        unconstrained_value=unconstrained_value,
        ratio=ratio,
        lambda_lower_bound=lambda_lower_bound,
        guarantee=guarantee,
        solver=solver,
        status=status,
        gap=gap,
        time_s=time_s,
        notes=notes,
    )


def check_certificate(instance: Instance, allocation: Allocation, certificate: Certificate) -> None:
    """Raise CertificateError naming the first figure of ``certificate`` that the checker does
    not reproduce for ``allocation``.

    A certificate is stored and served as the proof that each tenant's criterion holds, so every
    figure the checker computes is recomputed and compared: one row per agent of the instance
    and no other; each row's criterion, weight, α, total, value, normalised value, holds,
    slack, λ, factor and envy; the objective's value and its ratio to the stated unconstrained
    optimum. A row marked ``guaranteed`` must hold, as the guarantees table promises. What the
    checker cannot recompute — the solver, status, gap, time, notes, the unconstrained optimum
    itself and the lower bound on λ* — is the solver's claim and stays as stated."""
    again = certify(instance, allocation, objective=certificate.objective)
    stated_agents, checked_agents = set(certificate.agents), set(again.agents)
    if stated_agents != checked_agents:
        raise CertificateError(
            f"certificate: rows for {sorted(stated_agents)}, the instance's agents are "
            f"{sorted(checked_agents)}"
        )
    for name, checked in again.agents.items():
        stated = certificate.agents[name]
        stated_row = stated.document().model_dump(by_alias=True, exclude={"guaranteed"})
        checked_row = checked.document().model_dump(by_alias=True, exclude={"guaranteed"})
        abs_tol = RESTATED_ABS_TOL * max(1.0, checked.total)
        for figure, checked_value in checked_row.items():
            if not _restates(stated_row[figure], checked_value, abs_tol):
                raise CertificateError(
                    f"certificate: {name!r} {figure} is {stated_row[figure]!r}, the checker "
                    f"finds {checked_value!r}"
                )
        if stated.guaranteed and not checked.holds:
            raise CertificateError(
                f"certificate: {name!r} is marked guaranteed but its criterion does not hold"
            )
    counted = sum(1 for row in again.agents.values() if row.total > 0)
    ratio = (
        None
        if certificate.unconstrained_value is None
        else objective_ratio(
            certificate.objective, again.objective_value, certificate.unconstrained_value, counted
        )
    )
    for figure, stated_value, checked_value in (
        ("objective_value", certificate.objective_value, again.objective_value),
        ("ratio", certificate.ratio, ratio),
    ):
        if not _restates(stated_value, checked_value, RESTATED_ABS_TOL):
            raise CertificateError(
                f"certificate: {figure} is {stated_value!r}, the checker finds {checked_value!r}"
            )


def _restates(stated: Any, checked: Any, abs_tol: float) -> bool:
    """Whether a stated figure is the checker's: numbers within float noise (``abs_tol``, or
    relatively; infinities and NaN only as themselves), tables of numbers key by key, anything
    else equal."""
    if isinstance(checked, dict):
        return (
            isinstance(stated, dict)
            and set(stated) == set(checked)
            and all(_restates(stated[key], value, abs_tol) for key, value in checked.items())
        )
    if isinstance(checked, float) and not isinstance(stated, bool):
        if not isinstance(stated, int | float):
            return False
        if math.isnan(checked) or math.isinf(checked):
            return stated == checked or (math.isnan(checked) and math.isnan(stated))
        return math.isclose(stated, checked, rel_tol=RESTATED_REL_TOL, abs_tol=abs_tol)
    return bool(stated == checked) and type(stated) is type(checked)


def validate_allocation(instance: Instance, allocation: Allocation) -> None:
    """Raise AllocationError unless the allocation is complete and respects every constraint."""
    agents = {a.name for a in instance.agents}
    if set(allocation.indivisible) != set(instance.indivisible):
        missing = sorted(set(instance.indivisible) - set(allocation.indivisible))
        extra = sorted(set(allocation.indivisible) - set(instance.indivisible))
        raise AllocationError(f"indivisible goods: missing {missing}, unknown {extra}")
    for g, holder in allocation.indivisible.items():
        if holder is None:
            if g not in instance.optional and any((i, g) not in instance.forbidden for i in agents):
                raise AllocationError(f"indivisible good {g!r} is given to nobody")
            continue
        if holder not in agents:
            raise AllocationError(f"indivisible good {g!r} given to unknown agent {holder!r}")
        if (holder, g) in instance.forbidden:
            raise AllocationError(f"indivisible good {g!r}: {holder!r} may not have it")
    if set(allocation.divisible) != set(instance.divisible):
        missing = sorted(set(instance.divisible) - set(allocation.divisible))
        extra = sorted(set(allocation.divisible) - set(instance.divisible))
        raise AllocationError(f"divisible goods: missing {missing}, unknown {extra}")
    held: dict[str, set[str]] = {i: set() for i in agents}
    for g, holder in allocation.indivisible.items():
        if holder is not None:
            held[holder].add(g)
    for d, shares in allocation.divisible.items():
        total = 0.0
        for i, x in shares.items():
            if i not in agents:
                raise AllocationError(f"divisible good {d!r}: share for unknown agent {i!r}")
            if not (-ZERO_SHARE <= x <= 1 + ZERO_SHARE) or math.isnan(x):
                raise AllocationError(f"divisible good {d!r}: share {x!r} of {i!r} not in [0, 1]")
            total += x
            needed = instance.requires.get(d)
            if needed is not None and x > ZERO_SHARE and not held[i].intersection(needed):
                raise AllocationError(
                    f"divisible good {d!r}: {i!r} has a share but holds none of its "
                    f"required goods"
                )
        if total > 1.0 + 1e-6 or (d not in instance.optional and total < 1.0 - 1e-6):
            raise AllocationError(f"divisible good {d!r}: shares sum to {total:.9g}, not 1")
    for i, caps in instance.caps.items():
        for group, most in caps:
            count = len(held.get(i, set()).intersection(group))
            if count > most:
                raise AllocationError(
                    f"agent {i!r} holds {count} goods of a group capped at {most}"
                )
