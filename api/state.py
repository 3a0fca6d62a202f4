"""What one app instance holds: its settings, database, metrics and plan notifier.

Built by the app factory and hung on ``app.state.gpufair``; nothing of it exists at import time,
so tests build as many apps as they like, each with settings and a database of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from api.db import Database
from api.metrics import Metrics
from api.services.plans import PlanNotifier
from gpufair.settings import Settings


@dataclass
class AppState:
    settings: Settings
    db: Database
    metrics: Metrics
    notifier: PlanNotifier


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.gpufair
    return state


async def app_state(request: Request) -> AppState:
    """The dependency form of :func:`state_of`; async, since a plain function would cost a
    worker-thread hop per request for an attribute lookup."""
    return state_of(request)
