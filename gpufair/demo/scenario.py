"""The demo's scenario file (``examples/demo.toml``), read into typed objects.

A scenario names the nodes the demo starts (each served by one ``gpufair executor``: ``fake``
for simulated GPUs, whose service times are the fake backend's, ``torch`` for this machine's
real CPU), their devices, the tenants with one model each, the rate the demo sends each model,
the flood and the thresholds of the summary's claims. It also says how fast one stream of
each device serves each model, which each node uploads for the models its plan seats, as the
models' throughput curves (docs/architecture.md §3.4), so the allocator plans with what the
devices really do:

* on a simulated GPU, one stream serves a query of ``K`` candidates in ``batch_us + row_us·K``
  microseconds (the node's fake backend, executor/fake.py); with the mean ``K`` of the workload
  (docs/architecture.md §5) that is the stream's capacity, exactly;
* on the CPU, the device's ``stream_qps`` (a figure measured once, named in the file).

The curve is ``UTILISATION`` of that capacity per stream (queueing keeps p99 within the SLA
only below full load). Each tenant has one model, so a tenant's served fraction of demand (the
allocator's value, docs/architecture.md §2) times its demand is its expected QPS.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from allocator.criteria import CRITERIA
from allocator.objectives import OBJECTIVES
from gpufair.inputs import InputError, read_text
from gpufair.loadgen import QUERY_SIZES

MEAN_CANDIDATES = sum(QUERY_SIZES) / len(QUERY_SIZES)
# A stream planned at 70 % of its capacity keeps Poisson queueing well inside the SLA.
UTILISATION = 0.7

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# TOML spells inf and nan: a number that bounds or scales something must be finite, or a claim
# holds vacuously (an infinite tolerance) and a rate or a service time means nothing.
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ScenarioError(ValueError):
    """The scenario file cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Device(_Strict):
    device: str
    kind: Literal["gpu", "cpu"]
    memory_mb: Annotated[int, Field(gt=0)]
    seats: Annotated[int, Field(ge=1)]
    streams: Annotated[int, Field(ge=1)]
    stream_qps: Positive | None = Field(
        default=None, description="a torch node's device: queries per second of one stream")

    @model_validator(mode="after")
    def _streams_cover_seats(self) -> Device:
        if self.streams < self.seats:
            raise ValueError(f"{self.device}: streams ({self.streams}) below seats ({self.seats})")
        return self


class Node(_Strict):
    name: str
    backend: Literal["fake", "torch"]
    row_us: NonNegative = Field(
        default=20.0, description="a fake node: service time per candidate row, µs")
    batch_us: NonNegative = Field(
        default=200.0, description="a fake node: service time per batch, µs")
    devices: Annotated[list[Device], Field(min_length=1)]

    @model_validator(mode="after")
    def _torch_devices_are_measured(self) -> Node:
        for device in self.devices:
            if self.backend == "torch" and device.stream_qps is None:
                raise ValueError(f"node {self.name}, {device.device}: stream_qps is required "
                                 "on a torch node")
        # A stream's capacity is 1 / (batch_us + row_us × K): a query that takes no time would
        # give an infinite throughput curve (a division by zero once the API is up).
        if self.backend == "fake" and self.batch_us + self.row_us * MEAN_CANDIDATES <= 0:
            raise ValueError(f"node {self.name}: row_us and batch_us are both 0; a query must "
                             "take some time")
        return self

    def executor_flags(self) -> list[str]:
        """How ``gpufair executor`` serves this node's devices."""
        if self.backend == "fake":
            return ["--backend", "fake", "--fake-row-us", f"{self.row_us:g}",
                    "--fake-batch-us", f"{self.batch_us:g}"]
        return ["--device", "cpu"]


class ModelSpec(_Strict):
    name: str
    artifact: str
    memory_mb: Annotated[int, Field(gt=0)]
    replicas_wanted: Annotated[int, Field(ge=1)]
    sla_p99_ms: Positive
    demand_qps: Positive
    rate_qps: Positive = Field(description="what the demo sends in the steady phase")


class Tenant(_Strict):
    name: str
    weight: Positive = 1.0
    criterion: str = "prop_alpha"
    model: ModelSpec

    @model_validator(mode="after")
    def _known_criterion(self) -> Tenant:
        if self.criterion not in CRITERIA:
            raise ValueError(f"tenant {self.name}: unknown criterion {self.criterion!r}")
        return self


class Claims(_Strict):
    """Thresholds of the summary's claims."""

    required_attainment: Annotated[float, Field(gt=0, le=1)] = Field(
        description="every other tenant's SLA attainment during the flood is at least this")
    throttle_tolerance: NonNegative = Field(
        description="the flooder's served rate is at most (1 + this) × its share's capacity")


class Scenario(_Strict):
    duration_s: Positive
    seed: int = 0
    flood_tenant: str
    flood_factor: Annotated[float, Field(gt=1, allow_inf_nan=False)]
    objective: str = "utilitarian"
    claims: Claims
    nodes: Annotated[list[Node], Field(min_length=1)]
    tenants: Annotated[list[Tenant], Field(min_length=2)]

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenant names must be unique")
        if self.flood_tenant not in names:
            raise ValueError(f"flood_tenant {self.flood_tenant!r} is not a tenant")
        if len({n.name for n in self.nodes}) != len(self.nodes):
            raise ValueError("node names must be unique")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        return self

    def tenant(self, name: str) -> Tenant:
        return next(t for t in self.tenants if t.name == name)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def device(self, node: str, device: str) -> Device:
        return next(d for d in self.node(node).devices if d.device == device)

    def entitlement(self) -> dict[str, float]:
        """Each tenant's weight over all weights: its entitled fraction of the cluster."""
        total = sum(t.weight for t in self.tenants)
        return {t.name: t.weight / total for t in self.tenants}

    def stream_rows_s(self, node: str, device: str) -> float:
        """Candidate rows per second one stream of the device scores at full load."""
        return self.stream_qps(node, device) * MEAN_CANDIDATES

    def stream_qps(self, node: str, device: str) -> float:
        """Queries per second one stream of the device serves at full load."""
        spec = self.node(node)
        if spec.backend == "fake":
            return 1e6 / (spec.batch_us + spec.row_us * MEAN_CANDIDATES)
        qps = self.device(node, device).stream_qps
        assert qps is not None  # Node's validator
        return qps

    def curve(self, node: str, device: str) -> list[float]:
        """Any model's throughput curve on the device, as uploaded: qps[s-1] for s streams."""
        per_stream = self.stream_qps(node, device)
        streams = self.device(node, device).streams
        return [round(UTILISATION * per_stream * s, 3) for s in range(1, streams + 1)]


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file; ScenarioError with one line when it is unusable."""
    try:
        document = tomllib.loads(read_text(path))
    except InputError as exc:
        raise ScenarioError(str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return Scenario.model_validate(document)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ScenarioError(f"{path}: {where + ': ' if where else ''}{error['msg']}") from None
