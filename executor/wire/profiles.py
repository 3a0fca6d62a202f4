"""The profile upload: measured throughput curves a daemon sends, one model for both sides.

After each applied plan the daemon sends ``PUT /v1/nodes/{node}/profiles`` with one
:class:`ProfileEntry` per (model, device) that a curve of its profile file covers, with the p99
bound the curve was measured against (``executor.profiles.plan_profiles`` builds them) and one
:class:`FootprintEntry` per (model, device) whose replica it loaded, with the memory it measured
(``executor.profiles.plan_footprints``; after a plan refused for memory, the footprints it
predicted, exact for zoo models). The API takes :class:`ProfilesPut` as the route's body, so an
entry the daemon could not have built is a 422 naming the field, stores each entry, and solves
with the largest footprint of a model in place of the memory its tenant declared.

The curve itself is not defined here: ``qps`` is the allocator's :data:`allocator.QpsCurve`,
the rule of :class:`allocator.ThroughputCurve`, because the allocator consumes the curves (as
q_m(g, s) in place of its estimate, docs/architecture.md §2) and may not import the executor.
So the profile file, this upload and the snapshot the API solves on hold curves of one
definition; the API turns a stored entry into a measured ``ThroughputCurve`` in one place, when
it reads the snapshot (``api.services.allocations.read_solve_input``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from allocator import QpsCurve
from executor.wire.names import MAX_ID, DeviceName

MAX_ENTRIES = 4096


class ProfileEntry(BaseModel):
    """The measured curve of one model on one device of the node."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    device: DeviceName
    qps: QpsCurve
    # The p99 bound the curve was measured against: the allocator translates it to the model's
    # SLA (allocator.cluster.snapshot.within_sla). Omitted by daemons from before the field:
    # then the curve is taken as measured at the model's own SLA.
    sla_p99_ms: Annotated[float, Field(gt=0, le=600_000, allow_inf_nan=False)] | None = None


class FootprintEntry(BaseModel):
    """The memory one replica of a model takes on one device of the node."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    device: DeviceName
    memory_mb: Annotated[int, Field(ge=1, le=MAX_ID)]  # MiB, rounded up


class ProfilesPut(BaseModel):
    """The body of ``PUT /v1/nodes/{node}/profiles``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profiles: Annotated[list[ProfileEntry], Field(max_length=MAX_ENTRIES)]
    footprints: Annotated[list[FootprintEntry], Field(max_length=MAX_ENTRIES)] = []


_PROFILES_PUT: TypeAdapter[ProfilesPut] = TypeAdapter(ProfilesPut)


def parse_profiles_put(document: Any) -> ProfilesPut:
    """An upload body from its JSON document; pydantic's ValidationError names the bad field."""
    return _PROFILES_PUT.validate_python(document)
