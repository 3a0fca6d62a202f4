"""SLA attainment, defined once: queries answered within their SLA / queries received.

received = within SLA + late + refused (429) + dropped (504) + failed (500).

Every figure called attainment — the executor's Prometheus gauge, the API's ``/v1/sla`` series,
both SLA panels of the dashboard and the demo's tables — comes from :func:`attainment` over
counts classified by :func:`is_within_sla` and :data:`RECEIVED_OUTCOMES`, so that the same queries
give the same figure everywhere. *Completed* is not *within SLA*: a query is dropped only after
``expire_after_sla`` (2) SLAs, so an answer can arrive up to twice the SLA late; it counts as
received and as missed. A refused, dropped or failed query is a miss too: its client did not get
an answer in time either. A malformed query (400) is the client's mistake and is not received.

It lives in ``executor/wire/`` (the heartbeat's wire contract between the daemon and the control
plane) because both sides import it: the daemon counts, the API divides what heartbeats carry.
Standard library only, so the API importing it pulls in neither torch nor the scheduler.
"""

from __future__ import annotations

# The daemon's outcomes of a query it received; "invalid" (a 400) is the only one left out.
RECEIVED_OUTCOMES = frozenset({"ok", "rejected", "expired", "failed"})


def is_within_sla(*, answered: bool, latency_s: float | None, sla_s: float) -> bool:
    """Whether a query counts as attained: answered, and no later than its SLA (inclusive)."""
    return answered and latency_s is not None and latency_s <= sla_s


def attainment(*, within_sla: int, received: int) -> float | None:
    """Queries answered within their SLA / queries received; None without queries, so that no
    traffic reads as a gap rather than as 100 %.

    At most 1: counts summed from heartbeat deltas can place a query's answer in a later
    interval than its arrival, and a share above 1 means nothing.
    """
    if received <= 0:
        return None
    return min(1.0, within_sla / received)
