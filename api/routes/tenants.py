"""``/v1/tenants``: the admin manages tenants and their keys; a tenant reads and tunes itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response, status
from sqlalchemy.orm import Session

from allocator import Criterion
from api.deps import AdminDep, CurrentTenant, IfMatch, SessionDep, StateDep, in_one_worker_call
from api.idempotency import IdempotencyKey, fingerprint, remember, replay_if_known
from api.models import ApiKeyRow, TenantRow
from api.openapi import errors
from api.pagination import NEXT_LINK, Page, PageParams, next_page
from api.schemas import (
    NAME_PATTERN,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    ApiKeyRotate,
    InferenceKeyCreate,
    PathId,
    TenantCreate,
    TenantPublic,
    TenantSelfUpdate,
    TenantUpdate,
)
from api.services import tenants as service
from api.services.revisions import revision_etag
from api.state import AppState

router = APIRouter(prefix="/tenants")
NameFilter = Annotated[str | None, Query(pattern=NAME_PATTERN, description="only this name")]


def _key_created(row: ApiKeyRow, key: str) -> ApiKeyCreated:
    return ApiKeyCreated.model_validate(
        {**ApiKeyPublic.model_validate(row).model_dump(), "key": key}
    )


def _keys_changed(background: BackgroundTasks, state: AppState) -> None:
    """Wake the credential long-polls once the response is sent, which is after the change
    committed (api.deps), so the daemons learn of it at once rather than at the recheck."""
    background.add_task(state.notifier.notify)


def _public(tenant: TenantRow, response: Response) -> TenantPublic:
    response.headers["ETag"] = revision_etag(tenant.revision)
    return TenantPublic.model_validate(tenant)


# Tenant routes first: "/tenants/me" must not be taken for "/tenants/{tenant}".
@router.get("/me", tags=["tenant"])
@in_one_worker_call
def read_me(tenant: CurrentTenant, session: SessionDep, response: Response) -> TenantPublic:
    """The tenant whose key this is; its revision is the ETag a PATCH sends back."""
    return _public(service.get_tenant_or_raise(session=session, tenant_id=tenant.id), response)


@router.patch("/me", tags=["tenant"], responses=errors(412, 428))
@in_one_worker_call
def update_me(
    data: TenantSelfUpdate,
    tenant: CurrentTenant,
    session: SessionDep,
    response: Response,
    if_match: IfMatch = None,
) -> TenantPublic:
    """Change your own fairness criterion (the weight is the admin's); needs If-Match."""
    row = service.update_tenant(session=session, tenant_id=tenant.id, data=data, if_match=if_match)
    return _public(row, response)


ActiveFilter = Annotated[
    bool | None, Query(description="only keys usable now (true), or only the others (false)")
]


def _key_page(
    request: Request,
    response: Response,
    session: Session,
    state: AppState,
    tenant_id: int,
    page: PageParams,
    active: bool | None,
) -> list[ApiKeyPublic]:
    keys = service.list_keys(
        session=session,
        tenant_id=tenant_id,
        limit=page.limit + 1,
        after=page.after,
        active_at=state.clock(),
        active=active,
    )
    keys = next_page(
        request, response, keys, limit=page.limit, cursor="after", key=lambda r: r.id
    )
    return [ApiKeyPublic.model_validate(k) for k in keys]


@router.get("/me/keys", tags=["tenant"], responses=NEXT_LINK)
@in_one_worker_call
def list_my_keys(
    request: Request,
    response: Response,
    tenant: CurrentTenant,
    session: SessionDep,
    state: StateDep,
    page: Page,
    active: ActiveFilter = None,
) -> list[ApiKeyPublic]:
    """Your keys (prefix, created, revoked, expires), never the keys themselves; a page by
    id (``limit``, ``after``; ``Link`` to the next)."""
    return _key_page(request, response, session, state, tenant.id, page, active)


@router.post("/me/keys/rotate", status_code=status.HTTP_201_CREATED, tags=["tenant"])
@in_one_worker_call
def rotate_my_key(
    request: Request,
    tenant: CurrentTenant,
    session: SessionDep,
    state: StateDep,
    background: BackgroundTasks,
    data: ApiKeyRotate | None = None,
    idempotency_key: IdempotencyKey = None,
) -> ApiKeyCreated:
    """A new key, shown once; the key this request presents is revoked now, or refused after
    ``grace_s`` seconds (so clients can move over). A retry with the same
    ``Idempotency-Key`` is 409 (the new key is not shown twice)."""
    owner, print_, now = f"tenant:{tenant.id}", fingerprint(request, data), state.clock()
    replay_if_known(session=session, owner=owner, key=idempotency_key, print_=print_, now=now)
    row, key = service.rotate_key(
        session=session,
        tenant_id=tenant.id,
        key_id=tenant.key_id,
        grace_s=(data or ApiKeyRotate()).grace_s,
        now=now,
    )
    _keys_changed(background, state)
    remember(session=session, owner=owner, key=idempotency_key, print_=print_, status=201,
             body=None, now=now)  # fmt: skip
    return _key_created(row, key)


@router.delete(
    "/me/keys/{key_id}", tags=["tenant"], responses=errors(409, s409="your last usable key")
)
@in_one_worker_call
def revoke_my_key(
    key_id: PathId,
    tenant: CurrentTenant,
    session: SessionDep,
    state: StateDep,
    background: BackgroundTasks,
) -> ApiKeyPublic:
    """Revoke one of your keys; your last usable API key cannot be (409): rotate it instead.
    The daemons refuse a revoked key within about a second (their credential long-poll)."""
    row = service.revoke_key(
        session=session,
        tenant_id=tenant.id,
        key_id=key_id,
        now=state.clock(),
        presented_key_id=tenant.key_id,
    )
    _keys_changed(background, state)
    return ApiKeyPublic.model_validate(row)


@router.post(
    "/me/keys", status_code=status.HTTP_201_CREATED, tags=["tenant"],
    responses=errors(409, s409="a retry with the same Idempotency-Key: the key is not shown "
                     "twice"),
)  # fmt: skip
@in_one_worker_call
def create_inference_key(
    request: Request,
    tenant: CurrentTenant,
    session: SessionDep,
    state: StateDep,
    background: BackgroundTasks,
    data: InferenceKeyCreate | None = None,
    idempotency_key: IdempotencyKey = None,
) -> ApiKeyCreated:
    """A new inference-only key (``gfi_``), shown once: the daemons and the gateway accept it
    for your models' queries, the control plane refuses it. Hand it to serving clients rather
    than your API key. A retry with the same ``Idempotency-Key`` is 409."""
    owner, print_, now = f"tenant:{tenant.id}", fingerprint(request, data), state.clock()
    replay_if_known(session=session, owner=owner, key=idempotency_key, print_=print_, now=now)
    row, key = service.issue_key(
        session=session,
        tenant_id=tenant.id,
        now=now,
        expires_in_s=(data or InferenceKeyCreate()).expires_in_s,
        scope="inference",
        presented_key_id=tenant.key_id,
    )
    remember(session=session, owner=owner, key=idempotency_key, print_=print_, status=201,
             body=None, now=now)  # fmt: skip
    _keys_changed(background, state)
    return _key_created(row, key)


@router.post(
    "", status_code=status.HTTP_201_CREATED, tags=["admin"],
    responses=errors(409, s409="the name is taken"),
)  # fmt: skip
@in_one_worker_call
def create_tenant(
    request: Request,
    data: TenantCreate,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TenantPublic:
    """Create a tenant with its entitlement weight and fairness criterion; issue it a key next
    (``POST /v1/tenants/{tenant}/keys``). A retry with the same ``Idempotency-Key`` gets the
    first reply."""
    print_, now = fingerprint(request, data), state.clock()
    replay_if_known(session=session, owner="admin", key=idempotency_key, print_=print_, now=now)
    public = _public(service.create_tenant(session=session, data=data), response)
    remember(session=session, owner="admin", key=idempotency_key, print_=print_, status=201,
             body=public, now=now, etag=response.headers["ETag"])  # fmt: skip
    return public


@router.get("", tags=["admin"], responses=NEXT_LINK)
@in_one_worker_call
def list_tenants(
    request: Request,
    response: Response,
    _: AdminDep,
    session: SessionDep,
    page: Page,
    name: NameFilter = None,
    criterion: Annotated[Criterion | None, Query(description="only this criterion")] = None,
) -> list[TenantPublic]:
    """Tenants, a page by id (``limit``, ``after``; ``Link`` to the next), optionally of one
    name or criterion."""
    rows = service.list_tenants(
        session=session, limit=page.limit + 1, after=page.after, name=name, criterion=criterion
    )
    rows = next_page(
        request, response, rows, limit=page.limit, cursor="after", key=lambda r: r.id
    )
    return [TenantPublic.model_validate(t) for t in rows]


@router.get("/{tenant}", tags=["admin"])
@in_one_worker_call
def read_tenant(
    tenant: PathId, _: AdminDep, session: SessionDep, response: Response
) -> TenantPublic:
    """One tenant; its revision is the ETag a PATCH or DELETE sends back."""
    return _public(service.get_tenant_or_raise(session=session, tenant_id=tenant), response)


@router.patch("/{tenant}", tags=["admin"], responses=errors(412, 428))
@in_one_worker_call
def update_tenant(
    tenant: PathId,
    data: TenantUpdate,
    _: AdminDep,
    session: SessionDep,
    response: Response,
    if_match: IfMatch = None,
) -> TenantPublic:
    """Change a tenant's weight or criterion; needs If-Match."""
    row = service.update_tenant(session=session, tenant_id=tenant, data=data, if_match=if_match)
    return _public(row, response)


@router.delete(
    "/{tenant}", status_code=status.HTTP_204_NO_CONTENT, tags=["admin"],
    responses=errors(412, 428),
)  # fmt: skip
@in_one_worker_call
def delete_tenant(
    tenant: PathId,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    background: BackgroundTasks,
    if_match: IfMatch = None,
) -> Response:
    """Delete a tenant with its keys and models (stored allocations keep their history);
    needs If-Match."""
    service.delete_tenant(session=session, tenant_id=tenant, if_match=if_match)
    _keys_changed(background, state)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{tenant}/keys", status_code=status.HTTP_201_CREATED, tags=["admin"])
@in_one_worker_call
def issue_key(
    request: Request,
    tenant: PathId,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    background: BackgroundTasks,
    data: ApiKeyCreate | None = None,
    idempotency_key: IdempotencyKey = None,
) -> ApiKeyCreated:
    """A new key for the tenant, shown once: an API key, or with ``scope: inference`` an
    inference-only key; ``expires_in_s`` makes it expire. A retry with the same
    ``Idempotency-Key`` is 409 (the key is not shown twice)."""
    print_, now = fingerprint(request, data), state.clock()
    replay_if_known(session=session, owner="admin", key=idempotency_key, print_=print_, now=now)
    data = data or ApiKeyCreate()
    row, key = service.issue_key(
        session=session, tenant_id=tenant, now=now, expires_in_s=data.expires_in_s,
        scope=data.scope,
    )  # fmt: skip
    _keys_changed(background, state)
    remember(session=session, owner="admin", key=idempotency_key, print_=print_, status=201,
             body=None, now=now)  # fmt: skip
    return _key_created(row, key)


@router.get("/{tenant}/keys", tags=["admin"], responses=NEXT_LINK)
@in_one_worker_call
def list_keys(
    request: Request,
    response: Response,
    tenant: PathId,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    page: Page,
    active: ActiveFilter = None,
) -> list[ApiKeyPublic]:
    """A tenant's keys (prefix, created, revoked, expires), never the keys themselves; a page
    by id (``limit``, ``after``; ``Link`` to the next)."""
    return _key_page(request, response, session, state, tenant, page, active)


@router.delete("/{tenant}/keys/{key_id}", tags=["admin"])
@in_one_worker_call
def revoke_key(
    tenant: PathId,
    key_id: PathId,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    background: BackgroundTasks,
) -> ApiKeyPublic:
    """Revoke any key of the tenant, its last one too (the admin can issue another)."""
    row = service.revoke_key(session=session, tenant_id=tenant, key_id=key_id, now=state.clock())
    _keys_changed(background, state)
    return ApiKeyPublic.model_validate(row)
