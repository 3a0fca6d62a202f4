"""``/v1/tenants``: the admin manages tenants and their keys; a tenant reads and tunes itself."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import AdminDep, CurrentTenant, IfMatch, SessionDep, StateDep
from api.models import ApiKeyRow, TenantRow
from api.openapi import errors
from api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    ApiKeyRotate,
    PathId,
    TenantCreate,
    TenantPublic,
    TenantSelfUpdate,
    TenantUpdate,
)
from api.services import tenants as service
from api.services.revisions import revision_etag

router = APIRouter(prefix="/tenants")


def _key_created(row: ApiKeyRow, key: str) -> ApiKeyCreated:
    return ApiKeyCreated.model_validate(
        {**ApiKeyPublic.model_validate(row).model_dump(), "key": key}
    )


def _public(tenant: TenantRow, response: Response) -> TenantPublic:
    response.headers["ETag"] = revision_etag(tenant.revision)
    return TenantPublic.model_validate(tenant)


# Tenant routes first: "/tenants/me" must not be taken for "/tenants/{tenant}".
@router.get("/me", tags=["tenant"])
def read_me(tenant: CurrentTenant, session: SessionDep, response: Response) -> TenantPublic:
    """The tenant whose key this is; its revision is the ETag a PATCH sends back."""
    return _public(service.get_tenant_or_raise(session=session, tenant_id=tenant.id), response)


@router.patch("/me", tags=["tenant"], responses=errors(412, 428))
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


@router.get("/me/keys", tags=["tenant"])
def list_my_keys(tenant: CurrentTenant, session: SessionDep) -> list[ApiKeyPublic]:
    """Your keys (prefix, created, revoked, expires), never the keys themselves."""
    keys = service.list_keys(session=session, tenant_id=tenant.id)
    return [ApiKeyPublic.model_validate(k) for k in keys]


@router.post("/me/keys/rotate", status_code=status.HTTP_201_CREATED, tags=["tenant"])
def rotate_my_key(
    tenant: CurrentTenant, session: SessionDep, state: StateDep, data: ApiKeyRotate | None = None
) -> ApiKeyCreated:
    """A new key, shown once; the key this request presents is revoked now, or refused after
    ``grace_s`` seconds (so clients can move over)."""
    row, key = service.rotate_key(
        session=session,
        tenant_id=tenant.id,
        key_id=tenant.key_id,
        grace_s=(data or ApiKeyRotate()).grace_s,
        now=state.clock(),
    )
    return _key_created(row, key)


@router.delete(
    "/me/keys/{key_id}", tags=["tenant"], responses=errors(409, s409="your last usable key")
)
def revoke_my_key(
    key_id: PathId, tenant: CurrentTenant, session: SessionDep, state: StateDep
) -> ApiKeyPublic:
    """Revoke one of your keys; your last usable one cannot be (409): rotate it instead."""
    row = service.revoke_key(
        session=session, tenant_id=tenant.id, key_id=key_id, now=state.clock(), keep_one=True
    )
    return ApiKeyPublic.model_validate(row)


@router.post(
    "", status_code=status.HTTP_201_CREATED, tags=["admin"],
    responses=errors(409, s409="the name is taken"),
)  # fmt: skip
def create_tenant(
    data: TenantCreate, _: AdminDep, session: SessionDep, response: Response
) -> TenantPublic:
    """Create a tenant with its entitlement weight and fairness criterion; issue it a key next
    (``POST /v1/tenants/{tenant}/keys``)."""
    return _public(service.create_tenant(session=session, data=data), response)


@router.get("", tags=["admin"])
def list_tenants(_: AdminDep, session: SessionDep) -> list[TenantPublic]:
    """Every tenant, by id."""
    return [TenantPublic.model_validate(t) for t in service.list_tenants(session=session)]


@router.get("/{tenant}", tags=["admin"])
def read_tenant(
    tenant: PathId, _: AdminDep, session: SessionDep, response: Response
) -> TenantPublic:
    """One tenant; its revision is the ETag a PATCH or DELETE sends back."""
    return _public(service.get_tenant_or_raise(session=session, tenant_id=tenant), response)


@router.patch("/{tenant}", tags=["admin"], responses=errors(412, 428))
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
def delete_tenant(
    tenant: PathId, _: AdminDep, session: SessionDep, if_match: IfMatch = None
) -> Response:
    """Delete a tenant with its keys and models (stored allocations keep their history);
    needs If-Match."""
    service.delete_tenant(session=session, tenant_id=tenant, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{tenant}/keys", status_code=status.HTTP_201_CREATED, tags=["admin"])
def issue_key(
    tenant: PathId,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    data: ApiKeyCreate | None = None,
) -> ApiKeyCreated:
    """A new API key for the tenant, shown once; ``expires_in_s`` makes it expire."""
    row, key = service.issue_key(
        session=session,
        tenant_id=tenant,
        now=state.clock(),
        expires_in_s=(data or ApiKeyCreate()).expires_in_s,
    )
    return _key_created(row, key)


@router.get("/{tenant}/keys", tags=["admin"])
def list_keys(tenant: PathId, _: AdminDep, session: SessionDep) -> list[ApiKeyPublic]:
    """A tenant's keys (prefix, created, revoked, expires), never the keys themselves."""
    return [
        ApiKeyPublic.model_validate(k) for k in service.list_keys(session=session, tenant_id=tenant)
    ]


@router.delete("/{tenant}/keys/{key_id}", tags=["admin"])
def revoke_key(
    tenant: PathId, key_id: PathId, _: AdminDep, session: SessionDep, state: StateDep
) -> ApiKeyPublic:
    """Revoke any key of the tenant, its last one too (the admin can issue another)."""
    row = service.revoke_key(session=session, tenant_id=tenant, key_id=key_id, now=state.clock())
    return ApiKeyPublic.model_validate(row)
