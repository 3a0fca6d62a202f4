"""What the dashboard shows, read from the database in one transaction.

The dashboard (``api/routes/dashboard.py``) is a view over what the API already stores: the
tenants, the current allocation's plans and certificate (docs/architecture.md §2), the nodes' latest
heartbeats, the SLA samples that heartbeats leave (:mod:`api.services.sla`) and the allocation
history with the existing diff service's seat moves. This module turns those rows into plain
frozen dataclasses, so the HTML renderer does no database work and can be tested on hand-made
data.

Two SLA views: attainment over the last :data:`SLA_WINDOW_S` seconds per tenant, from the
samples; and the counters of each node's newest heartbeat (``NodeRow.report``), which are
cumulative since each daemon started: its replicas' completed, rejected and expired queries,
and the SLA counts (received, within SLA) the samples are made from. Both views' attainment is
:func:`executor.wire.attainment.attainment` of those SLA counts, as ``/v1/sla``'s is: a
replica's "completed" includes answers up to two SLAs late, so it cannot be the numerator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from allocator import NodePlan
from api.models import AllocationRow, ModelRow, NodeRow, TenantRow
from api.schemas import AllocationDiff, SlaHistory
from api.services.allocations import (
    current_allocation,
    diff_allocations,
    list_allocations,
    plans_of_allocation,
)
from api.services.sla import sla_history
from executor.wire.attainment import attainment
from executor.wire.heartbeat import Heartbeat, parse_heartbeat

HISTORY_LENGTH = 10
# The attainment chart: the last 15 minutes in 30-second buckets (six 5 s heartbeats each).
SLA_WINDOW_S = 900
SLA_BUCKETS = 30


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
    """A tenant's counters summed over the nodes' last heartbeats: its replicas' outcomes, and
    the daemons' SLA counts (per tenant and model) that attainment is computed from."""

    completed: int = 0  # answered, within the SLA or late
    rejected: int = 0
    expired: int = 0
    received: int = 0
    within_sla: int = 0

    @property
    def attainment(self) -> float | None:
        return attainment(within_sla=self.within_sla, received=self.received)


@dataclass(frozen=True)
class NodeStatus:
    name: str
    last_heartbeat_at: datetime | None
    running_version: int | None
    broken: dict[str, str]  # model id -> why the daemon does not serve it


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
            total = sums.setdefault(replica.tenant, [0] * 5)
            total[0] += replica.completed
            total[1] += replica.rejected
            total[2] += replica.expired
        for count in report.sla:
            total = sums.setdefault(count.tenant, [0] * 5)
            total[3] += count.received
            total[4] += count.within_sla
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
                holds=bool(row.certificate.get("fair", False)),
                diff=(
                    None
                    if previous is None
                    else diff_allocations(session=session, from_id=previous.id, to_id=row.id)
                ),
            )
        )
    return entries


def read_dashboard(*, session: Session, now: datetime) -> DashboardData:
    """Everything the dashboard shows, read in the caller's (read-only) transaction; the SLA
    history's window ends at ``now``."""
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
            )
            for n in nodes
        ),
        history=tuple(_history(session)),
        sla_history=sla_history(
            session=session, now=now, window_s=SLA_WINDOW_S, buckets=SLA_BUCKETS
        ),
        model_names=model_names,
    )
