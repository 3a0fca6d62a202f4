"""What one app instance holds: its configuration, database, metrics, plan notifier and the
watcher of stored plans that wakes it, clock, the schedule of SLA-sample pruning, and the
stored plans it has parsed and rendered.

Built by the app factory and hung on ``app.state.gpufair``; nothing of it exists at import time,
so tests build as many apps as they like, each with a configuration and a database of its own.
The clock stamps heartbeats' SLA samples and ends the dashboard's time window: tests replace it
to lay down a history of heartbeats in seconds rather than minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from fastapi import Request

from api.artifact_check import ArtifactSandbox
from api.config import ApiConfig
from api.credential_cache import CredentialCache
from api.db import Database
from api.metrics import Metrics
from api.models import utcnow
from api.ratelimit import FailedCredentials
from api.services.plans import ParsedPlans, PlanNotifier, RenderedPlans, StoredPlanWatcher
from api.services.sla import PruneSchedule


@dataclass
class AppState:
    config: ApiConfig
    db: Database
    metrics: Metrics
    notifier: PlanNotifier
    failed_credentials: FailedCredentials
    artifacts: ArtifactSandbox
    clock: Callable[[], datetime] = utcnow  # aware UTC
    sla_prune: PruneSchedule = field(default_factory=PruneSchedule)
    parsed_plans: ParsedPlans = field(default_factory=ParsedPlans)
    rendered_plans: RenderedPlans = field(default_factory=RenderedPlans)
    plan_watcher: StoredPlanWatcher = field(init=False)
    credentials: CredentialCache = field(init=False)

    def __post_init__(self) -> None:
        self.plan_watcher = StoredPlanWatcher(
            db=self.db,
            notifier=self.notifier,
            parsed=self.parsed_plans,
            rendered=self.rendered_plans,
        )
        self.credentials = CredentialCache()
        self.credentials.watch(self.db.session_factories)


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.gpufair
    return state


async def app_state(request: Request) -> AppState:
    """The dependency form of :func:`state_of`; async, since a plain function would cost a
    worker-thread hop per request for an attribute lookup."""
    return state_of(request)
