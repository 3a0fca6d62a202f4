"""The scalable path of ``divide`` (fractional seats, share LP, seat moves, the reweighting
and the relaxation bound) at cluster sizes.

Instances come from ``bench/instances.py``: the headline generator of the 64 × 64 instances
(``examples/make_large_instance.py``), the benchmark's (weights 1–4) and the small random ones;
all are seeded, so every number asserted here was measured on exactly these instances and a
failure names the seed.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator import (
    Agent,
    Allocation,
    Instance,
    SolveOptions,
    certify,
    divide,
    validate_allocation,
)
from allocator import division as division_module
from allocator.certificate import TOLERANCE, bundles, constraint_terms
from allocator.cluster.instance import pool_name, seat_name
from allocator.constructive import picking_allocation
from allocator.criteria import Criterion
from allocator.division import EXACT_AGENTS, EXACT_TYPES, Division, _rank, _types
from allocator.errors import SolverError
from allocator.exact.milp import solve_fair
from allocator.instance import canonical, validate_instance
from allocator.scalable import share_lp
from allocator.scalable.data import PROP_KIND, Data, allocation_from, seat_owners
from allocator.scalable.fractional import (
    PROOF_MARGIN,
    _envy_pairs,
    _Lp,
    _ratio,
    _round,
    _Types,
    goods_by_type,
    relaxation_bound,
)
from allocator.scalable.moves import Moves
from allocator.scalable.path import divide_fixed_seats
from allocator.scalable.search import Search
from bench.instances import (
    NumpySource,
    cluster_instance,
    crowded_instance,
    headline_instance,
    random_instance,
)
from tests.allocator.strategies import instances


def _searched(instance: Instance, options: SolveOptions) -> Division:
    """What ``divide``'s search beyond the guarantees (exact MILP, scalable path, completion)
    answers alone, certified: the path these tests are about. ``divide`` itself returns it only
    when it meets every guaranteed criterion (tests/allocator/test_guarantees.py)."""
    validate_instance(instance)
    inst = canonical(instance)
    began = time.monotonic()
    found, notes = division_module._search(inst, inst.objective, options, began,
                                           began + options.time_limit_s, None, frozenset())
    best = division_module._unconstrained(inst, inst.objective, options,
                                          began + options.time_limit_s, None)
    certificate = certify(inst, found.allocation, unconstrained_value=best,
                          lambda_lower_bound=found.lambda_lower_bound, solver=found.solver,
                          status=found.status, gap=found.gap, notes=notes)
    return Division(found.allocation, certificate)


def assert_honest(instance: Instance, division: object) -> None:
    """Complete, λ in [0, 1], and the checker reproduces every agent's verdict and slack."""
    allocation, cert = division.allocation, division.certificate  # type: ignore[attr-defined]
    validate_allocation(instance, allocation)
    assert 0.0 <= cert.lambda_ef <= 1.0 and 0.0 <= cert.lambda_prop <= 1.0
    again = certify(instance, allocation)
    for name, row in cert.agents.items():
        assert again.agents[name].holds == row.holds, name
        assert again.agents[name].lam == row.lam, name
        assert again.agents[name].slack == pytest.approx(row.slack, abs=1e-12), name
    assert all(holder is not None for holder in allocation.indivisible.values())


@pytest.mark.parametrize(("tenants", "gpus", "seed"), [
    (12, 6, 1), (16, 16, 0), pytest.param(24, 8, 2, marks=pytest.mark.slow), (32, 32, 0)])
def test_generated_instances_are_divided_fairly(tenants: int, gpus: int, seed: int) -> None:
    # Measured: on these the scalable path meets every agent's criterion (at some λ ≤ 1; up to
    # 24 agents the exact MILP may then lower λ in the time left).
    instance = headline_instance(tenants, gpus, seed)
    division = _searched(instance, SolveOptions(time_limit_s=10.0))
    assert_honest(instance, division)
    cert = division.certificate
    assert cert.solver in ("highs-lp+fractional", "highs")
    assert cert.violations == 0, [a.agent for a in cert.agents.values() if a.lam is None]
    assert cert.ratio is not None and 0.0 < cert.ratio <= 1.0 + 1e-9


def test_must_show_64_tenants_64_gpus_all_criteria_hold() -> None:
    # The 64 × 64 headline instance (seed 0): every criterion holds, within the time limit.
    # Its speed (about 2 s wall on the shared 2-core VM) is measured by `gpufair bench
    # allocator`'s CLI runs, not here: a loaded CI machine must not fail a correct answer.
    instance = headline_instance(64, 64, 0)
    division = _searched(instance, SolveOptions(time_limit_s=20.0))
    assert_honest(instance, division)
    assert division.certificate.violations == 0
    assert division.certificate.lambda_prop == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_bench_instances_with_mixed_weights_never_raise(seed: int) -> None:
    # The benchmark's 8 × 8 instances (weights 1–4, EFM agents): the MILP proves several of
    # them have no allocation meeting every criterion even relaxed; divide still answers.
    instance = cluster_instance(8, 8, seed)
    division = divide(instance, SolveOptions(time_limit_s=4.0))
    assert_honest(instance, division)
    failing = [a for a in division.certificate.agents.values() if a.lam is None]
    assert len(failing) <= len(instance.agents) // 2


def test_a_time_limit_that_cuts_the_search_short_still_gives_an_honest_answer() -> None:
    # Unlimited, this instance's search runs for about 0.9 s (violations remain); 50 ms cuts
    # it short. Whether a solve keeps to its limit is a matter of wall time on a given machine:
    # `gpufair bench allocator` measures it against the limit, run by run.
    instance = cluster_instance(32, 32, 2)
    division = divide(instance, SolveOptions(time_limit_s=0.05))
    assert_honest(instance, division)


def test_deterministic_and_independent_of_input_order() -> None:
    instance = headline_instance(12, 6, 3)
    shuffled = dataclasses.replace(
        instance, agents=tuple(reversed(instance.agents)),
        indivisible=tuple(reversed(instance.indivisible)),
        divisible=tuple(reversed(instance.divisible)),
    )
    first = divide(instance, SolveOptions(time_limit_s=20.0)).to_dict()
    second = divide(shuffled, SolveOptions(time_limit_s=20.0)).to_dict()
    for doc in (first, second):
        doc["certificate"].pop("time_s")
    assert first == second


@settings(max_examples=30)
@given(
    instances(max_agents=6, max_indivisible=8, max_divisible=2),
    st.sampled_from(("utilitarian", "nash", "egalitarian")),
)
def test_scalable_path_on_any_instance_is_complete_and_honest(
    instance: Instance, objective: str
) -> None:
    # The scalable path alone (as divide uses it past EXACT_AGENTS): never an exception for
    # lack of fairness, and the LP's zero violation means every criterion holds.
    inst = canonical(instance)
    outcome = divide_fixed_seats(inst, objective, time.monotonic() + 10.0)  # type: ignore[arg-type]
    validate_allocation(inst, outcome.allocation)
    assert 0.0 <= outcome.lambda_ef <= 1.0 + 1e-7 and 0.0 <= outcome.lambda_prop <= 1.0 + 1e-7
    cert = certify(inst, outcome.allocation)
    if outcome.violation <= 1e-7:
        assert cert.violations == 0, cert.to_dict()
        assert cert.lambda_ef <= min(1.0, outcome.lambda_ef + 1e-7)
        assert cert.lambda_prop <= min(1.0, outcome.lambda_prop + 1e-7)


def test_side_constraints_are_respected() -> None:
    # Forbidden pairs, caps and coupled pools (the cluster layer's additions) on the picking
    # start: the result stays valid.
    kinds: list[tuple[Criterion, float]] = [("prop_alpha", 1.0), ("ef_alpha", 2.0), ("efm", 1.0)]
    agents = tuple(Agent(f"t{k}", criterion=c, weight=w) for k, (c, w) in enumerate(kinds))
    gpus = ("g0", "g1", "g2")
    seats = tuple(seat_name(g, s) for g in gpus for s in range(2))
    pools = tuple(pool_name(g) for g in gpus)
    values = {a.name: {g: 1.0 + k for g in seats} | {p: 2.0 for p in pools}
              for k, a in enumerate(agents)}
    instance = Instance(
        agents=agents, indivisible=seats, divisible=pools, values=values,
        forbidden=frozenset({("t0", seat_name("g0", 0)), ("t0", seat_name("g0", 1))}),
        requires={pool_name(g): (seat_name(g, 0), seat_name(g, 1)) for g in gpus},
        caps={"t1": ((seats, 2),)},
        optional=frozenset(pools),
    )
    division = divide(instance, SolveOptions(time_limit_s=5.0))
    assert_honest(instance, division)
    held = [g for g, holder in division.allocation.indivisible.items() if holder == "t1"]
    assert len(held) <= 2
    assert division.allocation.indivisible[seat_name("g0", 0)] != "t0"


def test_rounding_keeps_every_types_count() -> None:
    rng = np.random.default_rng(5)
    vm = np.repeat(rng.random((5, 4)), 3, axis=1)  # 4 types of 3 identical goods
    types = goods_by_type(vm)
    assert [len(t) for t in types] == [3, 3, 3, 3]
    counts = rng.dirichlet(np.ones(5), size=4).T * 3  # agents × types, columns sum to 3
    owner = _round(counts, types, vm.shape[1], np.stack([vm[:, t[0]] for t in types], axis=1))
    assert (owner >= 0).all()
    for t, members in enumerate(types):
        got = np.bincount(owner[members], minlength=5)
        # Each agent gets its count rounded down or up, never more off than that.
        assert ((got == np.floor(counts[:, t])) | (got == np.ceil(counts[:, t]))).all()


def test_small_instances_keep_the_exact_milp() -> None:
    instance = headline_instance(EXACT_AGENTS, 2, 0)
    division = divide(instance, SolveOptions(time_limit_s=20.0))
    assert division.certificate.status == "optimal"
    assert division.certificate.violations == 0


def _violation_at_one(instance: Instance, allocation: Allocation) -> float:
    """Σ over agents of how far each criterion fails at λ_ef = λ_prop = 1, beyond the checker's
    tolerance (normalised by T_i, as every margin of the checker)."""
    return sum(max(0.0, -s - TOLERANCE) for s in _slacks_at_one(instance, allocation))


def _slacks_at_one(instance: Instance, allocation: Allocation) -> list[float]:
    """Every agent's smallest margin at λ_ef = λ_prop = 1 (0 with nothing to compare)."""
    b = bundles(instance, allocation)
    return [min((a + s for _, a, s in constraint_terms(instance, b, agent.name)), default=0.0)
            for agent in instance.agents]


@settings(max_examples=40)
@given(instances(max_agents=5, max_indivisible=6, max_divisible=2, objectives=("utilitarian",)))
def test_relaxation_bound_never_exceeds_any_allocations_violation(instance: Instance) -> None:
    # The bound claims every allocation falls short by at least this much at λ = 1; check it
    # against the allocations at hand: divide's (the exact MILP here) and the picking sequence.
    inst = canonical(instance)
    data = Data(inst)
    bound = relaxation_bound(data.vm, data.vd, data.weight, data.kind, data.positive,
                             time.monotonic() + 10.0)
    assert bound is not None and bound >= 0.0
    for allocation in (divide(inst, SolveOptions(time_limit_s=10.0)).allocation,
                       picking_allocation(inst)):
        assert bound <= _violation_at_one(inst, allocation) + 1e-6


def _bound_with_every_row(data: Data) -> float:
    """The relaxation bound's LP with every envy row up front, by simplex: what the row rounds
    of relaxation_bound must converge to."""
    types = _Types(data.vm, data.vd)
    value, ns = types.value, len(types.seats)
    largest = data.vm.max(axis=1, initial=0.0)
    lp = _Lp(value, data.positive)
    prop = np.nonzero((data.kind == PROP_KIND) & data.positive)[0]
    lp.own_rows(prop, value[prop], data.share[prop] - largest[prop] - TOLERANCE)
    i, j = _envy_pairs(data.kind, data.positive)
    r = _ratio(data.kind, data.weight, i, j)
    pools_only = value.copy()
    pools_only[:, :ns] = 0.0
    lp.envy_rows(i, j, value[i], r[:, None] * value[i], -r * largest[i] - TOLERANCE)
    lp.envy_rows(i, j, value[i], r[:, None] * pools_only[i], np.full(len(i), -TOLERANCE))
    assert lp.run(time.monotonic() + 60.0)
    return max(0.0, float(lp.h.getInfo().objective_function_value))


@pytest.mark.parametrize(("tenants", "gpus", "seed"), [(8, 8, 1), (16, 16, 0), (32, 16, 3),
                                                     (64, 64, 0), (64, 64, 2)])
def test_relaxation_bound_rounds_reach_the_full_lp(tenants: int, gpus: int, seed: int) -> None:
    # relaxation_bound adds envy rows only while the last solution violates some; its answer
    # must be the optimum of the LP with every row (positive on several of these: the 64 × 64
    # seeds 0 and 2 are the benchmark's instances the bound proves unfair).
    data = Data(canonical(cluster_instance(tenants, gpus, seed)))
    bound = relaxation_bound(data.vm, data.vd, data.weight, data.kind, data.positive,
                             time.monotonic() + 60.0)
    assert bound is not None
    assert bound == pytest.approx(_bound_with_every_row(data), abs=1e-7)
    if (tenants, gpus) == (64, 64):
        assert bound > PROOF_MARGIN


def test_relaxation_bound_past_its_deadline_claims_nothing() -> None:
    data = Data(canonical(cluster_instance(16, 16, 0)))
    assert relaxation_bound(data.vm, data.vd, data.weight, data.kind, data.positive,
                            time.monotonic() - 1.0) is None


def test_a_failing_completion_keeps_the_scalable_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The completion is optional: a solver failure there must not cost the answer in hand.
    def broken(*args: object, **kwargs: object) -> None:
        raise SolverError("highs: simulated failure")

    monkeypatch.setattr(division_module, "_exact", broken)
    instance = canonical(cluster_instance(16, 16, 1))
    division = _searched(instance, SolveOptions(time_limit_s=20.0))
    assert_honest(instance, division)
    assert division.certificate.solver == "highs-lp+fractional"
    assert division.certificate.lambda_ef > 0.0


@pytest.mark.slow
def test_exact_milp_completes_what_the_scalable_path_left_relaxed() -> None:
    # The benchmark's 16 × 16 seed 1: the scalable path alone needs λ_ef > 0, yet an allocation
    # meeting every criterion exactly exists; with the time left, divide must find one.
    instance = canonical(cluster_instance(16, 16, 1))
    scalable = divide_fixed_seats(instance, "utilitarian", time.monotonic() + 20.0)
    assert scalable.lambda_ef > 0.0
    division = _searched(instance, SolveOptions(time_limit_s=20.0))
    assert_honest(instance, division)
    cert = division.certificate
    assert cert.fair
    assert cert.solver == "highs"
    scalable_value = certify(instance, scalable.allocation, objective="utilitarian")
    assert cert.objective_value >= scalable_value.objective_value - 1e-9


def middling_instance(seed: int) -> Instance:
    """10–12 agents (weights 1 and 2, every criterion), 18–24 distinct indivisible goods and
    1–3 divisible ones, integer values 0–9: past the exact-first size (EXACT_TYPES), within
    the completion's."""
    return random_instance(NumpySource(np.random.default_rng(seed)), agents=(10, 12),
                           indivisible=(18, 24), divisible=(1, 3))


@pytest.mark.slow
def test_middling_instances_meet_every_criterion_when_some_allocation_does() -> None:
    # The headline sizes past the exact-first size: on these seeds the exact MILP (a minute,
    # feasibility only) finds an allocation meeting every criterion exactly; divide must
    # return one too. The scalable path alone does not on most of them (λ > 0), so the
    # completion is what this tests.
    relaxed_alone = 0
    for seed in range(5):
        instance = canonical(middling_instance(seed))
        assert _types(instance) > EXACT_TYPES
        solve_fair(instance, objective=None, deadline=time.monotonic() + 60.0)
        scalable = divide_fixed_seats(instance, "utilitarian", time.monotonic() + 10.0)
        relaxed_alone += _rank(instance, scalable.allocation, "utilitarian")[:3] != (0, 0, 0)
        division = _searched(instance, SolveOptions(time_limit_s=20.0))
        assert_honest(instance, division)
        cert = division.certificate
        assert cert.fair, seed
    assert relaxed_alone >= 3


@pytest.mark.parametrize("seed", range(3))
def test_certificate_says_when_no_allocation_is_fair(seed: int) -> None:
    instance = crowded_instance(seed)
    division = _searched(instance, SolveOptions(time_limit_s=10.0))
    assert_honest(instance, division)
    cert = division.certificate
    assert cert.violations and cert.solver == "highs-lp+fractional"
    proof = [note for note in cert.notes if note.startswith("no allocation meets every")]
    assert len(proof) == 1, cert.notes
    data = Data(canonical(instance))
    bound = relaxation_bound(data.vm, data.vd, data.weight, data.kind, data.positive,
                             time.monotonic() + 10.0)
    assert bound is not None and bound > PROOF_MARGIN
    assert bound <= _violation_at_one(instance, division.allocation) + 1e-6


@pytest.mark.parametrize(("tenants", "gpus", "seed"), [(12, 6, 0), (16, 16, 0), (24, 8, 2),
                                                     (32, 32, 2)])
def test_move_bounds_enclose_the_re_solved_violation(tenants: int, gpus: int, seed: int) -> None:
    # The seat search takes a move without a solve when the kept-shares bound is below the
    # current violation, and skips it when the dual bound is not: the first is exactly the
    # checker's violation of the moved seats with the shares kept, and both must enclose the
    # first stage's optimum after the move — for random moves and for the ones the dual bound
    # ranks first (where it matters).
    instance = canonical(cluster_instance(tenants, gpus, seed))
    data = Data(instance)
    search = Search(data, "utilitarian", time.monotonic() + 60.0, None, None)
    owner = seat_owners(data, picking_allocation(instance))
    point = search.solve(owner, None)
    assert point.violation > 1e-6 and point.dual_valid  # measured: these start violated
    rng = np.random.default_rng(seed)
    goods = rng.integers(0, len(data.goods), size=8)
    to = (owner[goods] + rng.integers(1, len(data.agents), size=8)) % len(data.agents)
    ranked = search._ranked(point)[:8]
    goods = np.concatenate([goods, [g for g, _ in ranked]]).astype(int)
    to = np.concatenate([to, [i for _, i in ranked]]).astype(int)
    bounds = Moves(data, point.seats, point.x, point.dual_ef, point.dual_prop,
                    point.violation)
    upper, lower = bounds.bounds(goods, to)
    for k in range(len(goods)):
        moved = owner.copy()
        moved[goods[k]] = to[k]
        kept = sum(max(0.0, -s) for s in _slacks_at_one(
            instance, allocation_from(data, moved, point.x)))
        assert upper[k] == pytest.approx(kept, abs=1e-6), k
        after = search.solve(moved, None, fresh=True).violation
        assert lower[k] - 1e-6 <= after <= upper[k] + 1e-6, (k, lower[k], after, upper[k])


@pytest.mark.parametrize(("tenants", "gpus", "seed", "most"), [
    (16, 32, 1, 1), (32, 32, 2, 3), pytest.param(64, 64, 1, 2, marks=pytest.mark.slow)])
def test_reweighting_leaves_fewer_agents_failing(
    tenants: int, gpus: int, seed: int, most: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where nothing is fair, the slack is shifted onto as few agents as the reweighting finds;
    # never more fail than under the least total slack, and on these benchmark instances
    # (measured: 2, 5 and 3 fail without it) fewer do.
    instance = cluster_instance(tenants, gpus, seed)

    def failing() -> int:
        division = _searched(instance, SolveOptions(time_limit_s=20.0))
        assert_honest(instance, division)
        return division.certificate.violations

    with_reweighting = failing()
    monkeypatch.setattr(share_lp, "CONCENTRATE_ROUNDS", 0)
    without = failing()
    assert with_reweighting <= min(without, most) < without
