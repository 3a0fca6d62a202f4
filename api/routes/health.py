"""``/healthz`` (liveness and schema revision) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from api.deps import SessionDep, StateDep
from migrations import current_revision

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    database: str
    schema_revision: str | None


@router.get("/healthz")
def healthz(state: StateDep, session: SessionDep) -> Health:
    session.execute(text("SELECT 1"))
    return Health(
        status="ok", database=state.db.dialect, schema_revision=current_revision(state.db.engine)
    )


@router.get("/metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
