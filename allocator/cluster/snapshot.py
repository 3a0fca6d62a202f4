"""The cluster snapshot: what the allocator's cluster layer divides.

A snapshot is a frozen picture of the cluster at solve time — GPUs (or CPU devices standing in
for them) with their seats, streams and memory; tenants with their weight and fairness
criterion; models with their SLA, demand and measured or estimated throughput curves. The API
builds one from the database, ``gpufair allocate`` from a TOML/JSON file, tests by hand. The
allocator reads nothing else, which keeps it a pure function of this value (docs/architecture.md
§1, §2).

:class:`ThroughputCurve` is also the one definition of a throughput curve outside the allocator:
the profile file the executor reads (``executor.profiles.ProfileCurve`` is a curve plus where it
was measured), the profiles a daemon uploads (``executor.wire.profiles``, whose ``qps`` is a
:data:`QpsCurve`) and the API's snapshot all take their rules from here, because the allocator
is the part that consumes curves and may not import the executor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter
from pydantic.dataclasses import dataclass as pydantic_dataclass

from allocator.criteria import Criterion
from allocator.objectives import Objective

DeviceKind = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class Gpu:
    """One accelerator (or a CPU device serving as one) on a node."""

    node: str  # node name, unique in the cluster
    device: str  # device on the node, e.g. "cuda:0" or "cpu:0"
    kind: DeviceKind  # "gpu" runs sessions on CUDA streams, "cpu" on threads
    memory_mb: int  # memory available to model replicas, split evenly between the seats
    seats: int  # σ_g: indivisible slots, each holding one replica with one base stream
    streams: int  # S_g ≥ σ_g: the S_g − σ_g left over form the divisible stream pool

    @property
    def gpu_id(self) -> str:
        """Cluster-wide identifier, ``node/device``."""
        return f"{self.node}/{self.device}"


# The most points a curve has: one per stream, and the API registers devices of at most 1024.
MAX_CURVE_POINTS = 1024


def _non_decreasing(qps: tuple[float, ...]) -> tuple[float, ...]:
    for streams, (fewer, more) in enumerate(pairwise(qps), start=1):
        if more < fewer:
            raise ValueError(
                f"must not decrease as streams are added: {more!r} with {streams + 1} "
                f"< {fewer!r} with {streams}"
            )
    return qps


# q(s) for s = 1, 2, …: finite, non-negative, non-decreasing numbers (strict: no booleans or
# numeric strings), one per stream. No upper bound: the allocator caps a curve at the demand.
QpsCurve = Annotated[
    tuple[Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)], ...],
    Field(
        min_length=1,
        max_length=MAX_CURVE_POINTS,
        description="qps[s-1]: latency-bounded QPS of one replica with s streams; "
        "non-negative, non-decreasing",
    ),
    AfterValidator(_non_decreasing),
]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ThroughputCurve:
    """q_m(g, s): latency-bounded QPS of one replica with s = 1, 2, … streams.

    Validated on construction (a pydantic dataclass), so no curve that breaks :data:`QpsCurve`
    reaches the allocator, whoever built it.
    """

    qps: QpsCurve  # qps[s-1] for s streams
    # False while the value is an estimate not yet profiled on a node.
    measured: Annotated[bool, Field(strict=True)] = False
    # The p99 bound the curve was measured against; None: the model's own SLA (an estimate,
    # or a curve from before profiles recorded it). See :func:`within_sla`.
    sla_p99_ms: Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)] | None = None


# ln 100: in an M/M/1 queue with service rate μ and arrival rate λ the sojourn time exceeds t
# with probability e^{-(μ−λ)t}, so its p99 is ln(100)/(μ − λ).
P99_LOG = math.log(100.0)


@lru_cache(maxsize=4096)
def within_sla(curve: ThroughputCurve, sla_p99_ms: float) -> ThroughputCurve:
    """The curve a model with p99 bound ``sla_p99_ms`` can count on, from one measured against
    ``curve.sla_p99_ms`` (docs/fairness.md, "A model's SLA").

    The latency model is an M/M/1 queue per replica: the measured point ``q`` at bound ``L₀``
    fixes the service rate ``μ = q + ln100/L₀``, and within a tighter bound ``L`` the replica
    serves ``μ − ln100/L = q − ln100·(1/L − 1/L₀)`` (at least 0), for every number of streams.
    Within a looser bound the measured curve is kept: it is a lower bound, and the model's
    extra headroom is not extrapolated (as curves stay flat beyond their last point). A curve
    without a bound (an estimate) is the model's own.
    """
    measured_within = curve.sla_p99_ms
    if measured_within is None or sla_p99_ms >= measured_within:
        return curve
    cut = P99_LOG * 1000.0 * (1.0 / sla_p99_ms - 1.0 / measured_within)  # QPS; bounds are in ms
    return ThroughputCurve(qps=tuple(max(0.0, q - cut) for q in curve.qps),
                           measured=curve.measured, sla_p99_ms=sla_p99_ms)


_THROUGHPUT_CURVE: TypeAdapter[ThroughputCurve] = TypeAdapter(ThroughputCurve)


def parse_throughput_curve(document: Any) -> ThroughputCurve:
    """A curve from its document ``{"qps": [...], "measured": bool}``; pydantic's
    ValidationError names the bad field."""
    return _THROUGHPUT_CURVE.validate_python(document)


@dataclass(frozen=True)
class Tenant:
    name: str  # unique tenant name
    weight: float = 1.0  # entitlement w_i > 0
    criterion: Criterion = "prop_alpha"


@dataclass(frozen=True)
class Model:
    """A tenant's model with its SLA and weight; every seat it wins holds one replica."""

    model_id: str  # unique in the cluster
    tenant: str  # owning tenant's name
    artifact: str  # see allocator.cluster.plan.ModelReplica.artifact
    memory_mb: int  # memory of one replica; fits a seat only if ≤ memory_mb / seats of the GPU
    replicas_wanted: int  # at most this many seats are useful to the model
    sla_p99_ms: float  # the p99 latency bound its throughput is measured against
    demand_qps: float  # the traffic the tenant expects; throughput beyond it has no value
    # Profiles by GPU id; a GPU missing here uses ``estimate``.
    profiles: dict[str, ThroughputCurve] = field(default_factory=dict)
    estimate: ThroughputCurve = ThroughputCurve(qps=(1.0,), measured=False)
    # ω_m > 0: how the tenant divides its value among its models (docs/fairness.md,
    # "Per-model weights"); only the ratios between one tenant's models matter.
    weight: float = 1.0

    def curve(self, gpu: Gpu) -> ThroughputCurve:
        """The throughput curve on ``gpu`` within the model's SLA: its profile, else the
        estimate, through :func:`within_sla`."""
        return within_sla(self.profiles.get(gpu.gpu_id, self.estimate), self.sla_p99_ms)


@dataclass(frozen=True)
class ClusterSnapshot:
    tenants: tuple[Tenant, ...]
    models: tuple[Model, ...]
    gpus: tuple[Gpu, ...]
    objective: Objective = "utilitarian"
