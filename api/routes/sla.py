"""``/v1/sla``: SLA attainment over time per tenant, from the samples heartbeats carry.

The admin reads every tenant's series; a tenant reads only its own (``/v1/sla/me``), and only
from its creation on, so a tenant re-created under an old name does not see its predecessor's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import AdminDep, CurrentTenant, SessionDep, StateDep
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
def read_sla(
    _: AdminDep,
    state: StateDep,
    session: SessionDep,
    window_s: WindowS = service.DEFAULT_WINDOW_S,
    buckets: Buckets = service.DEFAULT_BUCKETS,
) -> SlaHistory:
    """Every tenant with traffic in the window: attainment per bucket (null: no queries)."""
    return service.sla_history(
        session=session, now=state.clock(), window_s=window_s, buckets=buckets
    )


@router.get("/me", tags=["tenant"])
def read_my_sla(
    tenant: CurrentTenant,
    state: StateDep,
    session: SessionDep,
    window_s: WindowS = service.DEFAULT_WINDOW_S,
    buckets: Buckets = service.DEFAULT_BUCKETS,
) -> SlaHistory:
    """The tenant's own series, present even when it had no traffic."""
    return service.tenant_sla_history(
        session=session, tenant_id=tenant.id, now=state.clock(), window_s=window_s, buckets=buckets
    )
