"""The node plan: the one format the allocator emits, the API serves and the executor runs.

A plan says, for each device of one node, which model replica sits in each seat and which
streams serve it: one base stream, whole extra streams dedicated to it, and a weight in the
device's shared pool for its fractional remainder (docs/architecture.md §3.2). Plans are immutable
and versioned; the executor swaps an old version for a new one after draining in-flight queries.

``NodePlan.from_dict`` is the only parser of the format: the executor uses it for
``--plan FILE`` and for plans pulled from the API, so a malformed plan is refused with a
message naming the field, wherever it comes from. Benchmarks and tests that place seats by
hand build their documents with ``seat_entry`` and ``NodePlan.single_cpu_device``, which go
through the same parser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

PLAN_FORMAT = 1


class PlanError(ValueError):
    """A node plan document is malformed; the message names the offending field."""


@dataclass(frozen=True)
class ModelReplica:
    model_id: str  # the model this seat serves
    tenant: str  # the tenant that owns the model
    # Where the executor gets the weights: "zoo:<arch>?scale=<f>&seed=<n>[&user_tables=<n>]"
    # for the model zoo, "file:<path>" for a TorchScript file on the node, or
    # "api:<model_id>" for a TorchScript artifact uploaded to the API.
    artifact: str
    sla_p99_ms: float  # latency bound the executor's admission control protects


@dataclass(frozen=True)
class SeatPlan:
    seat: int  # seat index on the device, 0-based
    replica: ModelReplica | None  # None: the seat is empty
    dedicated_streams: int  # whole streams beyond the base stream, for this replica only
    pool_weight: float  # weight in the device's shared pool (fractional remainder of its share)


@dataclass(frozen=True)
class DevicePlan:
    device: str  # e.g. "cuda:0" or "cpu:0"
    kind: str  # "gpu" or "cpu"
    streams: int  # all streams of the device: seats + dedicated + shared pool
    shared_pool_streams: int  # streams served by weighted fair queueing on pool_weight
    seats: tuple[SeatPlan, ...]

    def pool_streams(self, seat: SeatPlan) -> float:
        """The seat's streams in the shared pool: the part of it that the seat's weight gets
        against the weights of the device's occupied seats (what the executor's fair queueing
        serves); 0 for an empty seat or a pool nobody weighs."""
        total = sum(s.pool_weight for s in self.seats if s.replica is not None)
        if seat.replica is None or total <= 0:
            return 0.0
        return self.shared_pool_streams * seat.pool_weight / total


@dataclass(frozen=True)
class NodePlan:
    node: str
    version: int  # increases with every new allocation; the executor never goes back
    allocation_id: int  # the allocation this plan was cut from (0 for a hand-written plan)
    devices: tuple[DevicePlan, ...]

    def replicas(self) -> list[tuple[DevicePlan, SeatPlan]]:
        """Every occupied seat with its device, in plan order."""
        return [(d, s) for d in self.devices for s in d.seats if s.replica is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> NodePlan:
        """Parse and validate a plan document; raise PlanError naming the bad field."""
        doc = _mapping(data, "plan")
        if doc.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise PlanError(f"plan.format: unsupported version {doc.get('format')!r}")
        devices = tuple(
            _parse_device(d, f"plan.devices[{k}]")
            for k, d in enumerate(_list(_field(doc, "devices", "plan"), "plan.devices"))
        )
        names = [d.device for d in devices]
        if len(set(names)) != len(names):
            raise PlanError("plan.devices: duplicate device names")
        return cls(
            node=_str(_field(doc, "node", "plan"), "plan.node"),
            version=_int(_field(doc, "version", "plan"), "plan.version", minimum=0),
            allocation_id=_int(doc.get("allocation_id", 0), "plan.allocation_id", minimum=0),
            devices=devices,
        )

    @classmethod
    def single_cpu_device(
        cls, seats: Sequence[dict[str, Any]], *, node: str, pool: int = 0, version: int = 1
    ) -> NodePlan:
        """A hand-written plan for one CPU device, ``cpu:0``, with exactly the streams it uses.

        For benchmarks and tests, which place seats by hand instead of asking the allocator:
        the device gets a base stream per seat, the seats' dedicated streams and ``pool``
        shared-pool streams, and no idle stream. The document goes through ``from_dict``, so a
        hand-written plan is validated like any other.
        """
        # A malformed count is left to from_dict, which names the field.
        dedicated = [s.get("dedicated_streams", 0) for s in seats]
        streams = len(seats) + pool + sum(d for d in dedicated if isinstance(d, int))
        return cls.from_dict(
            {
                "node": node,
                "version": version,
                "devices": [
                    {
                        "device": "cpu:0",
                        "kind": "cpu",
                        "streams": streams,
                        "shared_pool_streams": pool,
                        "seats": list(seats),
                    }
                ],
            }
        )


def seat_entry(
    index: int,
    *,
    model_id: str,
    tenant: str,
    artifact: str,
    sla_p99_ms: float,
    dedicated_streams: int = 0,
    pool_weight: float = 0.0,
) -> dict[str, Any]:
    """One occupied seat as a plan document entry, for ``NodePlan.single_cpu_device``.

    The fields are those of ``SeatPlan`` and ``ModelReplica``; it returns the document, not
    the dataclass, so that the plan is checked by the one parser when it is built.
    """
    return {
        "seat": index,
        "replica": {
            "model_id": model_id,
            "tenant": tenant,
            "artifact": artifact,
            "sla_p99_ms": sla_p99_ms,
        },
        "dedicated_streams": dedicated_streams,
        "pool_weight": pool_weight,
    }


def _parse_device(data: Any, where: str) -> DevicePlan:
    doc = _mapping(data, where)
    kind = _str(_field(doc, "kind", where), f"{where}.kind")
    if kind not in ("gpu", "cpu"):
        raise PlanError(f"{where}.kind: expected 'gpu' or 'cpu', got {kind!r}")
    seats = tuple(
        _parse_seat(s, f"{where}.seats[{k}]")
        for k, s in enumerate(_list(_field(doc, "seats", where), f"{where}.seats"))
    )
    streams = _int(_field(doc, "streams", where), f"{where}.streams", minimum=1)
    pool = _int(_field(doc, "shared_pool_streams", where), f"{where}.shared_pool_streams", 0)
    used = len(seats) + pool + sum(s.dedicated_streams for s in seats)
    if used > streams:
        raise PlanError(f"{where}: seats, dedicated and pool streams ({used}) exceed {streams}")
    if len({s.seat for s in seats}) != len(seats):
        raise PlanError(f"{where}.seats: duplicate seat indices")
    return DevicePlan(
        device=_str(_field(doc, "device", where), f"{where}.device"),
        kind=kind,
        streams=streams,
        shared_pool_streams=pool,
        seats=seats,
    )


def _parse_seat(data: Any, where: str) -> SeatPlan:
    doc = _mapping(data, where)
    replica_doc = doc.get("replica")
    replica = None
    if replica_doc is not None:
        r = _mapping(replica_doc, f"{where}.replica")
        replica = ModelReplica(
            model_id=_str(_field(r, "model_id", f"{where}.replica"), f"{where}.replica.model_id"),
            tenant=_str(_field(r, "tenant", f"{where}.replica"), f"{where}.replica.tenant"),
            artifact=_str(_field(r, "artifact", f"{where}.replica"), f"{where}.replica.artifact"),
            sla_p99_ms=_number(
                _field(r, "sla_p99_ms", f"{where}.replica"), f"{where}.replica.sla_p99_ms"
            ),
        )
        if replica.sla_p99_ms <= 0:
            raise PlanError(f"{where}.replica.sla_p99_ms: must be positive")
    weight = _number(doc.get("pool_weight", 0.0), f"{where}.pool_weight")
    if weight < 0:
        raise PlanError(f"{where}.pool_weight: must be non-negative, got {weight}")
    return SeatPlan(
        seat=_int(_field(doc, "seat", where), f"{where}.seat", minimum=0),
        replica=replica,
        dedicated_streams=_int(doc.get("dedicated_streams", 0), f"{where}.dedicated_streams", 0),
        pool_weight=weight,
    )


def _field(doc: dict[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        raise PlanError(f"{where}.{key}: missing")
    return doc[key]


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PlanError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise PlanError(f"{where}: expected a list, got {type(value).__name__}")
    return list(value)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PlanError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"{where}: expected an integer ≥ {minimum}, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PlanError(f"{where}: expected a number, got {value!r}")
    return float(value)
