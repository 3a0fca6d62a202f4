"""The cluster document that ``gpufair allocate`` reads (TOML or JSON) as a ClusterSnapshot.

Tenants, models with their throughput curves, and GPUs (examples/cluster.toml, docs/formats.md);
a malformed document is refused with an InstanceError naming the bad field (the CLI prints that
one line). The fields are typed strictly, as the API's request bodies are: an unknown field (a
misspelt ``wieght``) is refused rather than left at its default, a number is never read from a
string or a boolean, a whole number never from a fraction (``memory_mb = 16000.7`` is not
16000), and every number is finite. Devices are bounded as the API bounds the devices a node
registers, so a file cannot ask for a solve no registered cluster could (10⁹ seats ran for
ever). The core instance's document has its own parser, allocator.documents.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from allocator.cluster.snapshot import (
    MAX_CURVE_POINTS,
    ClusterSnapshot,
    DeviceKind,
    Gpu,
    Model,
    Tenant,
    ThroughputCurve,
)
from allocator.criteria import Criterion
from allocator.errors import InstanceError, first_error
from allocator.objectives import Objective

# The bounds of a device the API registers (api/schemas.py DeviceSpec): a node's device has at
# most 64 seats and 1024 streams, one curve point per stream.
MAX_SEATS = 64
MAX_STREAMS = MAX_CURVE_POINTS
# The most replicas a model may want, as the API bounds replicas_wanted.
MAX_REPLICAS = 1024

Name = Annotated[str, Field(min_length=1)]
# Signs and ranges the cluster layer checks itself (allocator.cluster.instance, for the API's
# snapshots too) are left to it; here a number must be one, and finite.
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    """Read as written: unknown fields refused, no coercion between types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TenantTable(_Strict):
    """A ``[[tenants]]`` table."""

    name: Name
    weight: Finite = 1.0
    criterion: Criterion = "prop_alpha"


class GpuTable(_Strict):
    """A ``[[gpus]]`` table: one device."""

    node: Name
    device: Name
    kind: DeviceKind = "gpu"
    memory_mb: int
    seats: Annotated[int, Field(le=MAX_SEATS)]
    streams: Annotated[int, Field(le=MAX_STREAMS)]


class ModelTable(_Strict):
    """A ``[[models]]`` table: one tenant model."""

    model_id: Name
    tenant: Name
    artifact: Name
    memory_mb: int
    replicas_wanted: Annotated[int, Field(le=MAX_REPLICAS)]
    sla_p99_ms: Finite
    demand_qps: Finite
    weight: Finite = 1.0
    estimate: ThroughputCurve = ThroughputCurve(qps=(1.0,), measured=False)
    profiles: dict[str, ThroughputCurve] = Field(default_factory=dict)


class ClusterDocument(_Strict):
    """The whole file."""

    objective: Objective = "utilitarian"
    tenants: list[TenantTable]
    gpus: list[GpuTable]
    models: list[ModelTable] = Field(default_factory=list)


def snapshot_from_dict(doc: Any) -> ClusterSnapshot:
    """Parse a cluster document (``gpufair allocate``'s TOML/JSON); InstanceError naming the
    first bad field."""
    if not isinstance(doc, dict):
        raise InstanceError("cluster: expected an object with tenants, models and gpus")
    try:
        cluster = ClusterDocument.model_validate(doc)
    except ValidationError as exc:
        raise InstanceError(first_error(exc, "cluster")) from None
    # The tables' fields are the snapshot types' own, by name.
    return ClusterSnapshot(
        tenants=tuple(Tenant(**dict(t)) for t in cluster.tenants),
        models=tuple(Model(**dict(m)) for m in cluster.models),
        gpus=tuple(Gpu(**dict(g)) for g in cluster.gpus),
        objective=cluster.objective,
    )
