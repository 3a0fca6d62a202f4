"""What the data plane reads from the control plane: each node's credential document, and the
routing table of every model's replicas.

Both are long-polled with an ETag like plans (``api.routes.nodes``), and both are computed on
each read from the rows they summarise, so their ETag is a hash of their content: a key issued
or revoked, a plan stored or a daemon's advertised URL changed shows as a new ETag at the next
read, at the latest at the long-poll's recheck (``RECHECK_S``).

Credentials (:mod:`executor.wire.credentials`): for each tenant seated by the node's newest
plan, or by the plan the node last said it serves (whose queries may still be running), the
salted hashes of the tenant's usable keys (tenant API keys and inference-only keys alike). The
salt is derived from the node's token hash, so it differs between nodes and changes when the
node's token is rotated.

Routes (:class:`executor.wire.routes.RoutingTable`): for every model the newest allocation
seats, its tenant and its replicas: node, the URL the node's daemon advertised in its last
heartbeat, device, seat, dedicated streams and pool weight. Replicas of a node that never sent
a URL are left out (a router could not reach them).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, func, or_, select
from sqlalchemy.orm import Session

from allocator.cluster.plan import NodePlan
from api.auth import key_usable
from api.models import AllocationRow, ApiKeyRow, NodePlanRow, NodeRow
from executor.wire.credentials import CredentialDocument, salted
from executor.wire.routes import ModelRoutes, RouteReplica, RoutingTable


def content_etag(kind: str, document: BaseModel) -> str:
    """An ETag that changes exactly when the document's content does."""
    text = json.dumps(document.model_dump(mode="json"), sort_keys=True)
    return f'"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"'


def node_salt(token_hash: str) -> str:
    return hashlib.sha256(f"gpufair-credentials:{token_hash}".encode()).hexdigest()


def credential_document(
    *, session: Session | Connection, node_id: int, now: datetime
) -> CredentialDocument:
    """The node's credential document at ``now`` (see the module docstring)."""
    node = session.execute(
        select(NodeRow.name, NodeRow.token_hash, NodeRow.running_version).where(
            NodeRow.id == node_id
        )
    ).one()
    newest = (
        select(func.max(NodePlanRow.version))
        .where(NodePlanRow.node_id == node_id)
        .scalar_subquery()
    )
    plans = session.execute(
        select(NodePlanRow.plan, AllocationRow.tenant_ids)
        .join(AllocationRow, AllocationRow.id == NodePlanRow.allocation_id)
        .where(
            NodePlanRow.node_id == node_id,
            or_(NodePlanRow.version == newest, NodePlanRow.version == node.running_version),
        )
    ).all()
    tenant_ids: dict[int, str] = {}
    for plan, ids in plans:
        for _, seat in NodePlan.from_dict(plan).replicas():
            if seat.replica is not None and seat.replica.tenant in ids:
                tenant_ids[int(ids[seat.replica.tenant])] = seat.replica.tenant
    salt = node_salt(node.token_hash)
    tenants: dict[str, list[str]] = {name: [] for name in sorted(tenant_ids.values())}
    if tenant_ids:
        keys = session.execute(
            select(ApiKeyRow.tenant_id, ApiKeyRow.token_hash)
            .where(ApiKeyRow.tenant_id.in_(list(tenant_ids)), key_usable(now))
            .order_by(ApiKeyRow.id)
        ).all()
        for tenant_id, digest in keys:
            tenants[tenant_ids[tenant_id]].append(salted(salt, digest))
    return CredentialDocument(node=node.name, salt=salt, tenants=tenants)


def routing_table(
    *, session: Session | Connection, tenant_id: int | None = None
) -> RoutingTable:
    """The routing table of the newest allocation (see the module docstring); with
    ``tenant_id``, of that tenant's models only.

    Plans name tenants, and a name may have been a deleted tenant's: the tenant is found by
    its id in the allocation's ``tenant_ids`` (ids are never reused), as the tenant's
    allocation view finds it, so a tenant re-created under an old name gets an empty table
    until an allocation seats it."""
    newest = session.execute(
        select(AllocationRow.version, AllocationRow.tenant_ids)
        .order_by(AllocationRow.version.desc())
        .limit(1)
    ).first()
    if newest is None:
        return RoutingTable(version=0, models={})
    version = newest.version
    tenant: str | None = None
    if tenant_id is not None:
        names = [name for name, tid in newest.tenant_ids.items() if tid == tenant_id]
        if not names:
            return RoutingTable(version=version, models={})
        tenant = names[0]
    rows = session.execute(
        select(NodePlanRow.plan, NodeRow.name, NodeRow.report)
        .join(NodeRow, NodeRow.id == NodePlanRow.node_id)
        .where(NodePlanRow.version == version)
        .order_by(NodeRow.name)
    ).all()
    models: dict[str, ModelRoutes] = {}
    for plan, node, report in rows:
        url = _advertised_url(report)
        if url is None:
            continue
        for device, seat in NodePlan.from_dict(plan).replicas():
            replica = seat.replica
            if replica is None or (tenant is not None and replica.tenant != tenant):
                continue
            entry = models.setdefault(
                replica.model_id, ModelRoutes(tenant=replica.tenant, replicas=[])
            )
            entry.replicas.append(
                RouteReplica(
                    node=node,
                    url=url,
                    device=device.device,
                    seat=seat.seat,
                    dedicated_streams=seat.dedicated_streams,
                    pool_weight=seat.pool_weight,
                )
            )
    return RoutingTable(version=version, models=dict(sorted(models.items())))


def _advertised_url(report: dict[str, Any] | None) -> str | None:
    url = (report or {}).get("url")
    return url if isinstance(url, str) and url else None
