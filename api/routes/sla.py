"""``/v1/sla``: SLA attainment over time per tenant, from the samples heartbeats carry.

The admin reads every tenant's series; a tenant reads only its own (``/v1/sla/me``), and only
from its creation on, so a tenant re-created under an old name does not see its predecessor's.
Each series also has a row per model over the live daemons' last minute: attainment, counts,
served rate and p99 latency against the model's SLA (:func:`api.services.sla.served_models`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import AdminDep, CurrentTenant, SessionDep, StateDep, in_one_worker_call
from api.schemas import SlaHistory
from api.services import sla as service

router = APIRouter(prefix="/sla")

WindowS = Annotated[
    int,
    Query(
        ge=60,
        le=7 * 86400,
        description="seconds up to now (samples are kept for settings.api.sla_history_s)",
    ),
]
Buckets = Annotated[int, Query(ge=1, le=service.MAX_BUCKETS, description="equal time buckets")]


@router.get("", tags=["admin"])
@in_one_worker_call
def read_sla(
    _: AdminDep,
    state: StateDep,
    session: SessionDep,
    window_s: WindowS = service.DEFAULT_WINDOW_S,
    buckets: Buckets = service.DEFAULT_BUCKETS,
) -> SlaHistory:
    """Every tenant with traffic in the window: attainment per bucket (null: no queries), and
    per model over the live daemons' last minute: served rate and p99 against the SLA."""
    now = state.clock()
    history = service.sla_history(session=session, now=now, window_s=window_s, buckets=buckets)
    return service.with_models(history, service.served_models(session=session, now=now))


@router.get("/me", tags=["tenant"])
@in_one_worker_call
def read_my_sla(
    tenant: CurrentTenant,
    state: StateDep,
    session: SessionDep,
    window_s: WindowS = service.DEFAULT_WINDOW_S,
    buckets: Buckets = service.DEFAULT_BUCKETS,
) -> SlaHistory:
    """The tenant's own series, present even when it had no traffic, with a row per model of
    the tenant: attainment, served rate and p99 against the SLA over the live daemons' last
    minute (window_s)."""
    return service.tenant_sla_history(
        session=session, tenant_id=tenant.id, now=state.clock(), window_s=window_s, buckets=buckets
    )
