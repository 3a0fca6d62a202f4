"""Request and response bodies: one family per resource (``Base/Create/Update/Public``).

Every field is typed and bounded, so FastAPI answers a bad field with 422 naming it before any
service code runs; numbers must be finite (``1e999`` parses to infinity in JSON libraries).
``extra="forbid"`` on inputs turns a misspelt field into an error rather than a silent no-op,
and ``strict=True`` makes a number field take JSON numbers only: ``true`` is not 1 and
``"3.5"`` is not 3.5 (a client that sends them has a bug the API should show it), while an
integer is still a valid float.

The bodies of the seams are not defined here but imported from their one definition, which the
other side uses too: the heartbeat (:mod:`executor.wire.heartbeat`) and the profile upload
(:mod:`executor.wire.profiles`), which the daemon builds, and the certificate's document
(:class:`allocator.CertificateDocument`), which the allocator builds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from allocator import (
    AgentCertificateDocument,
    CertificateDocument,
    Criterion,
    ModelShare,
    Objective,
)
from api.models import as_utc
from executor.wire.artifact import PREFIX as ZOO_PREFIX
from executor.wire.artifact import parse_zoo_artifact
from executor.wire.heartbeat import Heartbeat
from executor.wire.names import MAX_ID, NAME_PATTERN, DeviceName

Name = Annotated[str, Field(pattern=NAME_PATTERN, examples=["ads-ranking"])]
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]

UPLOAD_ARTIFACT = "api"


def _zoo_or_upload(value: str) -> str:
    """Accept ``api`` (an upload follows) or a zoo reference the executor builds.

    The zoo reference is checked by the executor's own parser (:mod:`executor.wire.artifact`),
    so the API stores exactly the references an executor can build; its ZooError is a
    ValueError, which pydantic turns into the 422 naming the field and quoting the reason.
    """
    if value == UPLOAD_ARTIFACT:
        return value
    if not value.startswith(ZOO_PREFIX):
        raise ValueError(
            f"artifact {value!r}: expected {UPLOAD_ARTIFACT!r} (an upload follows) or "
            f"'{ZOO_PREFIX}<arch>[?key=value&...]'"
        )
    parse_zoo_artifact(value)
    return value


ArtifactRef = Annotated[
    str,
    Field(max_length=200, examples=["zoo:rmc1?scale=0.1&seed=0"]),
    AfterValidator(_zoo_or_upload),
]


# A point in time as replies state it: ISO 8601 with its UTC offset, on every backend.
Moment = Annotated[datetime, AfterValidator(as_utc)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- errors ----------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="what went wrong, for programs (api.errors)",
                      examples=["invalid"])
    message: str = Field(description="what went wrong, for people",
                         examples=["devices[0].seats: Input should be less than or equal to 64"])
    field: str | None = Field(
        default=None,
        description="the input at fault: a body field, query.x, path.x or a header",
        examples=["devices[0].seats"],
    )


class ErrorBody(BaseModel):
    """Every error reply's body (api.errors): one shape for every status."""

    error: ErrorDetail


# --- tenants ---------------------------------------------------------------------------------


class TenantBase(_In):
    weight: Annotated[float, Field(ge=1e-6, le=1e6, allow_inf_nan=False)] = 1.0
    criterion: Criterion = "prop_alpha"


class TenantCreate(TenantBase):
    name: Name


class TenantUpdate(_In):
    """What the admin may change; the name is the tenant's identity in plans and stays."""

    weight: Annotated[float, Field(ge=1e-6, le=1e6, allow_inf_nan=False)] | None = None
    criterion: Criterion | None = None


class TenantSelfUpdate(_In):
    """What a tenant may change about itself: its fairness criterion, not its weight."""

    criterion: Criterion | None = None


class TenantPublic(_Out):
    id: int
    name: str
    weight: float
    criterion: str
    revision: int
    created_at: Moment


# A key's expiry and a rotation's grace are bounded: a year, and a week.
MAX_KEY_LIFETIME_S = 366 * 86400
MAX_GRACE_S = 7 * 86400


KeyScope = Literal["tenant", "inference"]


class InferenceKeyCreate(_In):
    expires_in_s: Annotated[int, Field(ge=60, le=MAX_KEY_LIFETIME_S)] | None = Field(
        default=None,
        description="the key is refused this many seconds after it is issued; null: never",
    )


class ApiKeyCreate(InferenceKeyCreate):
    scope: KeyScope = Field(
        default="tenant",
        description="tenant: an API key (control plane and queries); inference: queries only",
    )


class ApiKeyRotate(_In):
    grace_s: Annotated[int, Field(ge=0, le=MAX_GRACE_S)] = Field(
        default=0,
        description="how long the key this request presents keeps working; 0: revoked now",
    )


class ApiKeyPublic(_Out):
    id: int
    tenant_id: int
    prefix: str
    scope: KeyScope = Field(
        description="tenant: an API key (control plane and queries); inference: queries only"
    )
    created_at: Moment
    revoked_at: Moment | None
    expires_at: Moment | None = Field(description="refused from then on; null: never")


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="the API key; shown once, only its hash is stored")


# --- models ----------------------------------------------------------------------------------


# ω_m: the model's part of its tenant's value, relative to the tenant's other models; the tenant
# may set it, as it divides only the tenant's own entitlement (docs/fairness.md, "Per-model
# weights").
ModelWeight = Annotated[
    float,
    Field(
        ge=1e-6,
        le=1e6,
        allow_inf_nan=False,
        description="ω_m: how the tenant's value is divided among its models (relative to its "
        "other models' weights; 1 each: an equal split)",
    ),
]


# The traffic the model expects: positive, since a model's value is the fraction of its demand
# it is served (docs/fairness.md), which a demand of 0 leaves undefined; the allocator refuses
# such a model (allocator.cluster.instance), so the API refuses it first, naming the field.
DemandQps = Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)]


class ModelBase(_In):
    artifact: ArtifactRef
    memory_mb: Annotated[int, Field(ge=1, le=10_000_000)]
    replicas_wanted: Annotated[int, Field(ge=1, le=1024)] = 1
    sla_p99_ms: Annotated[float, Field(gt=0, le=600_000, allow_inf_nan=False)]
    demand_qps: DemandQps
    weight: ModelWeight = 1.0


class ModelCreate(ModelBase):
    name: Name


class ModelUpdate(_In):
    name: Name | None = None
    artifact: ArtifactRef | None = None
    memory_mb: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    replicas_wanted: Annotated[int, Field(ge=1, le=1024)] | None = None
    sla_p99_ms: Annotated[float, Field(gt=0, le=600_000, allow_inf_nan=False)] | None = None
    demand_qps: DemandQps | None = None
    weight: ModelWeight | None = None


class ModelPublic(_Out):
    id: int
    tenant_id: int
    name: str
    artifact: str = Field(description="zoo reference, or api:<id> for an uploaded TorchScript")
    memory_mb: int
    replicas_wanted: int
    sla_p99_ms: float
    demand_qps: float
    weight: float = Field(description="ω_m: its part of the tenant's value, relative to the "
                          "tenant's other models")
    revision: int
    created_at: Moment
    ready: bool = Field(description="false while an api: artifact awaits its upload")


class ArtifactPublic(_Out):
    model_id: int
    sha256: str
    size_bytes: int
    uploaded_at: Moment


# --- nodes -----------------------------------------------------------------------------------


class DeviceSpec(_In):
    device: DeviceName
    kind: Literal["gpu", "cpu"]
    memory_mb: Annotated[int, Field(ge=1, le=10_000_000)]
    streams: Annotated[int, Field(ge=1, le=1024)]
    seats: Annotated[int, Field(ge=1, le=64)]

    @model_validator(mode="after")
    def _seats_have_streams(self) -> DeviceSpec:
        if self.seats > self.streams:
            raise ValueError(f"seats ({self.seats}) exceed streams ({self.streams})")
        return self


class NodeCreate(_In):
    name: Name
    devices: Annotated[list[DeviceSpec], Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _unique_devices(self) -> NodeCreate:
        names = [d.device for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError("device names must be unique within a node")
        return self


class DevicePublic(_Out):
    device: str
    kind: str
    memory_mb: int
    streams: int
    seats: int


class NodePublic(_Out):
    id: int
    name: str
    devices: list[DevicePublic]
    created_at: Moment
    last_heartbeat_at: Moment | None
    running_version: int | None = Field(description="plan version in the last heartbeat")
    report: Heartbeat | None = Field(description="the last heartbeat's body")


class NodeCreated(NodePublic):
    token: str = Field(description="the node token; shown once, only its hash is stored")


class HeartbeatReply(BaseModel):
    current_version: int = Field(description="the version of the node's newest plan")
    etag: str


class ProfilesStored(BaseModel):
    stored: int


# --- allocations -----------------------------------------------------------------------------


class AllocationCreate(_In):
    objective: Objective | None = None


class AllocationSummary(_Out):
    id: int
    version: int
    objective: str
    created_at: Moment
    solve_seconds: float


class AllocationPublic(AllocationSummary):
    certificate: CertificateDocument
    nodes: list[str]


class ReplicaRef(BaseModel):
    model_id: str
    tenant: str


class SeatMove(BaseModel):
    node: str
    device: str
    seat: int
    before: ReplicaRef | None
    after: ReplicaRef | None


class ShareChange(BaseModel):
    tenant: str
    node: str
    device: str
    before: float = Field(description="streams of the device serving the tenant, before")
    after: float


class AllocationDiff(BaseModel):
    from_id: int
    to_id: int
    seat_moves: list[SeatMove]
    share_changes: list[ShareChange]


class TenantSeat(BaseModel):
    node: str
    device: str
    seat: int
    model_id: str
    dedicated_streams: int
    pool_streams: float = Field(description="its share of the device's shared pool, in streams")


class TenantShare(BaseModel):
    node: str
    device: str
    streams: float = Field(description="base + dedicated + pool streams serving the tenant")
    fraction: float = Field(description="streams / all streams of the device")


class TenantAllocation(BaseModel):
    allocation_id: int
    version: int
    tenant: str
    seats: list[TenantSeat]
    shares: list[TenantShare]
    certificate: AgentCertificateDocument = Field(
        description="the tenant's own certificate row; the other tenants in its envy are "
        '"other-1", "other-2", … (in name order)'
    )
    models: dict[str, ModelShare] = Field(
        description="per model id, its part of the tenant's bundle (docs/fairness.md, "
        '"Per-model weights"); empty for allocations stored before models had weights'
    )


# --- SLA attainment over time ----------------------------------------------------------------


class SlaBucket(BaseModel):
    start: Moment = Field(description="the bucket covers [start, start + bucket_s)")
    received: int = Field(description="queries the tenant's replicas received in the bucket")
    within_sla: int = Field(description="of those, answered within the model's SLA")
    attainment: float | None = Field(
        description="within_sla / received (at most 1); null when nothing was received: a gap"
    )


class ModelSla(BaseModel):
    """One model of a tenant over the live daemons' last minute (their heartbeats' ``served``
    rows): served rate and p99 latency against the model's SLA."""

    model_id: int
    model: str | None = Field(description="the model's name; null once it has been deleted")
    sla_ms: float | None = Field(description="the model's p99 SLA; null once it has been deleted")
    window_s: float | None = Field(
        description="the window of these figures: the longest of the live nodes' (each "
        "daemon reports its last 55-60 s); null: no live node reported a query for the model"
    )
    received: int = Field(description="queries the live nodes received in their windows")
    within_sla: int = Field(description="of those, answered within the SLA")
    attainment: float | None = Field(
        description="within_sla / received (at most 1); null: nothing received"
    )
    served_qps: float = Field(
        description="queries answered within the SLA per second: each node's within_sla over "
        "its window, summed over the nodes"
    )
    p99_ms: float | None = Field(
        description="99th-percentile latency of the answered queries (arrival to scores), at "
        "most 9 % above the exact figure; with several nodes the highest of theirs (the p99 of "
        "all of them is no higher); null: nothing answered"
    )
    nodes: int = Field(description="live nodes that reported queries for the model")


class SlaSeries(BaseModel):
    tenant: str
    received: int = Field(description="over the whole window")
    within_sla: int
    attainment: float | None = Field(description="over the whole window; null: no traffic")
    buckets: list[SlaBucket] = Field(description="oldest first, every bucket of the window")
    models: list[ModelSla] = Field(
        default=[],
        description="per model, over the live daemons' last minute (not the series' window): "
        "served rate and p99 against the SLA, by model id",
    )


class SlaHistory(BaseModel):
    start: Moment
    end: Moment
    bucket_s: float
    tenants: list[SlaSeries] = Field(description="sorted by tenant name")
