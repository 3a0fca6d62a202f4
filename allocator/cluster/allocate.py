"""``allocate_cluster``: a snapshot divided fairly and cut into node plans, and its checker.

The snapshot becomes a core instance (allocator.cluster.instance), ``divide`` divides it
(allocator.division) and its idle pools are shared (allocator.cluster.idle_pools). The core
allocation is then cut into one NodePlan per node: each held seat gets the model it was
earmarked for, and the tenant's pool share ``x·P`` becomes ``⌊x·P⌋`` whole streams dedicated
to its seats there and a weight in the shared pool for the rest.

:func:`validate_cluster_allocation` checks a result end to end (the API runs it before
anything is stored): the certificate is the one checker's for the allocation the plans are
cut from, and the plans are that allocation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from allocator.certificate import (
    AgentCertificate,
    Certificate,
    ModelShare,
    check_certificate,
    validate_allocation,
)
from allocator.cluster.idle_pools import share_idle_pools
from allocator.cluster.instance import ClusterInstance, build_instance, pool_name, seat_name
from allocator.cluster.plan import DevicePlan, ModelReplica, NodePlan, SeatPlan
from allocator.cluster.snapshot import ClusterSnapshot, Gpu
from allocator.division import divide
from allocator.errors import AllocationError
from allocator.instance import Allocation, Instance
from allocator.options import Churn, SolveOptions


@dataclass(frozen=True)
class ClusterAllocation:
    plans: dict[str, NodePlan]  # node -> its plan, for every node of the snapshot
    certificate: Certificate  # the checker's certificate of `allocation` (see its `holds`)
    instance: Instance  # the core instance built from the snapshot
    # The allocation the plans were cut from and the certificate was computed on: the core
    # division with its idle pools shared (``idle_shares``).
    allocation: Allocation
    # pool -> tenant -> the part of its share that share_idle_pools added to the core's
    idle_shares: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "plans": {node: plan.to_dict() for node, plan in self.plans.items()},
            "certificate": self.certificate.to_dict(),
            "indivisible": dict(self.allocation.indivisible),
            "divisible": {d: dict(s) for d, s in self.allocation.divisible.items()},
            "idle_shares": {d: dict(s) for d, s in self.idle_shares.items()},
        }


def previous_replicas(
    snapshot: ClusterSnapshot, previous: dict[str, NodePlan]
) -> dict[str, tuple[str, str]]:
    """Seat good -> (tenant, model) it held in the previous plans."""
    gpus = {(g.node, g.device): g for g in snapshot.gpus}
    held = {}
    for node, plan in previous.items():
        for device, seat in plan.replicas():
            gpu = gpus.get((node, device.device))
            if gpu is not None and seat.replica is not None and seat.seat < gpu.seats:
                held[seat_name(gpu.gpu_id, seat.seat)] = (
                    seat.replica.tenant, seat.replica.model_id)
    return held


def allocate_cluster(
    snapshot: ClusterSnapshot,
    options: SolveOptions | None = None,
    previous: dict[str, NodePlan] | None = None,
    *,
    version: int = 1,
    allocation_id: int = 0,
) -> ClusterAllocation:
    """Fairly allocate the snapshot's GPUs and cut one plan per node (certified)."""
    options = options or SolveOptions()
    if options.objective is None:
        options = SolveOptions(
            solver=options.solver, time_limit_s=options.time_limit_s, gap=options.gap,
            objective=snapshot.objective, churn_limit=options.churn_limit,
        )
    held = previous_replicas(snapshot, previous or {})
    built = build_instance(snapshot, held)
    churn = None
    if options.churn_limit is not None and previous:
        # The bound counts the seats that leave a tenant that could keep them: a seat its
        # models no longer want or fit (now forbidden to it) leaves whatever the bound says.
        instance = built.instance
        churn = Churn(previous={seat: tenant for seat, (tenant, _) in held.items()
                                if seat in instance.indivisible
                                and (tenant, seat) not in instance.forbidden},
                      limit=options.churn_limit)  # fmt: skip
    division = divide(built.instance, options, churn=churn, notes=built.notes)
    allocation, certificate, idle = share_idle_pools(
        built.instance, division.allocation, division.certificate)
    certificate = replace(certificate, models=model_shares(snapshot, built, allocation))
    plans = _plans(snapshot, built, allocation, version, allocation_id)
    return ClusterAllocation(plans, certificate, built.instance, allocation, idle)


def model_shares(
    snapshot: ClusterSnapshot, built: ClusterInstance, allocation: Allocation
) -> dict[str, dict[str, ModelShare]]:
    """Tenant -> model -> its part of the tenant's bundle (docs/fairness.md, "Per-model
    weights"): the seats held for it (each seat is earmarked for one model) and its part of
    each pool share (the gains of the pool's optimal split over the tenant's replicas there).
    The parts add up to the tenant's value and total, which validate_cluster_allocation
    checks."""
    values = built.instance.values
    seats: dict[tuple[str, str], int] = defaultdict(int)
    value: dict[tuple[str, str], float] = defaultdict(float)
    total: dict[tuple[str, str], float] = defaultdict(float)
    for (tenant, seat), model_id in built.earmark.items():
        total[tenant, model_id] += values[tenant].get(seat, 0.0)
        if allocation.indivisible.get(seat) == tenant:
            seats[tenant, model_id] += 1
            value[tenant, model_id] += values[tenant].get(seat, 0.0)
    for (tenant, pool), gains in built.pool_gains.items():
        share = allocation.divisible.get(pool, {}).get(tenant, 0.0)
        for model_id, gain in gains.items():
            total[tenant, model_id] += gain
            value[tenant, model_id] += share * gain
    bundle = {t: sum(v for (owner, _), v in value.items() if owner == t)
              for t in {m.tenant for m in snapshot.models}}
    shares: dict[str, dict[str, ModelShare]] = defaultdict(dict)
    for m in sorted(snapshot.models, key=lambda m: (m.tenant, m.model_id)):
        if m.model_id not in built.weights:
            continue  # wants no replicas: no part in the division
        key = (m.tenant, m.model_id)
        own_weights = sum(o.weight for o in snapshot.models
                          if o.tenant == m.tenant and o.model_id in built.weights)
        shares[m.tenant][m.model_id] = ModelShare(
            weight=m.weight,
            entitlement=m.weight / own_weights,
            seats=seats[key],
            value=value[key],
            total=total[key],
            share=value[key] / bundle[m.tenant] if bundle[m.tenant] > 0 else 0.0,
            served=value[key] / built.weights[m.model_id],
        )
    return dict(shares)


def _plans(
    snapshot: ClusterSnapshot, built: ClusterInstance, allocation: Allocation, version: int,
    allocation_id: int,
) -> dict[str, NodePlan]:
    models = {m.model_id: m for m in snapshot.models}
    devices: dict[str, list[DevicePlan]] = {g.node: [] for g in snapshot.gpus}
    for gpu in sorted(snapshot.gpus, key=lambda g: g.gpu_id):
        extra = gpu.streams - gpu.seats
        shares = allocation.divisible.get(pool_name(gpu.gpu_id), {}) if extra > 0 else {}
        holders: dict[str, list[int]] = defaultdict(list)
        replicas: dict[int, ModelReplica] = {}
        for k in range(gpu.seats):
            tenant = allocation.indivisible.get(seat_name(gpu.gpu_id, k))
            if tenant is None:
                continue
            model = models[built.earmark[tenant, seat_name(gpu.gpu_id, k)]]
            holders[tenant].append(k)
            replicas[k] = ModelReplica(model.model_id, tenant, model.artifact, model.sla_p99_ms)
        dedicated: dict[int, int] = defaultdict(int)
        weight: dict[int, float] = defaultdict(float)
        for tenant, seats in holders.items():
            streams = shares.get(tenant, 0.0) * extra
            whole = math.floor(streams + 1e-9)
            for n in range(whole):
                dedicated[seats[n % len(seats)]] += 1
            for k in seats:
                weight[k] += max(0.0, streams - whole) / len(seats)
        pool = extra - sum(dedicated.values())
        seats_plan = tuple(
            SeatPlan(k, replicas.get(k), dedicated.get(k, 0), weight.get(k, 0.0) if pool else 0.0)
            for k in range(gpu.seats)
        )
        devices[gpu.node].append(DevicePlan(gpu.device, gpu.kind, gpu.streams, pool, seats_plan))
    return {
        node: NodePlan(node, version, allocation_id, tuple(devs))
        for node, devs in sorted(devices.items())
    }


def validate_cluster_allocation(snapshot: ClusterSnapshot, result: ClusterAllocation) -> None:
    """Raise AllocationError (CertificateError for the certificate) unless the result's
    allocation, certificate and plans are sound: the allocation is valid and the certificate
    is the checker's for it (allocator.certificate.check_certificate: every figure of every
    row, exactly the instance's agents, the objective), there is one plan per node, every
    device's seats, dedicated and pool streams fit its streams, and the plans are cut from
    that allocation — each seat holds a replica of the tenant the allocation gives it to, and
    each tenant's dedicated streams plus pool weights on a GPU are its share ``x·P`` of the
    pool."""
    validate_allocation(result.instance, result.allocation)
    cert = result.certificate
    check_certificate(result.instance, result.allocation, cert)
    for name, row in cert.agents.items():
        _check_model_shares(name, row, cert.models.get(name, {}), result.allocation)
    if set(result.plans) != {g.node for g in snapshot.gpus}:
        raise AllocationError("plans: not exactly one plan per node of the snapshot")
    gpus = {(g.node, g.device): g for g in snapshot.gpus}
    for node, plan in result.plans.items():
        for device in plan.devices:
            gpu = gpus.get((node, device.device))
            if gpu is None:
                raise AllocationError(f"plan {node}/{device.device}: unknown device")
            used = len(device.seats) + device.shared_pool_streams + sum(
                s.dedicated_streams for s in device.seats)
            if used > device.streams or device.streams != gpu.streams:
                raise AllocationError(f"plan {node}/{device.device}: streams over-allocated")
            _check_cut(gpu, device, result.allocation)


def _check_model_shares(
    tenant: str, row: AgentCertificate, models: dict[str, ModelShare], allocation: Allocation
) -> None:
    """Raise AllocationError unless the tenant's model parts add up to its bundle: their
    values to its value, their totals to its total, their seats to the seats it holds."""
    held = sum(1 for holder in allocation.indivisible.values() if holder == tenant)
    if held != sum(m.seats for m in models.values()) or not all(
            math.isclose(stated, part, rel_tol=1e-9, abs_tol=1e-9) for stated, part in (
                (row.value, sum(m.value for m in models.values())),
                (row.total, sum(m.total for m in models.values())))):
        raise AllocationError(f"the certificate's model shares of {tenant!r} do not add up to "
                              f"its bundle")


def _check_cut(gpu: Gpu, device: DevicePlan, allocation: Allocation) -> None:
    """Raise AllocationError unless the device's plan is the allocation's seats and shares."""
    streams: dict[str, float] = defaultdict(float)
    for seat in device.seats:
        holder = allocation.indivisible.get(seat_name(gpu.gpu_id, seat.seat))
        tenant = seat.replica.tenant if seat.replica is not None else None
        if tenant != holder:
            raise AllocationError(f"plan {gpu.gpu_id} seat {seat.seat}: holds {tenant!r}, "
                                  f"the allocation gives the seat to {holder!r}")
        if tenant is not None:
            streams[tenant] += seat.dedicated_streams + seat.pool_weight
    extra = gpu.streams - gpu.seats
    shares = allocation.divisible.get(pool_name(gpu.gpu_id), {}) if extra > 0 else {}
    for tenant in sorted(set(streams) | set(shares)):
        share = shares.get(tenant, 0.0) * extra
        if abs(streams.get(tenant, 0.0) - share) > 1e-6 * max(1, extra):
            raise AllocationError(
                f"plan {gpu.gpu_id}: {tenant!r} gets {streams.get(tenant, 0.0):.6g} pool "
                f"streams, its share of the pool is {share:.6g}")
