"""Properties of ``divide``: certified, complete, deterministic, optimal among fair allocations."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random

import pulp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from allocator import (
    Agent,
    Allocation,
    AllocationError,
    Instance,
    InstanceError,
    SolveOptions,
    certify,
    divide,
    validate_allocation,
)
from allocator.certificate import bundles, constraint_terms
from allocator.constructive import efm_allocation, picking_allocation, prop_alpha_allocation
from allocator.criteria import EF_TYPE, Criterion
from allocator.errors import InfeasibleError
from allocator.options import Churn
from bench.instances import RandomSource, random_instance
from tests.allocator.strategies import instances

OPTIONS = SolveOptions(time_limit_s=20.0, gap=0.0)


@given(instances())
def test_every_division_is_complete_and_its_certificate_honest(instance: Instance) -> None:
    # No exception for lack of fairness: divide returns its best allocation and says whether
    # every criterion holds.
    division = divide(instance, OPTIONS)
    validate_allocation(instance, division.allocation)
    cert = division.certificate
    assert 0.0 <= cert.lambda_ef <= 1.0 and 0.0 <= cert.lambda_prop <= 1.0
    again = certify(instance, division.allocation)
    assert {a: (c.holds, c.lam) for a, c in again.agents.items()} == {
        a: (c.holds, c.lam) for a, c in cert.agents.items()}
    assert again.fair == cert.fair == cert.to_dict()["fair"]
    assert not (cert.fair and cert.relaxed)
    assert set(division.allocation.indivisible) == set(instance.indivisible)
    assert all(h is not None for h in division.allocation.indivisible.values())
    for d in instance.divisible:
        assert math.isclose(sum(division.allocation.divisible[d].values()), 1.0, abs_tol=1e-9)
    if cert.violations:
        # Only where the exact MILP proved that nothing meets even the fully relaxed criteria.
        # Known source: EFM is unweighted, so an EFM agent beside a heavier agent can be left
        # without room (e.g. only divisible goods, where no relaxation changes anything).
        assert any(a.criterion == "efm" for a in instance.agents)
        assert len({a.weight for a in instance.agents}) > 1


@settings(max_examples=25)
@given(
    instances(weights=(1e-6, 1.0, 1e6), real_values=True),
    st.sampled_from((1.0, 1e150, 1e200, 1e300, 1e307)),
)
def test_huge_values_are_refused_or_certified_in_finite_numbers(
    instance: Instance, scale: float
) -> None:
    """Whatever the magnitude of the values, divide either refuses the instance naming its
    values or certifies it in finite numbers: values adding up past what a float holds once
    printed NaN and Infinity into the certificate, which is no JSON."""
    scaled = dataclasses.replace(
        instance,
        values={
            agent: {good: value * scale for good, value in row.items()}
            for agent, row in instance.values.items()
        },
    )
    try:
        division = divide(scaled, SolveOptions(time_limit_s=5.0))
    except InstanceError as refused:
        assert "values[" in str(refused) and scale > 1e150, refused
        return
    json.dumps(division.to_dict(), allow_nan=False)
    rows = division.certificate.agents.values()
    assert all(row.slack is None or math.isfinite(row.slack) for row in rows), rows


def _heavier_beside_efm(criterion: Criterion) -> Instance:
    """One pool both agents value alike: EFM is unweighted, so the EFM agent wants at least
    the heavier agent's share, which wants (by EF or PROP, weighted) twice the EFM agent's:
    no allocation meets both, even relaxed (nothing indivisible to relax by)."""
    return Instance(
        agents=(Agent("t0", 1.0, "efm"), Agent("t1", 2.0, criterion)),
        indivisible=(), divisible=("pool",),
        values={"t0": {"pool": 1.0}, "t1": {"pool": 1.0}},
    )


@settings(max_examples=20)
@given(instances(max_agents=3, max_indivisible=2, max_divisible=1))
@example(_heavier_beside_efm("ef"))
@example(_heavier_beside_efm("prop"))
def test_unfair_only_where_brute_force_finds_nothing_fair(instance: Instance) -> None:
    """A division fails some criterion (even relaxed, λ = 1) exactly where no allocation meets
    them all: brute force over every allocation (cheap at ≤ 3 agents and ≤ 2 indivisible
    goods) finds none. Both ways are checked on every example; the explicit examples are
    unfair ones, which the drawn examples hardly ever are."""
    division = divide(instance, OPTIONS)
    nothing_fair = _brute_force(instance, 1.0, 1.0) == -math.inf
    assert bool(division.certificate.violations) == nothing_fair, division.certificate.to_dict()


@settings(max_examples=25)
@given(instances(max_agents=4, max_indivisible=4))
def test_deterministic_and_independent_of_input_order(instance: Instance) -> None:
    first = divide(instance, OPTIONS).to_dict()
    rng = random.Random(len(instance.agents) * 31 + len(instance.indivisible))
    agents = list(instance.agents)
    goods = list(instance.indivisible)
    rng.shuffle(agents)
    rng.shuffle(goods)
    shuffled = dataclasses.replace(
        instance, agents=tuple(agents), indivisible=tuple(goods),
        divisible=tuple(reversed(instance.divisible)),
    )
    second = divide(shuffled, OPTIONS).to_dict()
    for doc in (first, second):
        doc["certificate"].pop("time_s")
    assert first == divide(instance, OPTIONS).to_dict() | {"certificate": first["certificate"]}
    assert first["indivisible"] == second["indivisible"]
    assert first["divisible"] == second["divisible"]


def _brute_force(instance: Instance, lambda_ef: float, lambda_prop: float = 0.0) -> float:
    """Best objective over all fair allocations: enumerate indivisible assignments (and, for
    EFM, which agents hold divisible shares), solve an LP over the divisible fractions."""
    names = [a.name for a in instance.agents]
    best = -math.inf
    for owners in itertools.product(names, repeat=len(instance.indivisible)):
        assignment = dict(zip(instance.indivisible, owners, strict=True))
        supports = [tuple(names)]
        if any(a.criterion == "efm" for a in instance.agents) and instance.divisible:
            supports = [s for r in range(1, len(names) + 1)
                        for s in itertools.combinations(names, r)]
        for support in supports:
            value = _best_shares(instance, assignment, set(support), lambda_ef, lambda_prop)
            best = max(best, value)
    return best


def _best_shares(instance: Instance, assignment: dict[str, str], support: set[str],
                 lam: float, mu: float) -> float:
    prob = pulp.LpProblem("brute", pulp.LpMaximize)
    x = {(i, d): pulp.LpVariable(f"x_{i}_{d}", 0, 1 if i in support else 0)
         for i in support for d in instance.divisible}
    t = {i: sum(instance.value(i, g) for g in (*instance.indivisible, *instance.divisible))
         for i in (a.name for a in instance.agents)}

    def view(i: str, j: str) -> pulp.LpAffineExpression:
        return (pulp.lpSum(instance.value(i, g) for g, o in assignment.items() if o == j)
                + pulp.lpSum(instance.value(i, d) * x[j, d] for d in instance.divisible
                             if (j, d) in x))

    for d in instance.divisible:
        prob += pulp.lpSum(x[i, d] for i in support) == 1
    weight_sum = sum(a.weight for a in instance.agents)
    for a in instance.agents:
        i = a.name
        if t[i] == 0:
            continue
        alpha = sum(instance.value(i, g) for g in instance.indivisible) / t[i]
        base = {"ef_alpha": alpha, "prop_alpha": alpha, "ef1": 1.0, "prop1": 1.0}.get(
            a.criterion, 0.0)
        f = base + (lam if a.criterion in EF_TYPE else mu) * (1 - base)
        if a.criterion in ("prop_alpha", "prop1", "prop"):
            out = max((instance.value(i, g) for g, o in assignment.items() if o != i), default=0)
            prob += view(i, i) + f * out >= a.weight / weight_sum * t[i]
            continue
        for b in instance.agents:
            j = b.name
            if j == i:
                continue
            mx = max((instance.value(i, g) for g, o in assignment.items() if o == j), default=0)
            if a.criterion == "efm":
                holds = j in support and bool(instance.divisible)
                prob += view(i, i) >= view(i, j) - (lam * mx if holds else mx)
            else:
                prob += view(i, i) * (1 / a.weight) >= (view(i, j) - f * mx) * (1 / b.weight)
    prob += pulp.lpSum(view(a.name, a.name) * (1 / t[a.name]) for a in instance.agents
                       if t[a.name] > 0)
    prob.solve(pulp.HiGHS(msg=False))
    if prob.status != pulp.LpStatusOptimal:
        return -math.inf
    return float(pulp.value(prob.objective) or 0.0)


@settings(max_examples=30)
@given(instances(max_agents=3, max_indivisible=3, max_divisible=1, weights=(1.0,),
                 objectives=("utilitarian",)))
def test_welfare_equals_brute_force_optimum_among_fair(instance: Instance) -> None:
    division = divide(instance, OPTIONS)
    cert = division.certificate
    if cert.lambda_ef > 0 or cert.lambda_prop > 0:
        # λ was needed: nothing is fair at λ = 0 ...
        assert _brute_force(instance, 0.0) == -math.inf
    else:
        best = _brute_force(instance, 0.0)
        assert division.certificate.objective_value == pytest.approx(best, abs=1e-6)


def _identical(n: int, alpha: float) -> Instance:
    agents = tuple(Agent(f"t{k}", criterion="ef_alpha") for k in range(n))
    return Instance(
        agents=agents, indivisible=("seat",), divisible=("pool",),
        values={a.name: {"seat": alpha, "pool": 1 - alpha} for a in agents},
    )


@pytest.mark.parametrize(("n", "alpha"), [(3, 0.3), (3, 0.45), (4, 0.25), (3, 0.7),
                                          (4, 0.5), (5, 0.4)])
def test_identical_agents_ef_alpha_feasible_iff_alpha_small(n: int, alpha: float) -> None:
    division = divide(_identical(n, alpha), OPTIONS)
    assert division.certificate.violations == 0
    if alpha <= 1 / (n - 1):
        assert division.certificate.lambda_ef == 0.0
    else:
        assert division.certificate.lambda_ef > 0.0
        assert max(a.lam or 0.0 for a in division.certificate.agents.values()) == (
            division.certificate.lambda_ef)
        assert all(a.lam is not None
                   for a in division.certificate.agents.values())


@given(instances(weights=(1.0,), max_agents=4, max_indivisible=5))
def test_constructive_efm_is_efm(instance: Instance) -> None:
    efm = dataclasses.replace(
        instance, agents=tuple(dataclasses.replace(a, criterion="efm") for a in instance.agents)
    )
    cert = certify(efm, efm_allocation(efm))
    assert cert.fair, cert.to_dict()


@given(instances(max_agents=4, max_indivisible=5))
def test_picking_sequence_is_complete(instance: Instance) -> None:
    validate_allocation(instance, picking_allocation(instance))


@given(instances(max_agents=4, max_indivisible=5))
def test_prop_alpha_construction_is_valid_and_mostly_prop_alpha(instance: Instance) -> None:
    allocation = prop_alpha_allocation(instance)
    validate_allocation(instance, allocation)


def test_prop_alpha_construction_rate() -> None:
    """The greedy PROP^α construction is best effort: measure how often it certifies."""
    source = RandomSource(random.Random(7))
    ok = 0
    for _ in range(200):
        inst = random_instance(source, agents=(4, 4), indivisible=(5, 5), divisible=(1, 1),
                               criteria=("prop_alpha",))
        ok += certify(inst, prop_alpha_allocation(inst)).fair
    assert ok >= 190, ok


def test_validate_allocation_errors() -> None:
    inst = _identical(2, 0.5)
    good = Allocation({"seat": "t0"}, {"pool": {"t1": 1.0}})
    validate_allocation(inst, good)
    with pytest.raises(AllocationError, match="missing"):
        validate_allocation(inst, Allocation({}, {"pool": {"t1": 1.0}}))
    with pytest.raises(AllocationError, match="unknown agent"):
        validate_allocation(inst, Allocation({"seat": "zz"}, {"pool": {"t1": 1.0}}))
    with pytest.raises(AllocationError, match="sum to"):
        validate_allocation(inst, Allocation({"seat": "t0"}, {"pool": {"t1": 0.5}}))


def test_envy_terms_match_certificate_slack() -> None:
    inst = _identical(3, 0.6)
    division = divide(inst, OPTIONS)
    b = bundles(inst, division.allocation)
    for name, agent in division.certificate.agents.items():
        margins = [a for _, a, _ in constraint_terms(inst, b, name)]
        assert agent.slack == pytest.approx(min(margins))


def test_a_churn_bound_no_allocation_meets_is_refused_not_broken() -> None:
    """A side constraint is not a criterion to relax: when the seat's previous holder may no
    longer hold it (forbidden), no allocation keeps a churn limit of 0 counting that seat. The
    exact MILP said so, and the scalable path then returned an allocation one move past the
    limit as if it held; now the division refuses (the cluster layer counts only seats their
    holder could keep, test_allocate)."""
    agents = (Agent("a", criterion="ef1"), Agent("b", criterion="ef1"))
    instance = Instance(
        agents=agents, indivisible=("s", "t"), divisible=("pool",),
        values={"a": {"s": 1.0, "t": 1.0, "pool": 1.0}, "b": {"s": 1.0, "t": 1.0, "pool": 1.0}},
        forbidden=frozenset({("a", "s")}),
    )  # fmt: skip
    with pytest.raises(InfeasibleError, match="within 0 seat moves"):
        divide(instance, OPTIONS, churn=Churn(previous={"s": "a"}, limit=0))
