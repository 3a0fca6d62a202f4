"""The scheduler's knobs: one frozen object, passed to :class:`NodeRuntime`.

``gpufair executor`` builds it from ``[executor]`` of the settings
(:func:`gpufair.compose.scheduler_config`); tests and benchmarks build their own. The defaults
of the knobs that are settings equal the settings' defaults (a test keeps them so), so that a
runtime built without settings behaves as a deployment does; the others are the scheduler's
own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    max_queue: int = 256  # queries in flight per session group; beyond it, 429
    batch_max_delay_s: float = 0.002  # longest a small query waits for others to batch with
    max_batch_candidates: int = 512  # candidate rows per batch; larger queries are split
    min_split_rows: int = 64  # a query is split only into pieces at least this large
    drain_timeout_s: float = 30.0  # how long a plan swap waits for in-flight queries
    admission: bool = True  # refuse queries predicted to miss their SLA (429)
    batching: bool = True  # coalesce small queries; off: one query (piece) per batch
    splitting: bool = True  # cut a large query across idle sessions
    expire_after_sla: float = 2.0  # a query is dropped once it waited this many SLAs
    # Weights a plan may place on one backend device, in MiB (0: what the device has free,
    # less the backend's reserve); a plan beyond it is refused (docs/executor.md, "Memory").
    memory_limit_mb: float = 0.0
    # A session's batch of a group sent more than its sessions serve (its work queued behind
    # the batch, or admission control refusing it of late: admission.Refusals) runs at the
    # lowest CPU priority (SCHED_IDLE, on a second thread of its worker: device.BackgroundLane):
    # such a tenant takes only the CPU that tenants within their share, the fronts and the
    # engine's link threads leave; the daemon sets it.
    over_share_at_idle_priority: bool = False
