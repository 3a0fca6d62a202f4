"""Allocations: snapshot the database, solve, certify, store; and read them back.

A solve (docs/architecture.md §1): under the solve lock, read a :class:`allocator.ClusterSnapshot`
of the tenants, their ready models and every node's devices — with measured profiles where a node
has reported one and an estimate otherwise — and the current plans; run the allocator's cluster
layer outside any transaction; check its certificate with the allocator's own checker, and
only then store the allocation, its certificate and one plan per node in one transaction.
An allocation is immutable once stored; the next solve makes a new version. Since writes
proceed during a solve, that transaction first checks that every tenant and model of the
snapshot is still as it was read (:func:`changed_since`), and solves again if not: an
allocation stored after a model's DELETE returned must not tell nodes to serve it.

What the cluster layer guarantees (docs/fairness.md, "Guaranteed vs best effort") is an honest
certificate, not a fair allocation: some snapshots have none that meets every tenant's
criterion even fully relaxed (a pool only a seated tenant may share, a contended seat, EFM
beside heavier tenants), and on large ones the heuristic path may miss one that exists; then
the allocator returns its best allocation with the failing tenants marked, and its notes say
whether the failure is proven. So a certificate that disagrees with the checker is a defect
and is refused (:class:`AllocationRejected`, nothing stored), while one that the checker
confirms is stored even when it says some tenants' criteria fail — with a warning naming
them — because refusing it would leave every node on an older plan for as long as the
tenants' criteria cannot all be met, and would blame the allocator for an answer that is
correct.

A model's memory is the largest footprint its replicas measured on any node (uploaded with
the profiles, :mod:`executor.wire.profiles`), else the memory its tenant declared: a tenant's
figure is a guess, and a replica larger than it would be refused by the node it was placed on.

The estimate for a model nobody has profiled (marked ``measured=False`` in the snapshot, and so
in the certificate's inputs): one replica with one stream serves ``demand_qps /
replicas_wanted`` (the tenant sized its request), and s streams serve that times ``s**0.8``
(diminishing returns, as measured curves show). The first profile replaces it: the stored
entries of :mod:`executor.wire.profiles` become measured ``ThroughputCurve`` values in one
place, :func:`read_solve_input`.

Stored documents are read back through their one definition: plans with ``NodePlan.from_dict``
(the daemon's parser) and certificates with ``allocator.parse_certificate``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

import allocator
from allocator import (
    AgentCertificateDocument,
    CertificateDocument,
    ClusterAllocation,
    ClusterSnapshot,
    Gpu,
    Model,
    NodePlan,
    Objective,
    SolveOptions,
    Tenant,
    ThroughputCurve,
    parse_certificate,
)
from api.db import Database
from api.errors import AllocationRejected, Conflict, NotFound, SnapshotChanged, SolverFailed
from api.models import (
    AllocationRow,
    ArtifactRow,
    DeviceRow,
    ModelRow,
    NodePlanRow,
    NodeRow,
    ProfileRow,
    TenantRow,
)
from api.schemas import (
    AllocationDiff,
    ReplicaRef,
    SeatMove,
    ShareChange,
    TenantAllocation,
    TenantSeat,
    TenantShare,
)
from api.services.models import upload_reference
from api.services.nodes import measured_memory
from api.services.plans import ParsedPlans, RenderedPlans, empty_plan, keep_allocation_plans
from api.services.solve_lock import solve_lock

log = logging.getLogger(__name__)

ESTIMATE_EXPONENT = 0.8


@dataclass(frozen=True)
class Revisions:
    """The revision (api.services.revisions) of each tenant and model a snapshot holds, by id:
    what the store step compares with the rows as they are then (:func:`changed_since`)."""

    tenants: dict[int, int]
    models: dict[int, int]


@dataclass(frozen=True)
class SolveInput:
    snapshot: ClusterSnapshot
    tenant_ids: dict[str, int]  # tenant name -> id at solve time
    node_ids: dict[str, int]  # node name -> id
    previous: dict[str, NodePlan]  # the current plans, for churn limits and stable placement
    version: int  # the version (and id) the new allocation will get
    revisions: Revisions  # of the snapshot's tenants and models, as read


def _estimate(model: ModelRow, max_streams: int) -> ThroughputCurve:
    one = model.demand_qps / model.replicas_wanted
    return ThroughputCurve(
        qps=tuple(one * s**ESTIMATE_EXPONENT for s in range(1, max_streams + 1)), measured=False
    )


def read_solve_input(*, session: Session, objective: Objective) -> SolveInput:
    """The snapshot of the database the allocator divides, in a deterministic order."""
    tenants = list(session.scalars(select(TenantRow).order_by(TenantRow.name)))
    nodes = list(
        session.scalars(
            select(NodeRow).options(selectinload(NodeRow.devices)).order_by(NodeRow.name)
        )
    )
    gpus = tuple(
        Gpu(
            node=n.name,
            device=d.device,
            kind=d.kind,  # type: ignore[arg-type]
            memory_mb=d.memory_mb,
            seats=d.seats,
            streams=d.streams,
        )
        for n in nodes
        for d in sorted(n.devices, key=lambda d: d.device)
    )
    gpu_of_device = {d.id: f"{n.name}/{d.device}" for n in nodes for d in n.devices}
    max_streams = max((g.streams for g in gpus), default=1)
    names = {t.id: t.name for t in tenants}
    uploaded = set(session.scalars(select(ArtifactRow.model_id)))
    profiles: dict[int, dict[str, ThroughputCurve]] = defaultdict(dict)
    for p in session.scalars(select(ProfileRow)):
        # A stored profile entry (executor.wire.profiles) as the allocator's curve.
        profiles[p.model_id][gpu_of_device[p.device_id]] = ThroughputCurve(
            qps=tuple(p.qps), measured=True, sla_p99_ms=p.sla_p99_ms
        )
    measured = measured_memory(session=session)
    rows = [
        m
        for m in session.scalars(select(ModelRow).order_by(ModelRow.id))
        # An upload-backed model joins the allocation once its artifact has been uploaded.
        if (m.artifact != upload_reference(m.id) or m.id in uploaded) and _has_demand(m, names)
    ]
    models = tuple(
        Model(
            model_id=str(m.id),
            tenant=names[m.tenant_id],
            artifact=m.artifact,
            memory_mb=measured.get(m.id, m.memory_mb),
            replicas_wanted=m.replicas_wanted,
            sla_p99_ms=m.sla_p99_ms,
            demand_qps=m.demand_qps,
            profiles=profiles.get(m.id, {}),
            estimate=_estimate(m, max_streams),
            weight=m.weight,
        )
        for m in rows
    )
    snapshot = ClusterSnapshot(
        tenants=tuple(Tenant(name=t.name, weight=t.weight, criterion=t.criterion) for t in tenants),  # type: ignore[arg-type]
        models=models,
        gpus=gpus,
        objective=objective,
    )
    current = current_allocation(session=session)
    previous = (
        {} if current is None else plans_of_allocation(session=session, allocation_id=current.id)
    )
    last = session.scalar(select(func.max(AllocationRow.version))) or 0
    return SolveInput(
        snapshot=snapshot,
        tenant_ids={t.name: t.id for t in tenants},
        node_ids={n.name: n.id for n in nodes},
        previous=previous,
        version=last + 1,
        revisions=Revisions(
            tenants={t.id: t.revision for t in tenants}, models={m.id: m.revision for m in rows}
        ),
    )


def _has_demand(model: ModelRow, tenants: dict[int, str]) -> bool:
    """Whether the model may join the snapshot by its demand. The API refuses a demand of 0
    (api.schemas.DemandQps), but a model stored before it did may have one; the allocator
    would refuse the whole snapshot for it (a 409 for every tenant), so it is left out of
    the solve, with a warning naming it, until its tenant sets a demand."""
    if model.demand_qps > 0:
        return True
    log.warning(
        "model %d of tenant %r left out of the solve: its demand_qps is %r (PATCH it to a "
        "positive figure)",
        model.id,
        tenants[model.tenant_id],
        model.demand_qps,
    )
    return False


def plans_of_allocation(
    *, session: Session, allocation_id: int, parsed: ParsedPlans | None = None
) -> dict[str, NodePlan]:
    """Node name -> the stored plan of one allocation; ``parsed`` keeps the parses for the next
    call (the tenant view's hot path), without it every plan is parsed afresh."""
    return (parsed or ParsedPlans(capacity=0)).of_allocation(
        session=session, allocation_id=allocation_id
    )


def solve(
    solve_input: SolveInput, options: SolveOptions
) -> tuple[CertificateDocument, dict[str, NodePlan]]:
    """Run the cluster layer and its checker; return (certificate, plans) or raise.

    The certificate may say that some tenants' criteria fail: that is the allocator's honest
    best for this snapshot, not an error (see the module docstring)."""
    if not solve_input.snapshot.tenants or not solve_input.snapshot.gpus:
        raise Conflict("nothing to allocate: register at least one tenant and one node")
    try:
        result = allocator.allocate_cluster(
            solve_input.snapshot,
            # The snapshot's objective is the one stored with the allocation: solve with it.
            replace(options, objective=solve_input.snapshot.objective),
            solve_input.previous,
            version=solve_input.version,
            allocation_id=solve_input.version,
        )
    except (allocator.InstanceError, allocator.InfeasibleError) as exc:
        raise Conflict(f"cannot allocate: {exc}") from exc
    except allocator.SolverError as exc:
        raise SolverFailed(f"the solver found no allocation: {exc}") from exc
    except allocator.CertificateError as exc:
        raise AllocationRejected(f"the allocator refused its own result: {exc}") from exc
    _check(solve_input.snapshot, result)
    return result.certificate.document(), dict(result.plans)


def _check(snapshot: allocator.ClusterSnapshot, result: ClusterAllocation) -> None:
    """The allocator's own checker, run again before anything is stored: the allocation is
    complete and within its side constraints, the plans are cut from it, every figure of the
    certificate (each agent's row, exactly the instance's agents, the objective) is what the
    checker recomputes from scratch, both λ lie in [0, 1], and every plan survives the plan format's
    parser. Whether every criterion holds is not checked here: the certificate's answer to that
    is stored as it is, once the checker agrees with it."""
    certificate = result.certificate
    try:
        allocator.validate_cluster_allocation(snapshot, result)
        # Every λ the certificate states is an agent's least relaxation, within [0, 1]; one
        # beyond would mean a criterion weaker than the tenant's "up to one good".
        for name, lam in (
            ("lambda", certificate.lambda_ef),
            ("lambda_prop", certificate.lambda_prop),
        ):
            if not 0.0 <= lam <= 1.0:
                raise allocator.CertificateError(f"{name} = {lam!r} is not in [0, 1]")
        for plan in result.plans.values():
            NodePlan.from_dict(plan.to_dict())
    except (allocator.AllocatorError, allocator.PlanError) as exc:
        raise AllocationRejected(f"the allocator's result failed its checker: {exc}") from exc


def store_allocation(
    *,
    session: Session,
    solve_input: SolveInput,
    certificate: CertificateDocument,
    plans: dict[str, NodePlan],
    solve_seconds: float,
) -> tuple[AllocationRow, dict[int, dict[str, Any]]]:
    """The allocation and every node's plan of it (node id -> the stored document), in the
    caller's transaction."""
    row = AllocationRow(
        id=solve_input.version,
        version=solve_input.version,
        objective=solve_input.snapshot.objective,
        solve_seconds=solve_seconds,
        certificate=certificate.model_dump(),
        tenant_ids=solve_input.tenant_ids,
    )
    session.add(row)
    session.flush()
    stored: dict[int, dict[str, Any]] = {}
    for name, node_id in solve_input.node_ids.items():
        # Every node gets a plan of the new version, an empty one if it was given nothing, so
        # its ETag moves with every allocation and no node runs a plan from an older one.
        plan = plans.get(name) or _unseated(
            session=session, node_id=node_id, name=name, version=row.version
        )
        stored[node_id] = plan.to_dict()
        session.add(
            NodePlanRow(
                allocation_id=row.id, node_id=node_id, version=row.version, plan=stored[node_id]
            )
        )
    session.flush()
    return row, stored


def _unseated(*, session: Session, node_id: int, name: str, version: int) -> NodePlan:
    devices = list(
        session.scalars(
            select(DeviceRow).where(DeviceRow.node_id == node_id).order_by(DeviceRow.id)
        )
    )
    plan = empty_plan(node=name, devices=devices)
    return NodePlan(node=name, version=version, allocation_id=version, devices=plan.devices)


# How many times one request solves when tenants or models keep changing under its solves:
# a change during a solve (a tenant's edit) rarely repeats during the next one.
SOLVE_ATTEMPTS = 2
# How many changes a SnapshotChanged message names.
CHANGES_NAMED = 5


def changed_since(*, session: Session, revisions: Revisions) -> list[str]:
    """What of the snapshot's tenants and models was deleted or changed (a new revision) since
    it was read, e.g. ``["model 7 deleted"]``; empty when nothing was.

    The rows are read ``FOR SHARE`` on PostgreSQL, so none of them can be deleted or changed
    from this check until the caller's transaction ends; on SQLite the caller's write
    transaction excludes every other writer already."""
    changes: list[str] = []
    tables: tuple[tuple[str, type[TenantRow] | type[ModelRow], dict[int, int]], ...] = (
        ("tenant", TenantRow, revisions.tenants),
        ("model", ModelRow, revisions.models),
    )
    for kind, table, read in tables:
        if not read:
            continue
        rows = session.execute(
            select(table.id, table.revision)
            .where(table.id.in_(list(read)))
            .with_for_update(read=True)
        )
        now = {row_id: revision for row_id, revision in rows}
        for row_id, revision in sorted(read.items()):
            if row_id not in now:
                changes.append(f"{kind} {row_id} deleted")
            elif now[row_id] != revision:
                changes.append(f"{kind} {row_id} changed")
    return changes


@dataclass(frozen=True)
class _Solved:
    solve_input: SolveInput
    certificate: CertificateDocument
    row: AllocationRow
    stored: dict[int, dict[str, Any]]  # node id -> its stored plan document
    seconds: float


def _solve_once(
    *,
    db: Database,
    options: SolveOptions,
    objective: Objective,
    record: Callable[[Session, AllocationRow], None] | None,
) -> _Solved:
    """Read a snapshot, solve it and store the result, unless a tenant or model it holds was
    deleted or changed meanwhile (:class:`SnapshotChanged`, nothing stored): an allocation
    stored after a model's DELETE returned would tell nodes to serve a model that is gone."""
    with db.session(write=False) as session:
        solve_input = read_solve_input(session=session, objective=objective)
    started = time.perf_counter()
    certificate, plans = solve(solve_input, options)
    elapsed = time.perf_counter() - started
    with db.session(write=True) as session:
        changes = changed_since(session=session, revisions=solve_input.revisions)
        if changes:
            more = len(changes) - CHANGES_NAMED
            raise SnapshotChanged(
                "tenants or models changed while the allocation was being solved ("
                + ", ".join(changes[:CHANGES_NAMED])
                + (f" and {more} more" if more > 0 else "")
                + "); nothing was stored: solve again"
            )
        row, stored = store_allocation(
            session=session,
            solve_input=solve_input,
            certificate=certificate,
            plans=plans,
            solve_seconds=elapsed,
        )
        if record is not None:
            record(session, row)
    return _Solved(solve_input, certificate, row, stored, elapsed)


def _solve_until_stored(
    *,
    db: Database,
    options: SolveOptions,
    objective: Objective,
    record: Callable[[Session, AllocationRow], None] | None,
) -> _Solved:
    """:func:`_solve_once`, run again on a new snapshot while tenants or models change under
    it, :data:`SOLVE_ATTEMPTS` times in all; the last one's SnapshotChanged is the 409."""
    for _ in range(SOLVE_ATTEMPTS - 1):
        try:
            return _solve_once(db=db, options=options, objective=objective, record=record)
        except SnapshotChanged as exc:
            log.info("solving again: %s", exc.message)
    return _solve_once(db=db, options=options, objective=objective, record=record)


def run_solve(
    *,
    db: Database,
    options: SolveOptions,
    objective: Objective,
    parsed: ParsedPlans,
    rendered: RenderedPlans | None = None,
    check: Callable[[Session], None] | None = None,
    record: Callable[[Session, AllocationRow], None] | None = None,
) -> AllocationRow:
    """Solve now under ``objective`` and store the result (the body of ``POST /allocations``);
    its plans, once committed, are kept in ``parsed`` for the tenants' reads that follow, and
    rendered into ``rendered`` for the nodes' long-polls the new allocation wakes.

    ``check`` runs under the solve lock before anything is read and may raise to stop the
    solve; ``record`` runs in the transaction that stores the allocation. The route's
    idempotency record uses both (api.idempotency): a request with the key of a solve that
    finished while it waited for the lock replays that solve's reply instead of solving again.

    A solve whose tenants or models changed before it could be stored is run again on a new
    snapshot, up to :data:`SOLVE_ATTEMPTS` solves in all; then :class:`SnapshotChanged` (409).
    """
    # Long enough to wait out another solve (which may run past its limit by its checks).
    with solve_lock(db, wait_s=2 * options.time_limit_s + 60):
        if check is not None:
            with db.session(write=False) as session:
                check(session)
        solved = _solve_until_stored(db=db, options=options, objective=objective, record=record)
        row, solve_input, certificate = solved.row, solved.solve_input, solved.certificate
        # Parsed back from the stored documents, as a reader would: after the commit, outside
        # SQLite's write lock, and once rather than by each of the first readers at once.
        keep_allocation_plans(
            allocation_id=row.id,
            version=row.version,
            plans={
                node_id: NodePlan.from_dict(document)
                for node_id, document in solved.stored.items()
            },
            parsed=parsed,
            rendered=rendered,
        )
    log.info(
        "allocation %d stored: %d tenants, %d models, %d devices, solved in %.2f s",
        row.version,
        len(solve_input.snapshot.tenants),
        len(solve_input.snapshot.models),
        len(solve_input.snapshot.gpus),
        solved.seconds,
    )
    failing = sorted(name for name, agent in certificate.agents.items() if not agent.holds)
    if failing:
        # Stored all the same (see the module docstring), but operators should learn which
        # tenants' criteria the cluster cannot meet as configured; the first few names are
        # enough to find them in the certificate.
        log.warning(
            "allocation %d stored, but no allocation found meets every tenant's criterion "
            "exactly; %d do not: %s",
            row.version,
            len(failing),
            ", ".join(failing[:8]),
        )
    return row


# --- reading -----------------------------------------------------------------------------------


def list_allocations(
    *, session: Session, limit: int, before: int | None, objective: Objective | None = None
) -> list[AllocationRow]:
    """Allocations newest first: ``limit`` of them below version ``before``, solved under
    ``objective`` when given."""
    query = select(AllocationRow).order_by(AllocationRow.version.desc()).limit(limit)
    if before is not None:
        query = query.where(AllocationRow.version < before)
    if objective is not None:
        query = query.where(AllocationRow.objective == objective)
    return list(session.scalars(query))


def get_allocation_or_raise(*, session: Session, allocation_id: int) -> AllocationRow:
    row = session.get(AllocationRow, allocation_id)
    if row is None:
        raise NotFound(f"allocation {allocation_id} not found")
    return row


def current_allocation(*, session: Session) -> AllocationRow | None:
    return session.scalar(select(AllocationRow).order_by(AllocationRow.version.desc()).limit(1))


def current_allocation_or_raise(*, session: Session) -> AllocationRow:
    row = current_allocation(session=session)
    if row is None:
        raise NotFound("no allocation yet: POST /v1/allocations solves one")
    return row


def node_names(*, session: Session, allocation_id: int) -> list[str]:
    """The nodes the allocation has a plan for, by name (no plan is parsed for that)."""
    return sorted(
        session.scalars(
            select(NodeRow.name)
            .join(NodePlanRow, NodeRow.id == NodePlanRow.node_id)
            .where(NodePlanRow.allocation_id == allocation_id)
        )
    )


Slot = tuple[str, str, int]  # (node, device, seat)


def _seats(plans: dict[str, NodePlan]) -> dict[Slot, ReplicaRef | None]:
    return {
        (node, device.device, seat.seat): (
            ReplicaRef(model_id=seat.replica.model_id, tenant=seat.replica.tenant)
            if seat.replica is not None
            else None
        )
        for node, plan in plans.items()
        for device in plan.devices
        for seat in device.seats
    }


def _tenant_streams(plans: dict[str, NodePlan]) -> dict[tuple[str, str, str], float]:
    """(tenant, node, device) -> streams serving the tenant there: base, dedicated and pool."""
    streams: dict[tuple[str, str, str], float] = defaultdict(float)
    for node, plan in plans.items():
        for device, seat in plan.replicas():
            assert seat.replica is not None
            key = (seat.replica.tenant, node, device.device)
            streams[key] += 1 + seat.dedicated_streams + device.pool_streams(seat)
    return streams


def diff_allocations(*, session: Session, from_id: int, to_id: int) -> AllocationDiff:
    """Seats whose replica changed, and tenants' streams per device that changed."""
    for allocation_id in (from_id, to_id):
        get_allocation_or_raise(session=session, allocation_id=allocation_id)
    before_plans = plans_of_allocation(session=session, allocation_id=from_id)
    after_plans = plans_of_allocation(session=session, allocation_id=to_id)
    before, after = _seats(before_plans), _seats(after_plans)
    moves = [
        SeatMove(
            node=slot[0],
            device=slot[1],
            seat=slot[2],
            before=before.get(slot),
            after=after.get(slot),
        )
        for slot in sorted(set(before) | set(after))
        if before.get(slot) != after.get(slot)
    ]
    old, new = _tenant_streams(before_plans), _tenant_streams(after_plans)
    changes = [
        ShareChange(
            tenant=key[0],
            node=key[1],
            device=key[2],
            before=old.get(key, 0.0),
            after=new.get(key, 0.0),
        )
        for key in sorted(set(old) | set(new))
        if abs(old.get(key, 0.0) - new.get(key, 0.0)) > 1e-9
    ]
    return AllocationDiff(from_id=from_id, to_id=to_id, seat_moves=moves, share_changes=changes)


def tenant_view(*, session: Session, tenant_id: int, parsed: ParsedPlans) -> TenantAllocation:
    """The current allocation as one tenant may see it: its seats, its shares, its own row;
    ``parsed`` keeps the allocation's parsed plans for the next request."""
    row = current_allocation_or_raise(session=session)
    # By id, which is never reused (migration 0003): a tenant re-created under a deleted
    # tenant's name is another tenant, and its id was never the deleted one's.
    names = [name for name, tid in row.tenant_ids.items() if tid == tenant_id]
    if not names:
        raise NotFound("the current allocation predates this tenant: no rows for it yet")
    name = names[0]
    plans = plans_of_allocation(session=session, allocation_id=row.id, parsed=parsed)
    seats = [
        TenantSeat(
            node=node,
            device=device.device,
            seat=seat.seat,
            model_id=seat.replica.model_id,
            dedicated_streams=seat.dedicated_streams,
            pool_streams=device.pool_streams(seat),
        )
        for node, plan in sorted(plans.items())
        for device, seat in plan.replicas()
        if seat.replica is not None and seat.replica.tenant == name
    ]
    totals = {(node, d.device): d.streams for node, plan in plans.items() for d in plan.devices}
    shares = [
        TenantShare(
            node=node, device=device, streams=streams, fraction=streams / totals[(node, device)]
        )
        for (tenant, node, device), streams in sorted(_tenant_streams(plans).items())
        if tenant == name
    ]
    certificate = parse_certificate(row.certificate)
    return TenantAllocation(
        allocation_id=row.id,
        version=row.version,
        tenant=name,
        seats=seats,
        shares=shares,
        certificate=own_certificate_row(certificate, name),
        models=certificate.models.get(name, {}),
    )


def own_certificate_row(certificate: CertificateDocument, tenant: str) -> AgentCertificateDocument:
    """The tenant's row of the certificate, with other tenants' names replaced by ranks.

    The envy row holds the tenant's own values of the others' bundles, which it may see; the
    others' names and everything else per agent are theirs, so they are left out.
    """
    own = certificate.agents[tenant]
    others = sorted(name for name in certificate.agents if name != tenant)
    alias = {name: f"other-{k + 1}" for k, name in enumerate(others)}
    return own.model_copy(
        update={"envy": {alias.get(name, "self"): value for name, value in own.envy.items()}}
    )
