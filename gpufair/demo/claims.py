"""The demo's claims, each computed from what the demo measured (docs/architecture.md §5).

The summary states every claim with its figure and the demo exits non-zero when one fails, so a
run on a machine too busy to keep the promise says so instead of printing a success:

1. **The allocation is fair**: the API's certificate says every tenant's own criterion holds
   exactly as stated (λ = 0; one that holds only relaxed does not count).
2. **The others kept their SLA**: each tenant but the flooder answered at least
   ``required_attainment`` of the queries it received during the flood within its SLA
   (attainment = within SLA / received, executor/wire/attainment.py: a 429 or an error is a miss).
3. **The flood went beyond the flooder's share**: it offered more than its allocated streams
   and the pool time it may borrow can serve, so claim 4 is a test, not a formality.
4. **The flooder was throttled to its share**: the candidate rows it had answered per second
   during the flood are at most ``1 + throttle_tolerance`` times what the streams it was
   allocated (the seats, dedicated streams and pool weight of its plan, at each device's
   per-stream capacity) and the shared pools of its devices can score. Fair queueing is work
   conserving: a pool's time that its weighted holders leave idle goes to whoever has work, the
   flooder included, so that time is the most it may borrow; it never gets a stream dedicated to
   another tenant. The rest of its flood is refused with 429. Rows, not queries, because
   admission control refuses large queries more often than small ones, so the queries it answers
   are smaller than the ones it is sent; per second of the time those answers took (to the last
   one, past the phase's end by the queries then in flight), so the backlog answered after the
   end does not count as served faster.
"""

from __future__ import annotations

from dataclasses import dataclass

from executor.wire.attainment import attainment
from gpufair.loadgen import PhaseCounts


@dataclass(frozen=True)
class Claim:
    statement: str  # what is claimed, in words
    figure: str  # the measured figure it rests on
    holds: bool


@dataclass(frozen=True)
class TenantVerdict:
    """What the certificate says of one tenant (read in gpufair.commands.demo, in one place)."""

    holds: bool
    slack: float | None


def fairness_claim(verdicts: dict[str, TenantVerdict]) -> Claim:
    failing = sorted(t for t, v in verdicts.items() if not v.holds)
    slacks = {t: v.slack for t, v in verdicts.items() if v.slack is not None}
    tightest = min(slacks, key=lambda t: slacks[t]) if slacks else None
    figure = (f"{len(verdicts) - len(failing)} of {len(verdicts)} criteria hold"
              + (f"; failing: {', '.join(failing)}" if failing else "")
              + (f"; tightest slack {slacks[tightest]:+.3f} ({tightest})" if tightest else ""))
    return Claim("the allocation is fair: every tenant's own criterion holds exactly", figure,
                 not failing)


def sla_claim(tenant: str, flood: PhaseCounts, sla_ms: float, required: float,
              during: str = "during the flood") -> Claim:
    attained = attainment(within_sla=flood.within_sla, received=flood.received)
    figure = ("no query received" if attained is None else
              f"{attained:.2%} ({flood.within_sla} of {flood.received} within {sla_ms:.0f} ms)")
    return Claim(f"{tenant} kept its SLA {during} (attainment ≥ {required:.0%})",
                 figure, attained is not None and attained >= required)


def flood_claims(tenant: str, flood: PhaseCounts, flood_s: float, share_rows_s: float,
                 tolerance: float, borrowable_rows_s: float = 0.0) -> list[Claim]:
    """Claims 3 and 4 for the flooder: ``share_rows_s`` is the candidate rows per second its
    allocated streams can score, ``borrowable_rows_s`` what the rest of its devices' shared
    pools can (the most idle pool time it may borrow)."""
    bound = share_rows_s + borrowable_rows_s
    if flood_s <= 0 or share_rows_s <= 0:
        return [Claim(f"{tenant} flooded beyond its share",
                      "no flood phase" if flood_s <= 0 else "it was allocated no stream", False)]
    offered = flood.received_rows / flood_s
    served_s = max(flood_s, flood.span_s())
    served = flood.answered_rows / served_s
    refused = flood.refused / flood.received if flood.received else 0.0
    borrow = f" + {borrowable_rows_s:,.0f} of pool time" if borrowable_rows_s > 0 else ""
    beyond = Claim(
        f"{tenant} flooded beyond its share",
        f"offered {offered:,.0f} rows/s ({flood.received / flood_s:.1f} qps) = "
        f"{offered / bound:.1f}× the {share_rows_s:,.0f} rows/s its streams score{borrow}",
        offered > bound)
    throttled = Claim(
        f"{tenant} was throttled to its share (served ≤ {1 + tolerance:.2f}× that)",
        f"served {served:,.0f} rows/s ({flood.answered / served_s:.1f} qps) = "
        f"{served / bound:.2f}× its share{' and pool time' if borrow else ''}; "
        f"{refused:.0%} of its queries refused with 429",
        served <= (1 + tolerance) * bound)
    return [beyond, throttled]


def failover_claims(model: str, whole: PhaseCounts, after_seen: PhaseCounts,
                    seen_after_kill_s: float | None, required: float) -> list[Claim]:
    """``gpufair demo --nodes``: one daemon of ``model``'s two was killed (SIGKILL). ``whole``
    counts every query of the model, ``after_seen`` those scheduled once the gateway held the
    daemon dead; ``seen_after_kill_s`` is when it did (None: never, within the demo's wait).

    A query the gateway could not place is refused with an HTTP error that says why (503, 502);
    a lost one got no HTTP answer at all, which a client cannot tell from a slow one."""
    seen = Claim("the gateway saw the daemon's death",
                 "never, within the wait" if seen_after_kill_s is None
                 else f"{seen_after_kill_s * 1000:.0f} ms after the SIGKILL",
                 seen_after_kill_s is not None)
    errors = whole.received - whole.answered - whole.lost
    lost = Claim(f"no query of {model} was lost",
                 f"{whole.received} sent: {whole.answered} answered, {errors} refused with an "
                 f"HTTP error, {whole.lost} lost", whole.received > 0 and whole.lost == 0)
    share = after_seen.answered / after_seen.received if after_seen.received else None
    answered = Claim(f"{model} was answered once the death was seen (≥ {required:.0%})",
                     "no query sent after it" if share is None else
                     f"{share:.2%} ({after_seen.answered} of {after_seen.received})",
                     share is not None and share >= required)
    return [seen, lost, answered]
