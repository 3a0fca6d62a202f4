"""What a naive split would have given the demo's tenants: the same cluster, divided equally.

The rule a platform team reaches for without a fair-division solver (the equal split of
bench/baselines.py, docs/architecture.md §5), applied to the cluster instance the allocator
solves (allocator/cluster/instance.py): each device's seats are dealt in turn to the tenants
whose model fits there, and its pool is split equally among the tenants holding a seat on it.
The result is certified by the same checker as the allocator's, so the demo can show, tenant by
tenant, its share of the cluster, its expected QPS and whether its own criterion holds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from allocator.certificate import Certificate, certify
from allocator.cluster.documents import snapshot_from_dict
from allocator.cluster.instance import ClusterInstance, build_instance, pool_name, seat_name
from allocator.instance import Allocation
from api.services.allocations import ESTIMATE_EXPONENT
from gpufair.demo.scenario import Scenario


@dataclass(frozen=True)
class SplitRow:
    """One tenant under one division of the cluster."""

    share: float  # fraction of all the cluster's streams serving it
    expected_qps: float  # served fraction of demand (the allocator's value) × demand
    holds: bool  # its own criterion holds (λ as the certificate reports)


def cluster_instance(
    scenario: Scenario, measured: set[tuple[str, str]] | None = None
) -> ClusterInstance:
    """The core instance the API builds for the scenario once the nodes' curves are stored:
    those of ``measured`` (tenant, node) pairs (None: every pair), the API's estimate (its
    ``ESTIMATE_EXPONENT``) for the rest."""
    gpus: list[dict[str, object]] = []
    profiles: dict[str, dict[str, object]] = defaultdict(dict)
    for node in scenario.nodes:
        for device in node.devices:
            gpus.append({"node": node.name, "device": device.device, "kind": device.kind,
                         "memory_mb": device.memory_mb, "seats": device.seats,
                         "streams": device.streams})
            for tenant in scenario.tenants:
                if measured is None or (tenant.name, node.name) in measured:
                    profiles[tenant.model.name][f"{node.name}/{device.device}"] = {
                        "qps": scenario.curve(node.name, device.device), "measured": True}
    max_streams = max(d.streams for n in scenario.nodes for d in n.devices)
    document = {
        "objective": scenario.objective,
        "tenants": [{"name": t.name, "weight": t.weight, "criterion": t.criterion}
                    for t in scenario.tenants],
        "gpus": gpus,
        "models": [{"model_id": t.model.name, "tenant": t.name, "artifact": t.model.artifact,
                    "memory_mb": t.model.memory_mb, "replicas_wanted": t.model.replicas_wanted,
                    "sla_p99_ms": t.model.sla_p99_ms, "demand_qps": t.model.demand_qps,
                    "profiles": profiles[t.model.name],
                    "estimate": {"qps": [t.model.demand_qps / t.model.replicas_wanted
                                         * s**ESTIMATE_EXPONENT
                                         for s in range(1, max_streams + 1)]}}
                   for t in scenario.tenants],
    }
    return build_instance(snapshot_from_dict(document))


def equal_split(cluster: ClusterInstance, scenario: Scenario) -> Allocation:
    """Seats dealt in turn over the tenants that may hold them; pools split equally."""
    instance = cluster.instance
    tenants = sorted(a.name for a in instance.agents)
    indivisible: dict[str, str | None] = {}
    divisible: dict[str, dict[str, float]] = {}
    turn = 0
    for node in scenario.nodes:
        for device in node.devices:
            gpu_id = f"{node.name}/{device.device}"
            holders: set[str] = set()
            for k in range(device.seats):
                seat = seat_name(gpu_id, k)
                allowed = [t for t in tenants if (t, seat) not in instance.forbidden]
                taker = None
                for step in range(len(tenants)):
                    candidate = tenants[(turn + step) % len(tenants)]
                    if candidate in allowed:
                        taker = candidate
                        turn = (turn + step + 1) % len(tenants)
                        break
                indivisible[seat] = taker
                if taker is not None:
                    holders.add(taker)
            pool = pool_name(gpu_id)
            if pool in instance.divisible:
                divisible[pool] = {t: 1 / len(holders) for t in sorted(holders)}
    return Allocation(indivisible=indivisible, divisible=divisible)


def rows(scenario: Scenario, cluster: ClusterInstance, allocation: Allocation,
         certificate: Certificate) -> dict[str, SplitRow]:
    """Share, expected QPS and verdict of every tenant under a core allocation."""
    total_streams = sum(d.streams for n in scenario.nodes for d in n.devices)
    pool_streams = {pool_name(f"{n.name}/{d.device}"): d.streams - d.seats
                    for n in scenario.nodes for d in n.devices}
    streams: dict[str, float] = defaultdict(float)
    for holder in allocation.indivisible.values():
        if holder is not None:
            streams[holder] += 1
    for pool, shares in allocation.divisible.items():
        for tenant, fraction in shares.items():
            streams[tenant] += fraction * pool_streams[pool]
    return {
        t.name: SplitRow(
            share=streams[t.name] / total_streams,
            expected_qps=certificate.agents[t.name].value * t.model.demand_qps,
            holds=certificate.agents[t.name].holds,
        )
        for t in scenario.tenants
    }


def naive_rows(
    scenario: Scenario, measured: set[tuple[str, str]] | None = None
) -> dict[str, SplitRow]:
    """The equal split of the scenario's cluster, tenant by tenant (``measured``: as for
    :func:`cluster_instance`)."""
    cluster = cluster_instance(scenario, measured)
    allocation = equal_split(cluster, scenario)
    return rows(scenario, cluster, allocation, certify(cluster.instance, allocation))
