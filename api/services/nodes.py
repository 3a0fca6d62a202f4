"""Nodes, their devices and tokens, heartbeats and throughput profiles.

A node is registered by the admin with its devices (kind, memory, streams, seats) and gets a
token, shown once. Its daemon then reports heartbeats and profiles: for each model and device,
the latency-bounded QPS of one replica with 1, 2, ... streams — q_m(g, s) of docs/architecture.md
§2, which the next solve turns into valuations in place of the estimate — and the memory one
replica measured (its footprint), which the next solve uses in place of the declared memory.
A heartbeat's cumulative SLA counts become per-tenant samples of the attainment history
(:mod:`api.services.sla`); its served windows (rate and p99 per tenant and model over the
daemon's last minute) are kept in the node's report and read from there.

A node's token writes only about what the node serves: a heartbeat's SLA counts and served
windows and a profile upload (curves and footprints) may name only (tenant, model) pairs and
models that one of the node's recent plans seats on it
(:func:`api.services.plans.recent_seats`). Anything else is refused whole with 403 and logged
with the node's name, so one node can neither move another tenant's attainment nor learn which
model ids exist by uploading profiles for them. The plan that seats a pair also says whose
queries they were: SLA samples are stored under the tenant id its allocation seated the pair
for, not under the name, which a tenant re-created under a deleted one's name would share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from api.auth import NODE_TOKEN_PREFIX, new_token, token_hash
from api.errors import Conflict, Forbidden, InvalidInput, NotFound
from api.models import (
    AllocationRow,
    ArtifactRow,
    DeviceRow,
    FootprintRow,
    ModelRow,
    NodePlanRow,
    NodeRow,
    ProfileRow,
    utcnow,
)
from api.schemas import NodeCreate
from api.services import sla
from api.services.plans import Seated, current_plan, current_version, recent_seats
from executor.wire.heartbeat import Heartbeat
from executor.wire.profiles import FootprintEntry, ProfileEntry

log = logging.getLogger(__name__)
T = TypeVar("T")
# How many refused names a 403 and its log line quote (a heartbeat may carry thousands).
QUOTED = 5


def _not_seated(
    *, session: Session, node_id: int, wanted: set[T], key: Callable[[Seated], T]
) -> set[T]:
    """What of ``wanted`` (each seated pair seen through ``key``) no recent plan of the node
    seats; the plans are searched newest first and only as far as needed."""
    outside = set(wanted)
    if outside:
        for seated in recent_seats(session=session, node_id=node_id):
            outside -= {key(pair) for pair in seated}
            if not outside:
                break
    return outside


def _seated_for(
    *, session: Session, node_id: int, wanted: set[Seated], also_version: int | None
) -> dict[Seated, int | None]:
    """Each pair of ``wanted`` that a recent plan of the node seats, with the id of the tenant
    the first such plan seated it for: the plan of ``also_version`` (the one the daemon says
    it serves) first, then the newest; searched only as far as needed."""
    found: dict[Seated, int | None] = {}
    if wanted:
        for seated in recent_seats(session=session, node_id=node_id, also_version=also_version):
            for pair in (wanted & seated.keys()) - found.keys():
                found[pair] = seated[pair]
            if len(found) == len(wanted):
                break
    return found


def _refuse(node: NodeRow, what: str, outside: list[str]) -> Forbidden:
    names = ", ".join(outside[:QUOTED]) + (f" and {len(outside) - QUOTED} more"
                                           if len(outside) > QUOTED else "")
    log.warning("node %r refused: %s not seated on it by its recent plans: %s",
                node.name, what, names)
    return Forbidden(f"this node's recent plans do not seat {what}: {names}")


def create_node(*, session: Session, data: NodeCreate) -> tuple[NodeRow, str]:
    if session.scalar(select(NodeRow.id).where(NodeRow.name == data.name)) is not None:
        raise Conflict(f"node {data.name!r} already exists", field="name")
    token = new_token(NODE_TOKEN_PREFIX)
    node = NodeRow(
        name=data.name,
        token_hash=token_hash(token),
        devices=[DeviceRow(**d.model_dump()) for d in data.devices],
    )
    session.add(node)
    session.flush()
    return node, token


def list_nodes(
    *,
    session: Session,
    limit: int | None = None,
    after: int | None = None,
    behind: bool | None = None,
) -> list[NodeRow]:
    """Nodes by id: ``limit`` of them past id ``after``; with ``behind``, only those whose
    daemon last said it serves an older plan than its newest (or nothing yet), or only the
    others."""
    query = (
        select(NodeRow).options(selectinload(NodeRow.devices)).order_by(NodeRow.id).limit(limit)
    )
    if after is not None:
        query = query.where(NodeRow.id > after)
    if behind is not None:
        newest = (
            select(func.max(NodePlanRow.version))
            .where(NodePlanRow.node_id == NodeRow.id)
            .scalar_subquery()
        )
        current = func.coalesce(newest, 0)
        lagging = or_(NodeRow.running_version.is_(None), NodeRow.running_version < current)
        query = query.where(lagging if behind else ~lagging)
    return list(session.scalars(query))


def get_node_or_raise(*, session: Session, name: str) -> NodeRow:
    node = session.scalar(
        select(NodeRow).options(selectinload(NodeRow.devices)).where(NodeRow.name == name)
    )
    if node is None:
        raise NotFound(f"node {name!r} not found")
    return node


def rotate_token(*, session: Session, name: str) -> tuple[NodeRow, str]:
    """Issue a new token for the node; the old one stops working at once."""
    node = get_node_or_raise(session=session, name=name)
    token = new_token(NODE_TOKEN_PREFIX)
    node.token_hash = token_hash(token)
    session.flush()
    return node, token


def record_heartbeat(
    *,
    session: Session,
    node_id: int,
    data: Heartbeat,
    now: datetime,
    prune_before: datetime | None = None,
) -> tuple[NodeRow, int]:
    """Record the daemon's state and its SLA samples (deltas against the previous heartbeat,
    :mod:`api.services.sla`), prune samples older than ``prune_before`` when given; return the
    node and the version of its newest plan."""
    # Locked, so that two heartbeats of one node cannot both take the same previous counts
    # as their base (PostgreSQL; SQLite's write transactions are serial already). NO KEY
    # UPDATE: a solve storing plans for the node (a foreign key to it) need not wait.
    node = session.get(NodeRow, node_id, with_for_update={"key_share": True})
    if node is None:
        raise NotFound(f"node {node_id} not found")
    wanted = {(row.tenant, row.model) for row in data.sla} | {
        (row.tenant, row.model) for row in data.served
    }
    owners = _seated_for(
        session=session, node_id=node.id, wanted=wanted, also_version=data.plan_version
    )
    outside = wanted - owners.keys()
    if outside:
        raise _refuse(node, "the SLA counts' or served windows' tenant/model",
                      [f"{tenant}/{model}" for tenant, model in sorted(outside)])
    sla.record_samples(
        session=session,
        node_id=node.id,
        previous=sla.previous_counts(node.report),
        current=data.sla,
        owners=owners,
        at=now,
    )
    if prune_before is not None:
        sla.prune_samples(session=session, before=prune_before)
    node.last_heartbeat_at = now
    node.running_version = data.plan_version
    node.report = data.model_dump(mode="json")
    session.flush()
    return node, current_version(session=session, node_id=node.id)


def store_profiles(
    *,
    session: Session,
    node_id: int,
    entries: list[ProfileEntry],
    footprints: list[FootprintEntry] = [],  # noqa: B006 - never mutated
) -> int:
    """Upsert the node's measured curves and footprints; entries for other models and devices
    are kept. Return how many entries were stored.

    Only models seated on this node by one of its recent plans may be profiled: the daemon
    measures what it was given to serve, and uploads after it applied the plan."""
    node = session.get(NodeRow, node_id)
    if node is None:
        raise NotFound(f"node {node_id} not found")
    outside = _not_seated(
        session=session,
        node_id=node.id,
        wanted={str(e.model_id) for e in entries} | {str(f.model_id) for f in footprints},
        key=lambda pair: pair[1],
    )
    if outside:
        raise _refuse(node, "the profiles' models", sorted(outside, key=int))
    devices = {
        d.device: d.id
        for d in session.scalars(select(DeviceRow).where(DeviceRow.node_id == node_id))
    }
    wanted = {e.model_id for e in entries} | {f.model_id for f in footprints}
    known = (
        set(session.scalars(select(ModelRow.id).where(ModelRow.id.in_(wanted))))
        if wanted
        else set()
    )
    listed: list[tuple[str, ProfileEntry | FootprintEntry]] = [
        *(("profiles", e) for e in entries),
        *(("footprints", f) for f in footprints),
    ]
    counts = {"profiles": 0, "footprints": 0}
    for name, entry in listed:
        k = counts[name]
        counts[name] += 1
        if entry.model_id not in known:
            raise InvalidInput(f"model {entry.model_id} not found", field=f"{name}[{k}].model_id")
        if entry.device not in devices:
            raise InvalidInput(
                f"device {entry.device!r} is not on this node", field=f"{name}[{k}].device"
            )
    _store_footprints(session=session, devices=devices, footprints=footprints)
    existing = {
        (p.model_id, p.device_id): p
        for p in session.scalars(
            select(ProfileRow).where(ProfileRow.device_id.in_(list(devices.values())))
        )
    }
    for entry in entries:
        key = (entry.model_id, devices[entry.device])
        row = existing.get(key)
        if row is None:
            row = ProfileRow(
                model_id=key[0], device_id=key[1], qps=list(entry.qps), sla_p99_ms=entry.sla_p99_ms
            )
            session.add(row)
            existing[key] = row
        else:
            row.qps = list(entry.qps)
            row.sla_p99_ms = entry.sla_p99_ms
            row.measured_at = utcnow()
    session.flush()
    return len(entries) + len(footprints)


def _store_footprints(
    *, session: Session, devices: dict[str, int], footprints: list[FootprintEntry]
) -> None:
    if not footprints:
        return
    existing = {
        (f.model_id, f.device_id): f
        for f in session.scalars(
            select(FootprintRow).where(FootprintRow.device_id.in_(list(devices.values())))
        )
    }
    for entry in footprints:
        key = (entry.model_id, devices[entry.device])
        row = existing.get(key)
        if row is None:
            row = FootprintRow(model_id=key[0], device_id=key[1], memory_mb=entry.memory_mb)
            session.add(row)
            existing[key] = row
        else:
            row.memory_mb = entry.memory_mb
            row.measured_at = utcnow()


def measured_memory(*, session: Session) -> dict[int, int]:
    """Each model's largest measured footprint (MiB) over every device that reported one."""
    rows = session.execute(
        select(FootprintRow.model_id, func.max(FootprintRow.memory_mb)).group_by(
            FootprintRow.model_id
        )
    )
    return {model_id: memory for model_id, memory in rows}


def artifact_for_node(
    *, session: Session, node_id: int, node_name: str, model_id: int
) -> ArtifactRow:
    """The uploaded artifact of a model seated in the node's current plan, and still owned by
    the tenant the plan seats it for; else not found."""
    _, plan = current_plan(session=session, node_id=node_id, node_name=node_name)
    owners = {
        seat.replica.model_id: seat.replica.tenant
        for _, seat in plan.replicas()
        if seat.replica is not None
    }
    missing = NotFound(f"no artifact of model {model_id} for this node")
    if str(model_id) not in owners:
        raise missing
    # The plan names the seat's tenant; the allocation it was cut from, that tenant's id then.
    tenant_ids = session.scalar(
        select(AllocationRow.tenant_ids).where(AllocationRow.id == plan.allocation_id)
    )
    owner = (tenant_ids or {}).get(owners[str(model_id)])
    model_owner = session.scalar(select(ModelRow.tenant_id).where(ModelRow.id == model_id))
    row = session.get(ArtifactRow, model_id) if owner is not None and owner == model_owner else None
    if row is None:
        raise missing
    return row
