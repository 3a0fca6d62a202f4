"""The scheduled re-solve (``api.solve_interval_s``): allocations appear without a POST when the
period is set, never when it is 0, not again while nothing changes, and not after shutdown; a
failing tick is logged and the loop goes on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app, pool_limits
from api.artifact_check import ArtifactSandbox, SandboxLimits
from api.db import Database
from api.metrics import Metrics
from api.ratelimit import FailedCredentials
from api.scheduler import SolveScheduler
from api.services.plans import PlanNotifier
from api.state import AppState
from gpufair.compose import api_config
from tests.api.conftest import Api, make_settings

INTERVAL_S = 0.2


def _versions(api: Api) -> list[int]:
    r = api.client.get("/v1/allocations", headers=api.admin)
    assert r.status_code == 200, r.text
    return sorted(a["version"] for a in r.json())


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _app(db_url: str, solve_interval_s: float) -> FastAPI:
    return create_app(api_config(make_settings(db_url, solve_interval_s=solve_interval_s)))


def _register(api: Api, tenant: str = "alpha") -> None:
    _, key = api.tenant(tenant, weight=1.0, criterion="ef1")
    api.model(key, f"{tenant}-rank")


def test_scheduled_solve_allocates_without_post_and_skips_when_unchanged(db_url: str) -> None:
    with TestClient(_app(db_url, solve_interval_s=INTERVAL_S)) as client:
        api = Api(client)
        _register(api)
        _, token = api.node("n1")
        assert _wait_for(lambda: _versions(api) == [1], timeout_s=8), _versions(api)
        # The node is told: its plan is the scheduled allocation's.
        r = client.get("/v1/nodes/n1/plan", headers=api.bearer(token))
        assert r.status_code == 200 and r.json()["version"] == 1, r.text
        # Nothing changes for several periods: no new version.
        time.sleep(5 * INTERVAL_S)
        assert _versions(api) == [1]
        # A change (a second tenant and model) is picked up by the next period.
        _register(api, "beta")
        assert _wait_for(lambda: _versions(api) == [1, 2], timeout_s=8), _versions(api)
        current = client.get("/v1/allocations/current", headers=api.admin).json()
        assert set(current["certificate"]["agents"]) == {"alpha", "beta"}


def test_zero_interval_never_solves_on_its_own(db_url: str) -> None:
    with TestClient(_app(db_url, solve_interval_s=0.0)) as client:
        api = Api(client)
        _register(api)
        api.node("n1")
        time.sleep(5 * INTERVAL_S)
        assert _versions(api) == []


def test_loop_stops_on_shutdown(db_url: str) -> None:
    with TestClient(_app(db_url, solve_interval_s=INTERVAL_S)) as client:
        api = Api(client)
        _register(api)
        api.node("n1")
        assert _wait_for(lambda: _versions(api) == [1], timeout_s=8), _versions(api)
    # The scheduling app is shut down; a change made through another app (no schedule) on the
    # same database must not be solved by a loop left running.
    with TestClient(_app(db_url, solve_interval_s=0.0)) as client:
        api = Api(client)
        _register(api, "beta")
        time.sleep(5 * INTERVAL_S)
        assert _versions(api) == [1]


def test_failing_ticks_are_logged_and_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A database without the schema: every tick fails reading its snapshot.
    config = api_config(make_settings(f"sqlite:///{tmp_path / 'empty.db'}"))
    state = AppState(
        config=config,
        db=Database(config.database_url, pool=pool_limits(config)),
        metrics=Metrics(),
        notifier=PlanNotifier(),
        failed_credentials=FailedCredentials(config.failed_credentials_per_minute),
        artifacts=ArtifactSandbox(SandboxLimits(memory_mb=2048, timeout_s=60)),
    )

    async def run_for(seconds: float) -> SolveScheduler:
        scheduler = SolveScheduler(state, interval_s=0.05)
        scheduler.start()
        await asyncio.sleep(seconds)
        assert scheduler.running
        await scheduler.stop()
        return scheduler

    with caplog.at_level(logging.WARNING, logger="api.scheduler"):
        scheduler = asyncio.run(run_for(0.6))
    state.db.dispose()
    failures = [r for r in caplog.records if "scheduled solve failed" in r.getMessage()]
    assert len(failures) >= 3, [r.getMessage() for r in caplog.records]
    assert not scheduler.running
