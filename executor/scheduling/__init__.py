"""The executor's scheduling side: session groups, batching, splitting, fair queueing, admission.

Nothing here imports torch; models are reached through :class:`Backend`. Public surface:
:class:`NodeRuntime` (plan → session groups, routing, swaps), :class:`SchedulerConfig`, the
error tree in :mod:`executor.scheduling.errors`, and the stats a metrics collector reads.
"""

from __future__ import annotations

from executor.scheduling.backend import Backend, Model
from executor.scheduling.config import SchedulerConfig
from executor.scheduling.device import DeviceScheduler, GroupStats, Pending, SessionGroup
from executor.scheduling.errors import (
    DeadlineExceeded,
    GroupClosed,
    ModelFailed,
    ModelUnavailable,
    Overloaded,
    PlanRefused,
    SchedulingError,
    UnknownModel,
)
from executor.scheduling.node import Deployment, NodeRuntime, SwapReport

__all__ = [
    "Backend",
    "DeadlineExceeded",
    "Deployment",
    "DeviceScheduler",
    "GroupClosed",
    "GroupStats",
    "Model",
    "ModelFailed",
    "ModelUnavailable",
    "NodeRuntime",
    "Overloaded",
    "Pending",
    "PlanRefused",
    "SchedulerConfig",
    "SchedulingError",
    "SessionGroup",
    "SwapReport",
    "UnknownModel",
]
