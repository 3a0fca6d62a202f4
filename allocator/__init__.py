"""gpufair's allocator: certified fair division of GPU seats and streams.

Pure functions over frozen dataclasses: no I/O, no torch, no web, no database (a test asserts
it). The public surface is re-exported here; modules behind it are private to the package:

* ``divide(instance, options) -> Division`` — the core of docs/architecture.md §2
  (allocator.division), over an ``Instance`` (allocator.instance) whose agents state their
  criteria (allocator.criteria) and whose welfare is an objective (allocator.objectives); it
  first builds what the guarantees table promises (allocator.guarantee, with the constructions
  of allocator.constructive and the welfare LP of allocator.welfare), then the exact MILP with
  its λ search (allocator.exact) on small instances and the scalable path (allocator.scalable)
  look for more;
* ``certify`` / ``validate_allocation`` — the one checker (allocator.certificate), and the
  certificate's document, ``CertificateDocument`` (read back by ``parse_certificate``);
* ``allocate_cluster(snapshot, options, previous, *, version, allocation_id)`` — the cluster
  layer that builds the core instance from a snapshot and cuts node plans (allocator.cluster),
  and ``validate_cluster_allocation`` — its checker: certificate and plans agree with the
  allocation;
* the exception tree rooted at ``AllocatorError`` (allocator.errors).

The solvers are loaded on first use (PuLP only on the first exact solve), so importing the
package, as the executor does for the node plan format, stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from allocator.certificate import (
    AgentCertificate,
    AgentCertificateDocument,
    Certificate,
    CertificateDocument,
    ModelShare,
    certify,
    parse_certificate,
    validate_allocation,
)
from allocator.cluster.plan import DevicePlan, ModelReplica, NodePlan, PlanError, SeatPlan
from allocator.cluster.snapshot import (
    ClusterSnapshot,
    Gpu,
    Model,
    QpsCurve,
    Tenant,
    ThroughputCurve,
    parse_throughput_curve,
)
from allocator.criteria import CRITERIA, Criterion
from allocator.documents import instance_from_dict, instance_to_dict
from allocator.errors import (
    AllocationError,
    AllocatorError,
    CertificateError,
    InfeasibleError,
    InstanceError,
    SolverError,
    SolverTimeoutError,
)
from allocator.instance import Agent, Allocation, Instance
from allocator.objectives import OBJECTIVES, Objective
from allocator.options import SolveOptions

if TYPE_CHECKING:
    from allocator.cluster.allocate import (
        ClusterAllocation,
        allocate_cluster,
        validate_cluster_allocation,
    )
    from allocator.division import Division, divide

# Names whose modules load the solvers (HiGHS, and PuLP on the first exact solve): loaded on
# first use.
_LAZY = {
    "divide": "allocator.division",
    "Division": "allocator.division",
    "allocate_cluster": "allocator.cluster.allocate",
    "ClusterAllocation": "allocator.cluster.allocate",
    "validate_cluster_allocation": "allocator.cluster.allocate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'allocator' has no attribute {name!r}")


__all__ = [
    "CRITERIA",
    "OBJECTIVES",
    "Agent",
    "AgentCertificate",
    "AgentCertificateDocument",
    "AllocationError",
    "Allocation",
    "AllocatorError",
    "Certificate",
    "CertificateDocument",
    "CertificateError",
    "ClusterAllocation",
    "ClusterSnapshot",
    "Criterion",
    "DevicePlan",
    "Division",
    "Gpu",
    "InfeasibleError",
    "Instance",
    "InstanceError",
    "Model",
    "ModelReplica",
    "ModelShare",
    "NodePlan",
    "Objective",
    "PlanError",
    "QpsCurve",
    "SeatPlan",
    "SolveOptions",
    "SolverError",
    "SolverTimeoutError",
    "Tenant",
    "ThroughputCurve",
    "allocate_cluster",
    "certify",
    "divide",
    "instance_from_dict",
    "instance_to_dict",
    "parse_certificate",
    "parse_throughput_curve",
    "validate_allocation",
    "validate_cluster_allocation",
]
