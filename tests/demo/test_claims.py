"""The demo's claims are computed from the counts they are given, and fail when they should."""

from __future__ import annotations

from gpufair.demo.claims import (
    TenantVerdict,
    failover_claims,
    fairness_claim,
    flood_claims,
    sla_claim,
)
from gpufair.loadgen import PhaseCounts


def test_fairness_holds_only_when_every_tenant_holds() -> None:
    ok = {"ads": TenantVerdict(holds=True, slack=0.2), "feed": TenantVerdict(True, 0.05)}
    claim = fairness_claim(ok)
    assert claim.holds
    assert "2 of 2" in claim.figure and "+0.050 (feed)" in claim.figure
    failing = fairness_claim({**ok, "search": TenantVerdict(holds=False, slack=-0.1)})
    assert not failing.holds
    assert "2 of 3" in failing.figure and "failing: search" in failing.figure


def test_sla_claim_is_within_sla_over_received_against_the_threshold() -> None:
    # 99 of 100 within: 99 % holds at 0.99 and fails at 0.995; nothing received fails.
    flood = PhaseCounts(received=100, within_sla=99, answered=100)
    assert sla_claim("ads", flood, 150, 0.99).holds
    missed = sla_claim("ads", flood, 150, 0.995)
    assert not missed.holds
    assert "99.00% (99 of 100 within 150 ms)" == missed.figure
    assert not sla_claim("ads", PhaseCounts(), 150, 0.5).holds


def test_the_flooder_is_judged_by_rows_served_against_its_share() -> None:
    share = 6000.0  # rows/s its streams score
    # Offered 3× its share over 10 s, answered 1.05× of it: beyond its share and throttled.
    held = PhaseCounts(received=1000, answered=200, refused=800, received_rows=180_000,
                       answered_rows=63_000)
    beyond, throttled = flood_claims("search", held, 10.0, share, tolerance=0.10)
    assert beyond.holds and throttled.holds
    assert "1.05× its share" in throttled.figure
    assert "80% of its queries refused" in throttled.figure
    # Served 1.2× its share: it took streams that were not its own.
    took = PhaseCounts(received=1000, answered=300, received_rows=180_000, answered_rows=72_000)
    assert not flood_claims("search", took, 10.0, share, tolerance=0.10)[1].holds
    # Offered less than its share: no flood to throttle, and the claim says so.
    calm = PhaseCounts(received=100, answered=100, received_rows=27_000, answered_rows=27_000)
    assert not flood_claims("search", calm, 10.0, share, tolerance=0.10)[0].holds
    # No flood phase at all is a failed claim, not a division by zero.
    (none,) = flood_claims("search", calm, 0.0, share, tolerance=0.10)
    assert not none.holds


def test_answers_after_the_flood_ends_are_spread_over_the_time_they_took() -> None:
    # 10 s of flood, but its backlog was answered until 12 s after its first arrival: the
    # served rate is over 12 s, not 10 (which would make a throttled flooder look greedy).
    flood = PhaseCounts(received=1000, answered=240, received_rows=180_000,
                        answered_rows=72_000, first_scheduled=100.0, last_answered=112.0)
    _, throttled = flood_claims("search", flood, 10.0, 6000.0, tolerance=0.10)
    assert throttled.holds
    assert "served 6,000 rows/s (20.0 qps) = 1.00× its share" in throttled.figure


def test_idle_pool_time_the_flooder_may_borrow_raises_its_bound_and_no_more() -> None:
    # Its streams score 3,000 rows/s, the idle part of its devices' pools 3,000 more: serving
    # 6,300 rows/s is within 1.10× of 6,000; 7,000 is not; offering 5,000 is no flood at all.
    flood = PhaseCounts(received=1000, answered=230, received_rows=120_000, answered_rows=63_000)
    beyond, throttled = flood_claims("search", flood, 10.0, 3000.0, 0.10, borrowable_rows_s=3000.0)
    assert beyond.holds and throttled.holds
    assert "+ 3,000 of pool time" in beyond.figure and "and pool time" in throttled.figure
    greedy = PhaseCounts(received=1000, answered=260, received_rows=120_000, answered_rows=70_000)
    assert not flood_claims("search", greedy, 10.0, 3000.0, 0.10, 3000.0)[1].holds
    calm = PhaseCounts(received=200, answered=200, received_rows=50_000, answered_rows=50_000)
    assert not flood_claims("search", calm, 10.0, 3000.0, 0.10, 3000.0)[0].holds


def test_failover_holds_only_when_nothing_is_lost_and_answers_resume() -> None:
    # 200 queries: 196 answered, 4 refused with a 502/503 (an error a client can act on), none
    # lost; after the death was seen 100 of 100 answered: every claim holds.
    whole = PhaseCounts(received=200, answered=196, refused=0, lost=0)
    after = PhaseCounts(received=100, answered=100)
    seen, lost, answered = failover_claims("ha-m", whole, after, 0.154, 0.99)
    assert seen.holds and lost.holds and answered.holds
    assert seen.figure == "154 ms after the SIGKILL"
    assert lost.figure == "200 sent: 196 answered, 4 refused with an HTTP error, 0 lost"
    assert answered.figure == "100.00% (100 of 100)"
    # One query with no HTTP answer at all fails the no-loss claim.
    one_lost = PhaseCounts(received=200, answered=196, lost=1)
    assert not failover_claims("ha-m", one_lost, after, 0.154, 0.99)[1].holds
    # 98 of 100 answered after the death was seen is below 99 %.
    short = PhaseCounts(received=100, answered=98)
    assert not failover_claims("ha-m", whole, short, 0.154, 0.99)[2].holds
    # A death never seen fails, and so does the answered share with nothing sent after it.
    never = failover_claims("ha-m", whole, PhaseCounts(), None, 0.99)
    assert not never[0].holds and not never[2].holds
    # Nothing sent at all is no evidence of no loss.
    assert not failover_claims("ha-m", PhaseCounts(), after, 0.1, 0.99)[1].holds
