"""Plans and queries shared by the executor's scheduling, fairness and daemon tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from allocator.cluster.plan import NodePlan, seat_entry
from executor.features import Query
from executor.models.schema import ModelSchema


def seat(
    index: int,
    model_id: str,
    *,
    artifact: str | None = None,
    tenant: str | None = None,
    sla_ms: float = 1000.0,
    dedicated: int = 0,
    weight: float = 1.0,
) -> dict[str, Any]:
    """A seat entry whose fake model and tenant are named after ``model_id`` unless told."""
    return seat_entry(
        index,
        model_id=model_id,
        tenant=tenant or f"tenant-{model_id}",
        artifact=artifact or f"fake:{model_id}",
        sla_p99_ms=sla_ms,
        dedicated_streams=dedicated,
        pool_weight=weight,
    )


def plan(seats: list[dict[str, Any]], *, pool: int = 0, version: int = 1) -> NodePlan:
    """A one-device CPU plan of node ``node-a`` with exactly the streams its seats and pool use."""
    return NodePlan.single_cpu_device(seats, node="node-a", pool=pool, version=version)


def queries(schema: ModelSchema, sizes: list[int], seed: int) -> list[Query]:
    rng = np.random.default_rng(seed)
    return [schema.random_query(rng, k) for k in sizes]
