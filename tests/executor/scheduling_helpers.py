"""Plans and queries shared by the executor's scheduling, fairness and daemon tests."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from allocator.cluster.plan import NodePlan, seat_entry
from executor.fake import FAKE_SCHEMA, FakeBackend, FakeModel
from executor.features import Query
from executor.models.schema import ModelSchema
from executor.scheduling import DeviceScheduler, SchedulerConfig, SessionGroup


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


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def device(
    seats: list[dict[str, Any]], *, pool: int = 0, config: SchedulerConfig, clock: FakeClock
) -> DeviceScheduler:
    """One device of fake models whose workers are never started: tests ask its ``decide``
    what a free session would run, as the workers do, on the fake clock."""
    device_plan = plan(seats, pool=pool).devices[0]
    backend = FakeBackend()
    groups = []
    for s in device_plan.seats:
        assert s.replica is not None
        groups.append(SessionGroup(seat=s, model=backend.load(s.replica.artifact, "cpu")))
    return DeviceScheduler(device_plan, groups, backend, config, clock=clock)


WIDE_SCHEMA = dataclasses.replace(FAKE_SCHEMA, name="wide", user_dense=FAKE_SCHEMA.user_dense + 2)


class TwoSchemas(FakeBackend):
    """Artifacts named ``fake:wide...`` load with :data:`WIDE_SCHEMA`, as a tenant's new model
    version with more user features would; the others with the fake's own schema. Forwards
    take no time."""

    def __init__(self) -> None:
        super().__init__(row_s=0.0, batch_s=0.0)

    def load(self, artifact: str, device: str) -> FakeModel:
        model = super().load(artifact, device)
        if artifact.startswith("fake:wide"):
            model.schema = WIDE_SCHEMA
        return model
