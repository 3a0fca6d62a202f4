"""``/v1/allocations``: solve now, and read the immutable, versioned results."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response, status
from sqlalchemy.orm import Session

from allocator import Objective
from api.deps import (
    AdminDep,
    CurrentTenant,
    SessionDep,
    StateDep,
    commit_errors,
    in_one_worker_call,
)
from api.idempotency import IdempotencyKey, fingerprint, remember, replay_if_known
from api.models import AllocationRow
from api.openapi import errors
from api.pagination import MAX_LIMIT, NEXT_LINK, next_page
from api.schemas import (
    MAX_ID,
    AllocationCreate,
    AllocationDiff,
    AllocationPublic,
    AllocationSummary,
    PathId,
    TenantAllocation,
)
from api.services import allocations as service

router = APIRouter(prefix="/allocations")


def _public(session: SessionDep, row: AllocationRow) -> AllocationPublic:
    return AllocationPublic.model_validate(
        {
            **AllocationSummary.model_validate(row).model_dump(),
            "certificate": row.certificate,
            "nodes": service.node_names(session=session, allocation_id=row.id),
        }
    )


@router.post(
    "", status_code=status.HTTP_201_CREATED, tags=["admin"],
    responses=errors(409, 500, s409="nothing to allocate: no tenant or no node; or tenants or "
                     "models changed during the solve and its re-solve"),
)  # fmt: skip
def create_allocation(
    request: Request,
    _: AdminDep,
    state: StateDep,
    data: Annotated[AllocationCreate | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> AllocationPublic:
    """Solve now on a snapshot of the database; store the allocation only if its certificate
    passes the allocator's checker (500 otherwise). A certificate that passes is stored and
    returned even when it says some tenants' criteria fail (`fair: false`): then no allocation
    the allocator found meets them all. One solve runs at a time; others wait their turn. A
    tenant or model deleted or changed during the solve is not seated from the old snapshot:
    the solve runs again, and 409 if they changed again. A retry with the same
    ``Idempotency-Key`` gets the first reply instead of solving again, also when it arrives
    while the first is still solving (it waits for it)."""
    print_, now = fingerprint(request, data), state.clock()
    replies: list[AllocationPublic] = []

    def check(session: Session) -> None:
        # Under the solve lock: a request with this key that solved while this one waited for
        # the lock has committed its record with its allocation, and is replayed.
        replay_if_known(session=session, owner="admin", key=idempotency_key, print_=print_,
                        now=now)  # fmt: skip

    def record(session: Session, row: AllocationRow) -> None:
        replies.append(_public(session, row))
        remember(session=session, owner="admin", key=idempotency_key, print_=print_,
                 status=201, body=replies[0], now=now)  # fmt: skip

    config = state.config
    objective = data.objective if data is not None else None
    with state.metrics.solve_seconds.time(), commit_errors():
        row = service.run_solve(
            db=state.db,
            options=config.solve_options,
            objective=objective or config.default_objective,
            parsed=state.parsed_plans,
            rendered=state.rendered_plans,
            check=check,
            record=record,
        )
    state.metrics.allocation_version.set(row.version)
    state.notifier.notify(allocation_id=row.id)
    return replies[0]


@router.get("", tags=["admin"], responses=NEXT_LINK)
@in_one_worker_call
def list_allocations(
    request: Request,
    response: Response,
    _: AdminDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")] = 100,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="the cursor: versions below this one")
    ] = None,
    objective: Annotated[Objective | None, Query(description="only this objective")] = None,
) -> list[AllocationSummary]:
    """Stored allocations without their certificates, a page newest first (``limit``,
    ``before``; ``Link`` to the next), optionally of one objective."""
    rows = service.list_allocations(
        session=session, limit=limit + 1, before=before, objective=objective
    )
    rows = next_page(
        request, response, rows, limit=limit, cursor="before", key=lambda r: r.version
    )
    return [AllocationSummary.model_validate(r) for r in rows]


@router.get("/current", tags=["admin"], responses=errors(404, s404="no allocation yet"))
@in_one_worker_call
def read_current(_: AdminDep, session: SessionDep) -> AllocationPublic:
    """The newest allocation with its certificate and the nodes it has a plan for."""
    return _public(session, service.current_allocation_or_raise(session=session))


@router.get(
    "/current/me",
    tags=["tenant"],
    responses=errors(404, s404="no allocation yet, or none since the tenant was created"),
)
@in_one_worker_call
def read_current_mine(
    tenant: CurrentTenant, session: SessionDep, state: StateDep
) -> TenantAllocation:
    """The tenant's seats, stream shares and own certificate row in the current allocation."""
    return service.tenant_view(session=session, tenant_id=tenant.id, parsed=state.parsed_plans)


@router.get("/{allocation}", tags=["admin"])
@in_one_worker_call
def read_allocation(allocation: PathId, _: AdminDep, session: SessionDep) -> AllocationPublic:
    """One stored allocation with its certificate (stored allocations never change)."""
    return _public(
        session, service.get_allocation_or_raise(session=session, allocation_id=allocation)
    )


@router.get("/{allocation}/diff/{other}", tags=["admin"])
@in_one_worker_call
def diff_allocations(
    allocation: PathId, other: PathId, _: AdminDep, session: SessionDep
) -> AllocationDiff:
    """What changed from ``allocation`` to ``other``: seat moves and tenants' stream shares."""
    return service.diff_allocations(session=session, from_id=allocation, to_id=other)
