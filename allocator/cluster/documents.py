"""The cluster document that ``gpufair allocate`` reads (TOML or JSON) as a ClusterSnapshot.

Tenants, models with their throughput curves, and GPUs (examples/cluster.toml); a malformed
document is refused with an InstanceError naming the bad field (the CLI prints that one line).
The core instance's document has its own parser, allocator.documents.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from allocator.cluster.snapshot import (
    ClusterSnapshot,
    Gpu,
    Model,
    Tenant,
    ThroughputCurve,
    parse_throughput_curve,
)
from allocator.criteria import CRITERIA
from allocator.errors import InstanceError, first_error
from allocator.objectives import OBJECTIVES


def snapshot_from_dict(doc: Any) -> ClusterSnapshot:
    """Parse a cluster document (``gpufair allocate``'s TOML/JSON); InstanceError if bad."""
    if not isinstance(doc, dict):
        raise InstanceError("cluster: expected an object with tenants, models and gpus")
    try:
        tenants = tuple(
            Tenant(name=str(t["name"]), weight=float(t.get("weight", 1.0)),
                   criterion=t.get("criterion", "prop_alpha"))
            for t in _list(doc.get("tenants"), "tenants")
        )
        gpus = tuple(
            Gpu(node=str(g["node"]), device=str(g["device"]), kind=g.get("kind", "gpu"),
                memory_mb=int(g["memory_mb"]), seats=int(g["seats"]), streams=int(g["streams"]))
            for g in _list(doc.get("gpus"), "gpus")
        )
        models = tuple(_model(m) for m in _list(doc.get("models", []), "models"))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, InstanceError):
            raise
        raise InstanceError(f"cluster: missing or malformed field {exc}") from exc
    for t in tenants:
        if t.criterion not in CRITERIA:
            raise InstanceError(f"tenant {t.name!r}: unknown criterion {t.criterion!r}")
        if not t.weight > 0:
            raise InstanceError(f"tenant {t.name!r}: weight must be positive")
    objective = doc.get("objective", "utilitarian")
    if objective not in OBJECTIVES:
        raise InstanceError(f"objective: unknown {objective!r}")
    return ClusterSnapshot(tenants=tenants, models=models, gpus=gpus, objective=objective)


def _curve(doc: Any, where: str) -> ThroughputCurve:
    try:
        return parse_throughput_curve(doc)
    except ValidationError as exc:
        raise InstanceError(first_error(exc, where)) from None


def _model(doc: Any) -> Model:
    if not isinstance(doc, dict):
        raise InstanceError("models: expected objects")
    where = f"model {doc.get('model_id')!r}"
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict):
        raise InstanceError(f"{where}.profiles: expected a table of GPU id -> curve")
    return Model(
        model_id=str(doc["model_id"]),
        tenant=str(doc["tenant"]),
        artifact=str(doc["artifact"]),
        memory_mb=int(doc["memory_mb"]),
        replicas_wanted=int(doc["replicas_wanted"]),
        sla_p99_ms=float(doc["sla_p99_ms"]),
        demand_qps=float(doc["demand_qps"]),
        profiles={g: _curve(c, f"{where}.profiles[{g!r}]") for g, c in profiles.items()},
        estimate=_curve(doc.get("estimate", {"qps": [1.0]}), f"{where}.estimate"),
        weight=float(doc.get("weight", 1.0)),
    )


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InstanceError(f"{where}: expected a list, got {type(value).__name__}")
    return value
