"""What the dashboard shows, read from the database in one transaction.

The dashboard (``api/routes/dashboard.py``) is a view over what the API already stores: the
tenants, the current allocation's plans and certificate (docs/architecture.md §2), the nodes' latest
heartbeats, the SLA samples that heartbeats leave (:mod:`api.services.sla`) and the allocation
history with the existing diff service's seat moves. This module turns those rows into plain
frozen dataclasses, so the HTML renderer does no database work and can be tested on hand-made
data.

One SLA attainment, one window: the samples of the last :data:`SLA_WINDOW_S` seconds at most,
cut to where the data starts (:func:`sla_window`), per tenant and per bucket; the figure is
:func:`executor.wire.attainment.attainment` of the samples' counts (answered within the SLA /
received, the executor's definition), as ``/v1/sla``'s is. The tenants panel shows it beside
each tenant's share of the cluster against its entitlement and its rates over the same window.
The counters of each node's newest heartbeat (``NodeRow.report``), cumulative since each
daemon started, are shown as outcome counts only: a replica's "completed" includes answers up
to two SLAs late, and a figure since the daemon started would be a second attainment over
another window.

Served rate and p99 latency against the SLA, per tenant and model, come from the live nodes'
newest heartbeats (their ``served`` rows, the daemons' last minute): :func:`api.services.sla.
served_models`, the rows ``/v1/sla`` gives too; the window is each daemon's, stated on the page.

A node is *stale* once its last heartbeat is older than :data:`STALE_AFTER_S` (three missed
heartbeats at the daemon's default 5 s): the page greys its seats, since nothing says they
still serve, and its served rows are left out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from allocator import NodePlan, parse_certificate
from api.models import AllocationRow, ModelRow, NodeRow, SlaSampleRow, TenantRow
from api.schemas import AllocationDiff, ModelSla, SlaHistory
from api.services.allocations import (
    current_allocation,
    diff_allocations,
    list_allocations,
    plans_of_allocation,
)
from api.services.sla import STALE_AFTER_S, served_models, sla_history
from executor.wire.attainment import attainment
from executor.wire.heartbeat import Heartbeat, parse_heartbeat

HISTORY_LENGTH = 10
# The attainment window: at most the last 15 minutes, at most 30 buckets, none shorter than a
# heartbeat (5 s by default), so a bucket is never empty merely for falling between two.
SLA_WINDOW_S = 900
SLA_BUCKETS = 30
MIN_BUCKET_S = 5.0
MIN_WINDOW_S = 60.0


@dataclass(frozen=True)
class SeatView:
    seat: int
    tenant: str | None  # None: an empty seat
    model: str  # the model's name, or its id if it has been deleted since
    dedicated_streams: int
    pool_streams: float  # its part of the device's shared pool, in streams


@dataclass(frozen=True)
class DeviceView:
    node: str
    device: str
    kind: str
    streams: int
    pool_streams: int  # the shared pool: streams left over after one base stream per seat
    seats: tuple[SeatView, ...]


@dataclass(frozen=True)
class TenantCounters:
    """A tenant's counters summed over the nodes' last heartbeats, since each daemon started:
    its replicas' outcomes and the queries the daemons received for it."""

    completed: int = 0  # answered, within the SLA or late
    rejected: int = 0
    expired: int = 0
    received: int = 0


@dataclass(frozen=True)
class NodeStatus:
    name: str
    last_heartbeat_at: datetime | None
    running_version: int | None
    broken: dict[str, str]  # model id -> why the daemon does not serve it
    silent_s: float | None = None  # seconds since its last heartbeat; None: never reported

    @property
    def stale(self) -> bool:
        """No heartbeat for STALE_AFTER_S: nothing says its seats still serve."""
        return self.silent_s is None or self.silent_s > STALE_AFTER_S


@dataclass(frozen=True)
class TenantView:
    """One tenant: what it is entitled to, what it holds, and how it was served in the window."""

    name: str
    weight: float
    entitled: float  # weight / all tenants' weights
    share: float  # streams serving it / all streams of the current plans
    criterion: str | None  # None: not in the current certificate
    holds: bool | None  # its criterion holds exactly (λ = 0); None: not in the certificate
    relaxed_by: float | None  # the λ under which it holds when not exactly; None: fails
    sla_ms: tuple[float, ...]  # its models' SLAs, distinct, ascending
    received: int  # queries in the window
    within_sla: int
    window_s: float

    @property
    def attainment(self) -> float | None:
        return attainment(within_sla=self.within_sla, received=self.received)

    @property
    def received_qps(self) -> float:
        return self.received / self.window_s

    @property
    def served_qps(self) -> float:
        """Queries answered within the SLA, per second."""
        return self.within_sla / self.window_s


@dataclass(frozen=True)
class HistoryEntry:
    version: int
    objective: str
    created_at: datetime
    solve_seconds: float
    status: str
    holds: bool
    diff: AllocationDiff | None  # against the previous version; None for the first


@dataclass(frozen=True)
class DashboardData:
    tenants: tuple[str, ...]  # every tenant known now or in the current allocation, sorted
    version: int | None  # the current allocation's version, None before the first solve
    certificate: dict[str, Any]
    devices: tuple[DeviceView, ...]
    counters: dict[str, TenantCounters]
    nodes: tuple[NodeStatus, ...]
    history: tuple[HistoryEntry, ...]
    sla_history: SlaHistory  # attainment per tenant and time bucket, gaps where no traffic
    model_names: dict[str, str] = field(default_factory=dict)  # model id -> name
    tenant_views: tuple[TenantView, ...] = ()
    # The current certificate's verdict (see certificate_verdict); None: no certificate.
    verdict: Verdict | None = None
    # Tenant -> a row per model over the live daemons' last minute (served rate, p99, SLA).
    served: dict[str, list[ModelSla]] = field(default_factory=dict)

    @property
    def stale_nodes(self) -> frozenset[str]:
        return frozenset(n.name for n in self.nodes if n.stale)


@dataclass(frozen=True)
class Verdict:
    """What a certificate says of the allocation as a whole."""

    fair: bool  # every criterion holds exactly as stated (λ = 0)
    relaxed: int  # tenants whose criterion holds only relaxed (λ > 0)
    failing: int  # tenants whose criterion fails even at λ = 1


def certificate_verdict(certificate: dict[str, Any]) -> Verdict | None:
    """The verdict of a stored certificate, read through its typed model: the one place the
    page reads verdicts; None when there is none or it is unreadable."""
    if not certificate:
        return None
    try:
        rows = parse_certificate(certificate).agents.values()
    except ValidationError:
        return None
    relaxed = sum(1 for r in rows if not r.holds and r.lam is not None)
    failing = sum(1 for r in rows if not r.holds and r.lam is None)
    return Verdict(fair=relaxed == failing == 0, relaxed=relaxed, failing=failing)


def _devices(plans: dict[str, NodePlan], model_names: dict[str, str]) -> list[DeviceView]:
    views = []
    for node, plan in sorted(plans.items()):
        for device in plan.devices:
            seats = tuple(
                SeatView(
                    seat=seat.seat,
                    tenant=seat.replica.tenant if seat.replica is not None else None,
                    model=(
                        model_names.get(seat.replica.model_id, seat.replica.model_id)
                        if seat.replica is not None
                        else ""
                    ),
                    dedicated_streams=seat.dedicated_streams,
                    pool_streams=device.pool_streams(seat),
                )
                for seat in device.seats
            )
            views.append(
                DeviceView(
                    node=node,
                    device=device.device,
                    kind=device.kind,
                    streams=device.streams,
                    pool_streams=device.shared_pool_streams,
                    seats=seats,
                )
            )
    return views


def _reports(nodes: list[NodeRow]) -> dict[str, Heartbeat]:
    """Each node's last heartbeat, read back through the heartbeat's contract; nodes that have
    not reported yet are left out."""
    return {n.name: parse_heartbeat(n.report) for n in nodes if n.report is not None}


def _counters(reports: dict[str, Heartbeat]) -> dict[str, TenantCounters]:
    sums: dict[str, list[int]] = {}
    for report in reports.values():
        # A tenant is listed when either part names it: a daemon lists SLA counts from a
        # tenant's first query on, and replicas only while the plan seats them.
        for replica in report.replicas:
            total = sums.setdefault(replica.tenant, [0] * 4)
            total[0] += replica.completed
            total[1] += replica.rejected
            total[2] += replica.expired
        for count in report.sla:
            sums.setdefault(count.tenant, [0] * 4)[3] += count.received
    return {name: TenantCounters(*values) for name, values in sorted(sums.items())}


def _history(session: Session) -> list[HistoryEntry]:
    # One more than shown, so the oldest shown entry still gets its diff.
    rows: list[AllocationRow] = list_allocations(
        session=session, limit=HISTORY_LENGTH + 1, before=None
    )
    entries = []
    for k, row in enumerate(rows[:HISTORY_LENGTH]):
        previous = rows[k + 1] if k + 1 < len(rows) else None
        entries.append(
            HistoryEntry(
                version=row.version,
                objective=row.objective,
                created_at=row.created_at,
                solve_seconds=row.solve_seconds,
                status=str(row.certificate.get("status", "")),
                holds=bool((verdict := certificate_verdict(row.certificate)) and verdict.fair),
                diff=(
                    None
                    if previous is None
                    else diff_allocations(session=session, from_id=previous.id, to_id=row.id)
                ),
            )
        )
    return entries


def sla_window(session: Session, now: datetime) -> tuple[float, int]:
    """(window seconds, buckets) that fit the data: from the oldest sample of the last
    SLA_WINDOW_S seconds (at least MIN_WINDOW_S) to ``now``, in buckets of at least one
    heartbeat."""
    # Compared as sla_history compares (aware UTC); subtracted naive, as SQLite returns them.
    earliest = _naive_utc(now).replace(tzinfo=UTC) - timedelta(seconds=SLA_WINDOW_S)
    oldest = session.scalar(select(func.min(SlaSampleRow.at)).where(SlaSampleRow.at >= earliest))
    span = float(SLA_WINDOW_S)
    if oldest is not None:
        span = (_naive_utc(now) - _naive_utc(oldest)).total_seconds() + MIN_BUCKET_S
    # Whole buckets of whole seconds, so that the chart's times read as round numbers.
    buckets = max(1, min(SLA_BUCKETS, math.ceil(min(SLA_WINDOW_S, max(MIN_WINDOW_S, span))
                                               / MIN_BUCKET_S)))
    bucket_s = math.ceil(min(SLA_WINDOW_S, max(MIN_WINDOW_S, span)) / buckets)
    return float(min(SLA_WINDOW_S, bucket_s * buckets)), buckets


def _naive_utc(moment: datetime) -> datetime:
    """UTC without tzinfo, as SQLite gives timestamps back, so that any two compare."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _streams(plans: dict[str, NodePlan]) -> tuple[dict[str, float], int]:
    """Streams serving each tenant in the plans, and all streams of their devices."""
    held: dict[str, float] = defaultdict(float)
    total = 0
    for plan in plans.values():
        for device in plan.devices:
            total += device.streams
            for seat in device.seats:
                if seat.replica is not None:
                    held[seat.replica.tenant] += (
                        1 + seat.dedicated_streams + device.pool_streams(seat)
                    )
    return held, total


def _tenant_views(
    session: Session,
    certificate: dict[str, Any],
    plans: dict[str, NodePlan],
    history: SlaHistory,
) -> tuple[TenantView, ...]:
    tenants = list(session.scalars(select(TenantRow).order_by(TenantRow.name)))
    all_weight = sum(t.weight for t in tenants) or 1.0
    slas: dict[int, set[float]] = defaultdict(set)
    for tenant_id, sla in session.execute(select(ModelRow.tenant_id, ModelRow.sla_p99_ms)):
        slas[tenant_id].add(float(sla))
    held, total = _streams(plans)
    try:
        rows = parse_certificate(certificate).agents if certificate else {}
    except ValidationError:
        rows = {}
    series = {s.tenant: s for s in history.tenants}
    window_s = (history.end - history.start).total_seconds()
    views = []
    for tenant in tenants:
        row = rows.get(tenant.name)
        counts = series.get(tenant.name)
        views.append(
            TenantView(
                name=tenant.name,
                weight=tenant.weight,
                entitled=tenant.weight / all_weight,
                share=held.get(tenant.name, 0.0) / total if total else 0.0,
                criterion=row.criterion if row is not None else None,
                holds=row.holds if row is not None else None,
                relaxed_by=row.lam if row is not None else None,
                sla_ms=tuple(sorted(slas[tenant.id])),
                received=counts.received if counts is not None else 0,
                within_sla=counts.within_sla if counts is not None else 0,
                window_s=window_s,
            )
        )
    return tuple(views)


def read_dashboard(*, session: Session, now: datetime) -> DashboardData:
    """Everything the dashboard shows, read in the caller's (read-only) transaction; the SLA
    window ends at ``now``."""
    model_names = {
        str(model_id): name
        for model_id, name in session.execute(select(ModelRow.id, ModelRow.name))
    }
    nodes = list(session.scalars(select(NodeRow).order_by(NodeRow.name)))
    reports = _reports(nodes)
    current = current_allocation(session=session)
    certificate: dict[str, Any] = current.certificate if current is not None else {}
    plans = (
        plans_of_allocation(session=session, allocation_id=current.id)
        if current is not None
        else {}
    )
    tenants = set(session.scalars(select(TenantRow.name))) | set(certificate.get("agents", {}))
    window_s, buckets = sla_window(session, now)
    history = sla_history(session=session, now=now, window_s=window_s, buckets=buckets)
    return DashboardData(
        tenants=tuple(sorted(tenants)),
        version=current.version if current is not None else None,
        certificate=certificate,
        devices=tuple(_devices(plans, model_names)),
        counters=_counters(reports),
        nodes=tuple(
            NodeStatus(
                name=n.name,
                last_heartbeat_at=n.last_heartbeat_at,
                running_version=n.running_version,
                broken=dict(reports[n.name].broken) if n.name in reports else {},
                silent_s=(
                    None
                    if n.last_heartbeat_at is None
                    else (_naive_utc(now) - _naive_utc(n.last_heartbeat_at)).total_seconds()
                ),
            )
            for n in nodes
        ),
        history=tuple(_history(session)),
        sla_history=history,
        model_names=model_names,
        tenant_views=_tenant_views(session, certificate, plans, history),
        verdict=certificate_verdict(certificate),
        served=served_models(session=session, now=now),
    )
