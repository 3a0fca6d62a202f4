"""The heartbeat: what a daemon reports to the control plane, one model for both sides.

Every ``heartbeat_s`` the daemon posts ``POST /v1/nodes/{node}/heartbeat``: the plan version it
serves, the URL it is reached at, each replica's counters and measured memory, the models it
could not load (and why), the newest plan it refused for want of memory (and why), its
cumulative SLA counts per (tenant, model), and per (tenant, model) what it served over its last
minute (:class:`ServedWindow`: counts, served rate and p99 latency over a stated window).
``executor/plan_client.py`` builds a :class:`Heartbeat` and sends its
``model_dump(mode="json")``; the API takes the same model as the route's body, so a heartbeat
the daemon could not have built is a 422 naming the field, stores the dump as the node's report
and reads stored reports back with :func:`parse_heartbeat`. The daemon's SLA tallies
(``ExecutorMetrics.sla_tallies``) are :class:`SlaCount` rows themselves, its served windows
:class:`ServedWindow` rows.

Every list, string and number is bounded and no model takes keys it does not name, so one
report stays a small row (the API stores it and serves it back whole in ``GET /v1/nodes``); the
daemon keeps within the bounds (it clips a load error to :data:`MAX_REASON_CHARS`), since a
heartbeat the model refuses is never sent.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
)

from executor.wire.names import MAX_ID

# Cumulative query counts are bounded so that a sample (the sum over up to 4096 models of one
# tenant) always fits a 64-bit integer: 4096 * 2**48 = 2**60. 2**48 queries is nine years at a
# million queries a second for one daemon process.
MAX_COUNT = 2**48
MAX_ENTRIES = 4096  # replicas, broken models and SLA rows, each
MAX_REASON_CHARS = 2000  # why a model is not served
# A replica's measured memory (MiB), bounded as a device's is when the admin registers it.
MAX_MEMORY_MB = 10_000_000
# The longest window a daemon may report its served rate and p99 over (the daemon's is a minute).
MAX_WINDOW_S = 3600.0


class ReplicaReport(BaseModel):
    """One replica's counters since its plan was applied.

    Unknown keys are refused like everywhere in the heartbeat: the API stores the report and
    serves it back, so a key no field bounds would let a node store anything up to the body
    limit. A counter a newer daemon adds is added here first, the one model both sides use.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Annotated[str, Field(max_length=32)]
    seat: Annotated[int, Field(ge=0, le=MAX_ID)]
    model_id: Annotated[str, Field(max_length=32)]
    tenant: Annotated[str, Field(max_length=64)]
    in_flight: Annotated[int, Field(ge=0, le=MAX_ID)] = 0
    completed: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    rejected: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    expired: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    # Seconds of stream time the replica's queries took (own and pool streams together).
    busy_s: Annotated[float, Field(ge=0, le=MAX_COUNT, allow_inf_nan=False)] = 0.0
    # Device memory the replica's weights took when they loaded (shared by the replicas of
    # one artifact on one device, each of which reports it).
    memory_mb: Annotated[float, Field(ge=0, le=MAX_MEMORY_MB, allow_inf_nan=False)] = 0.0


class RefusedPlan(BaseModel):
    """A plan from the API the daemon did not apply, and why (it serves the one before)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Annotated[int, Field(ge=0, le=MAX_ID)]
    reason: Annotated[str, Field(max_length=MAX_REASON_CHARS)]


class SlaCount(BaseModel):
    """One (tenant, model)'s query counts since the daemon process started (they only grow
    until it restarts; the API turns them into per-heartbeat deltas, api/services/sla.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: Annotated[str, Field(min_length=1, max_length=64)]
    model: Annotated[str, Field(min_length=1, max_length=64)]
    received: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    within_sla: Annotated[int, Field(ge=0, le=MAX_COUNT)]

    @field_validator("within_sla")
    @classmethod
    def _within_received(cls, value: int, info: ValidationInfo) -> int:
        received = info.data.get("received")
        if received is not None and value > received:
            raise ValueError(f"within_sla ({value}) exceeds received ({received})")
        return value


class ServedWindow(BaseModel):
    """What one (tenant, model) was served over the daemon's last ``window_s`` seconds
    (executor/metrics.py keeps a minute in fixed slots): the queries received, those answered
    within the SLA and all those answered, and the p99 latency of the answered ones.

    Attainment over the window is ``within_sla / received`` (executor/wire/attainment.py), the
    served rate ``within_sla / window_s`` (queries answered within the SLA per second, as the
    dashboard's tenants panel defines it). ``p99_ms`` is the nearest-rank 99th percentile of
    the answered queries' latencies, arrival to scores, read from a histogram whose buckets are
    2^(1/8) (9 %) wide, capped by the slowest answer: at most 9 % above the exact figure, never
    below it; null when nothing was answered."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: Annotated[str, Field(min_length=1, max_length=64)]
    model: Annotated[str, Field(min_length=1, max_length=64)]
    window_s: Annotated[float, Field(gt=0, le=MAX_WINDOW_S, allow_inf_nan=False)]
    received: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    within_sla: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    answered: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    p99_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        default=None, validate_default=True
    )

    @field_validator("within_sla", "answered")
    @classmethod
    def _within_received(cls, value: int, info: ValidationInfo) -> int:
        received = info.data.get("received")
        if received is not None and value > received:
            raise ValueError(f"{info.field_name} ({value}) exceeds received ({received})")
        return value

    @field_validator("p99_ms")
    @classmethod
    def _p99_of_answers(cls, value: float | None, info: ValidationInfo) -> float | None:
        answered = info.data.get("answered")
        if answered is not None and (value is None) != (answered == 0):
            raise ValueError("p99_ms is given exactly when some query was answered")
        return value


_Keyed = TypeVar("_Keyed", SlaCount, ServedWindow)


def _unique_sla_keys(entries: list[_Keyed]) -> list[_Keyed]:
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        key = (entry.tenant, entry.model)
        if key in seen:
            raise ValueError(f"tenant {entry.tenant!r}, model {entry.model!r} is listed twice")
        seen.add(key)
    return entries


# A daemon's advertised URL: scheme, host and port, no path (routers append /v2/models/...).
ADVERTISED_URL = r"^https?://[^\s/]+$"
MAX_URL_CHARS = 256


class Heartbeat(BaseModel):
    """One heartbeat body, as the daemon sends it and the API stores it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan_version: Annotated[int, Field(ge=0, le=MAX_ID)] | None = Field(
        default=None, description="the plan version the daemon serves"
    )
    url: Annotated[str, Field(max_length=MAX_URL_CHARS, pattern=ADVERTISED_URL)] | None = Field(
        default=None,
        description="where routers and clients reach this daemon (its --advertise-url); the "
        "routing table (GET /v1/routes) lists its replicas under it",
    )
    replicas: Annotated[list[ReplicaReport], Field(max_length=MAX_ENTRIES)] = []
    broken: dict[
        Annotated[str, Field(max_length=32)], Annotated[str, Field(max_length=MAX_REASON_CHARS)]
    ] = Field(default={}, max_length=MAX_ENTRIES, description="model id -> why it is not served")
    refused: RefusedPlan | None = Field(
        default=None,
        description="the newest plan the daemon did not apply since it last applied one (its "
        "replicas exceed a device's memory, an artifact of it could not be fetched, it does not "
        "parse, names another node or is not newer); it serves plan_version meanwhile",
    )
    sla: Annotated[
        list[SlaCount],
        Field(max_length=MAX_ENTRIES),
        AfterValidator(_unique_sla_keys),
    ] = Field(
        default=[],
        description="per (tenant, model): queries received and answered within the SLA since "
        "the daemon started; a count below the previous heartbeat's means it restarted",
    )
    served: Annotated[
        list[ServedWindow],
        Field(max_length=MAX_ENTRIES),
        AfterValidator(_unique_sla_keys),
    ] = Field(
        default=[],
        description="per (tenant, model) with queries in the window: what the daemon served "
        "over its last window_s seconds (counts, p99 latency)",
    )


_HEARTBEAT: TypeAdapter[Heartbeat] = TypeAdapter(Heartbeat)


def parse_heartbeat(document: Any) -> Heartbeat:
    """A heartbeat from its JSON document (a body, or a report the API stored); pydantic's
    ValidationError names the bad field."""
    return _HEARTBEAT.validate_python(document)
