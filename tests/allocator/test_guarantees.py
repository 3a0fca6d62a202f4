"""The guarantees table (docs/fairness.md, allocator.guarantee) holds: on random instances of 4
to 64 agents, every row's agents meet their criterion exactly (λ = 0), by the one checker, in
what ``divide`` returns; and a certificate never calls a relaxed answer fair."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator import Instance, SolveOptions, certify, divide
from allocator.constructive import efm_allocation, picking_allocation
from allocator.criteria import Criterion
from allocator.guarantee import covered, guarantee
from allocator.instance import Agent
from bench.instances import NumpySource, random_instance
from tests.allocator.strategies import instances

OPTIONS = SolveOptions(time_limit_s=20.0)


@st.composite
def large_instances(
    draw: st.DrawFn, criteria: tuple[Criterion, ...], weights: tuple[float, ...]
) -> Instance:
    """4 to 64 agents, up to three times as many indivisible goods and 0–4 divisible ones,
    real values, drawn from a seeded generator whose seed Hypothesis draws (so a failure
    replays and shrinks to its seed)."""
    seed = draw(st.integers(0, 2**32 - 1))
    source = NumpySource(np.random.default_rng(seed))
    agents = draw(st.integers(4, 64))
    return random_instance(source, agents=(agents, agents), indivisible=(0, 3 * agents),
                           divisible=(0, 4), weights=weights, criteria=criteria,
                           real_values=True)


def _assert_guaranteed_hold(instance: Instance, every_agent: bool) -> None:
    division = divide(instance, OPTIONS)
    certificate = certify(instance, division.allocation)  # the one checker, afresh
    promised = covered(instance)
    assert promised is not None
    _, agents = promised
    assert every_agent is (agents == {a.name for a in instance.agents})
    for name in agents:
        row = certificate.agents[name]
        assert row.holds and row.lam == 0.0, (name, row)
        assert division.certificate.agents[name].guaranteed
    if every_agent:
        assert certificate.fair and not certificate.relaxed
        assert division.certificate.fair and division.certificate.lambda_ef == 0.0
        assert division.certificate.lambda_lower_bound == 0.0


@settings(max_examples=12, deadline=None)
@given(large_instances(("efm", "ef1", "prop1"), (1.0,)))
def test_equal_weights_efm_ef1_prop1_all_hold_exactly(instance: Instance) -> None:
    # Row 1: EFM ⇒ EF1 and PROP1 with equal weights.
    _assert_guaranteed_hold(instance, every_agent=True)


@settings(max_examples=12, deadline=None)
@given(large_instances(("prop_alpha",), (1.0,)))
def test_equal_weights_prop_alpha_all_hold_exactly(instance: Instance) -> None:
    # Row prop_alpha (proof 5): an agent whose EFM rows hold meets PROP^α at share 1/n.
    _assert_guaranteed_hold(instance, every_agent=True)


@settings(max_examples=12, deadline=None)
@given(large_instances(("prop_alpha", "efm", "ef1", "prop1"), (1.0,)))
def test_equal_weights_any_mix_with_prop_alpha_all_hold_exactly(instance: Instance) -> None:
    # The EFM construction meets efm, ef1, prop1 and prop_alpha at once with equal weights.
    _assert_guaranteed_hold(instance, every_agent=True)


@settings(max_examples=12, deadline=None)
@given(large_instances(("prop_alpha",), (0.5, 1.0, 2.0, 4.0)))
def test_weighted_prop_alpha_holds_up_to_the_mean_weight(instance: Instance) -> None:
    # With weights the row covers exactly the agents of at most the mean weight.
    promised = covered(instance)
    assert promised is not None and promised[0] == "efm"
    weights = [a.weight for a in instance.agents]
    mean = sum(weights) / len(weights)
    assert {a.name for a in instance.agents if a.weight <= mean} <= promised[1]
    _assert_guaranteed_hold(instance, every_agent=promised[1] == {a.name for a in instance.agents})


@settings(max_examples=30, deadline=None)
@given(large_instances(("prop_alpha",), (1.0, 2.0, 4.0)))
def test_efm_construction_is_prop_alpha_up_to_the_mean_weight(instance: Instance) -> None:
    certificate = certify(instance, efm_allocation(instance))
    mean = sum(a.weight for a in instance.agents) / len(instance.agents)
    assert all(certificate.agents[a.name].holds for a in instance.agents if a.weight <= mean)


@settings(max_examples=12, deadline=None)
@given(large_instances(("efm",), (1.0, 2.0, 4.0)))
def test_efm_holds_exactly_whatever_the_weights(instance: Instance) -> None:
    # EFM is unweighted by definition: the construction meets it beside heavier agents too.
    _assert_guaranteed_hold(instance, every_agent=True)


@settings(max_examples=12, deadline=None)
@given(large_instances(("ef1",), (0.5, 1.0, 2.0, 4.0)))
def test_weighted_ef1_holds_exactly(instance: Instance) -> None:
    # Row 2: the weighted picking sequence, shares by weight.
    _assert_guaranteed_hold(instance, every_agent=True)


@settings(max_examples=12, deadline=None)
@given(large_instances(("prop_alpha", "ef_alpha", "efm", "ef1", "prop1", "ef", "prop"),
                       (1.0, 2.0, 4.0)))
def test_guaranteed_agents_hold_in_any_mix(instance: Instance) -> None:
    # Whatever the others ask, the agents the table covers meet their criterion exactly.
    promised = covered(instance)
    if promised is not None:
        everyone = promised[1] == {a.name for a in instance.agents}
        _assert_guaranteed_hold(instance, every_agent=everyone)


@settings(max_examples=30, deadline=None)
@given(large_instances(("efm",), (1.0,)))
def test_efm_construction_is_exactly_efm(instance: Instance) -> None:
    assert certify(instance, efm_allocation(instance)).fair


@settings(max_examples=30, deadline=None)
@given(large_instances(("ef1",), (0.5, 1.0, 3.0)))
def test_weighted_picking_is_weighted_ef1(instance: Instance) -> None:
    assert certify(instance, picking_allocation(instance)).fair


def test_the_construction_covering_most_agents_is_chosen() -> None:
    agents = (Agent("a", 1.0, "ef1"), Agent("b", 4.0, "ef1"), Agent("c", 1.0, "efm"))
    instance = Instance(agents, ("g",), ("d",), {a.name: {"g": 1.0, "d": 1.0} for a in agents})
    # EFM covers c and the lightest ef1 agent a; the weighted picking both ef1 agents: a tie,
    # and EFM comes first in the table.
    assert covered(instance) == ("efm", frozenset({"a", "c"}))
    found = guarantee(instance)
    assert found is not None and found.construction == "efm"


@given(instances(max_agents=4, max_indivisible=4, max_divisible=2))
def test_a_relaxed_answer_never_says_fair(instance: Instance) -> None:
    certificate = divide(instance, OPTIONS).certificate
    document = certificate.to_dict()
    exact = all(row.holds for row in certificate.agents.values())
    assert document["fair"] is exact is certificate.fair
    if document["relaxed"] or document["violations"]:
        assert document["fair"] is False
    if any(row["lambda"] != 0.0 for row in document["agents"].values()):
        assert document["fair"] is False
    if document["fair"]:
        assert document["lambda"] == document["lambda_prop"] == 0.0
    assert "holds" not in document


def test_identical_agents_beyond_the_ef_alpha_threshold_are_relaxed_not_fair() -> None:
    # n = 3 identical EF^α agents, α = 0.7 > 1/(n−1): no EF^α allocation exists; the answer is
    # relaxed (λ = 2/7), and says so.
    agents = tuple(Agent(f"t{k}", 1.0, "ef_alpha") for k in range(3))
    instance = Instance(agents, ("seat",), ("pool",),
                        {a.name: {"seat": 0.7, "pool": 0.3} for a in agents})
    certificate = divide(instance, OPTIONS).certificate
    document = certificate.to_dict()
    assert document["relaxed"] is True and document["fair"] is False
    assert document["violations"] == 0
    assert abs(document["lambda"] - 2 / 7) < 1e-3
    lower = document["lambda_lower_bound"]
    assert lower is not None and 0.0 < lower <= document["lambda"]
    assert certificate.guarantee is None


def test_guaranteed_rows_are_marked_in_the_certificate() -> None:
    # b is heavier than the mean weight: no row covers its prop_alpha.
    agents = (Agent("a", 1.0, "efm"), Agent("b", 3.0, "prop_alpha"))
    instance = Instance(agents, ("g0", "g1"), ("d",), {"a": {"g0": 3.0, "g1": 1.0, "d": 2.0},
                                                       "b": {"g0": 1.0, "g1": 1.0, "d": 5.0}})
    document = divide(instance, OPTIONS).certificate.to_dict()
    assert document["guarantee"] == "efm"
    assert document["agents"]["a"]["guaranteed"] is True
    assert document["agents"]["b"]["guaranteed"] is False
    assert document["agents"]["a"]["holds"] is True
