"""``/healthz`` (liveness), ``/readyz`` (readiness: the database answers) and ``/metrics``.

Liveness touches no database: a process whose database is slow or down is still alive, and
restarting it would not help. Readiness asks the database on one connection, under the same
gate as every request (:mod:`api.db`) and within :data:`READY_TIMEOUT_S`, so a load balancer
stops sending requests to a replica whose database does not answer.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from sqlalchemy import Connection, text

from api.deps import StateDep
from api.errors import Unavailable
from api.openapi import errors
from migrations import revision_on

router = APIRouter(tags=["health"])

# Longest /readyz waits for the database before it answers 503.
READY_TIMEOUT_S = 2.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    schema_revision: str | None


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers; no database is asked."""
    return Health(status="ok")


def _probe(connection: Connection) -> str | None:
    connection.execute(text("SELECT 1"))
    return revision_on(connection)


@router.get("/readyz", responses=errors(503, s503="the database did not answer in time"))
async def readyz(state: StateDep) -> Readiness:
    """Readiness: the database answers one query, on one connection, within a short timeout."""
    try:
        revision = await asyncio.wait_for(state.db.read(_probe), READY_TIMEOUT_S)
    except TimeoutError:
        raise Unavailable(f"the database did not answer within {READY_TIMEOUT_S:g} s") from None
    return Readiness(status="ok", database=state.db.dialect, schema_revision=revision)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format",
                     "content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
def metrics(state: StateDep) -> Response:
    """The API's Prometheus metrics (requests by method, route and status; solves)."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
