"""The app factory: ``create_app(config)`` builds the control plane's FastAPI app.

Nothing is built at import time — the database engine, metrics registry and plan notifier are
made here from the :class:`api.config.ApiConfig` passed in, so tests and benchmarks build apps
of their own. The factory does not touch the schema: ``gpufair serve`` (or ``gpufair db
upgrade``) makes sure it is at the code's head revision before serving (see
:func:`ensure_schema`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import migrations
from api.artifact_check import ArtifactSandbox, SandboxLimits
from api.config import ApiConfig
from api.db import Database, PoolLimits
from api.errors import SchemaNotReady, install_error_handlers
from api.idempotency import install_replay_handler
from api.limits import BodyLimitMiddleware, HeadAsGetMiddleware, SecurityHeadersMiddleware
from api.metrics import Metrics, MetricsMiddleware
from api.openapi import install_openapi
from api.ratelimit import FailedCredentials
from api.routes import (
    allocations,
    dashboard,
    docs,
    health,
    models,
    nodes,
    routing,
    sla,
    tenants,
)
from api.scheduler import SolveScheduler
from api.services.plans import PlanNotifier
from api.state import AppState

log = logging.getLogger(__name__)

API_PREFIX = "/v1"


def pool_limits(config: ApiConfig) -> PoolLimits:
    return PoolLimits(size=config.database_pool_size, wait_timeout_s=config.database_wait_timeout_s)


def create_app(config: ApiConfig) -> FastAPI:
    """The API app over the database ``config.database_url``."""
    db = Database(config.database_url, pool=pool_limits(config), echo=config.database_echo)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = None
        if config.solve_interval_s > 0:
            scheduler = SolveScheduler(app.state.gpufair, config.solve_interval_s)
            scheduler.start()
        yield
        if scheduler is not None:
            await scheduler.stop()
        await app.state.gpufair.plan_watcher.stop()
        db.dispose()

    app = FastAPI(
        title="gpufair control plane",
        version=config.version,
        description="Tenants, models, nodes and certified fair allocations of GPU seats and "
        "streams. Admin routes take the admin token, tenant routes a tenant API key, node "
        "routes a node token, each as `Authorization: Bearer ...`.",
        lifespan=lifespan,
        # Served by api.routes.docs from packaged files: FastAPI's own pages load a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.gpufair = AppState(
        config=config,
        db=db,
        metrics=metrics,
        notifier=PlanNotifier(),
        failed_credentials=FailedCredentials(config.failed_credentials_per_minute),
        artifacts=ArtifactSandbox(
            SandboxLimits(
                memory_mb=config.artifact_check_memory_mb,
                timeout_s=config.artifact_check_timeout_s,
            )
        ),
    )
    install_error_handlers(app)
    install_replay_handler(app)
    install_openapi(app)
    routers = (tenants.router, models.router, nodes.router, allocations.router, sla.router,
               routing.router)  # fmt: skip
    for router in routers:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    docs.mount_assets(app)
    # Outermost last: count every request, including those refused for their size, and give
    # every response, refusals included, its headers.
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def ensure_schema(config: ApiConfig) -> None:
    """Make sure the database is at the head revision before serving.

    An empty SQLite database is upgraded in development mode (the embedded default's first
    start); anything else behind the code raises SchemaNotReady naming the command to run, and
    a database at a revision the code does not know (migrated by a newer gpufair, the code
    rolled back) one saying so, as `gpufair db upgrade` could not help it.
    """
    db = Database(config.database_url, pool=pool_limits(config))
    try:
        current = migrations.current_revision(db.engine)
        head = migrations.head_revision()
        if current == head:
            return
        if current is None and db.dialect == "sqlite" and config.dev_mode:
            log.info("empty SQLite database: creating the schema (revision %s)", head)
            migrations.upgrade(config.database_url)
            return
        if current is not None and current not in migrations.known_revisions():
            raise SchemaNotReady(
                f"database schema is at {current}, which a newer gpufair migrated: this code "
                f"(head {head}) cannot serve it; run the newer gpufair, or downgrade the "
                "database with it"
            )
        raise SchemaNotReady(
            f"database schema is at {current or 'nothing'}, the code needs {head}: "
            "run 'gpufair db upgrade'"
        )
    finally:
        db.dispose()
