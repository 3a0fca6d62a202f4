"""Tenants and their API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import TENANT_KEY_PREFIX, new_token, token_hash
from api.errors import Conflict, NotFound
from api.models import ApiKeyRow, TenantRow, utcnow
from api.schemas import TenantCreate, TenantSelfUpdate, TenantUpdate
from api.services.revisions import check_if_match

# Characters of a key shown in listings: the "gft_" prefix and a few random ones.
KEY_PREFIX_SHOWN = 10


def create_tenant(*, session: Session, data: TenantCreate) -> TenantRow:
    if session.scalar(select(TenantRow.id).where(TenantRow.name == data.name)) is not None:
        raise Conflict(f"tenant {data.name!r} already exists", field="name")
    tenant = TenantRow(name=data.name, weight=data.weight, criterion=data.criterion)
    session.add(tenant)
    session.flush()
    return tenant


def list_tenants(*, session: Session) -> list[TenantRow]:
    return list(session.scalars(select(TenantRow).order_by(TenantRow.id)))


def get_tenant_or_raise(*, session: Session, tenant_id: int) -> TenantRow:
    tenant = session.get(TenantRow, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant


def update_tenant(
    *,
    session: Session,
    tenant_id: int,
    data: TenantUpdate | TenantSelfUpdate,
    if_match: str | None,
) -> TenantRow:
    tenant = get_tenant_or_raise(session=session, tenant_id=tenant_id)
    check_if_match(if_match, tenant.revision)
    for key, value in data.model_dump(exclude_unset=True).items():
        if value is not None:
            setattr(tenant, key, value)
    session.flush()
    return tenant


def delete_tenant(*, session: Session, tenant_id: int, if_match: str | None) -> None:
    """Delete the tenant with its keys and models; stored allocations keep their history."""
    tenant = get_tenant_or_raise(session=session, tenant_id=tenant_id)
    check_if_match(if_match, tenant.revision)
    session.delete(tenant)
    session.flush()


def issue_key(*, session: Session, tenant_id: int) -> tuple[ApiKeyRow, str]:
    """A new API key for the tenant; the key itself is returned once and never stored."""
    get_tenant_or_raise(session=session, tenant_id=tenant_id)
    key = new_token(TENANT_KEY_PREFIX)
    row = ApiKeyRow(tenant_id=tenant_id, prefix=key[:KEY_PREFIX_SHOWN], token_hash=token_hash(key))
    session.add(row)
    session.flush()
    return row, key


def list_keys(*, session: Session, tenant_id: int) -> list[ApiKeyRow]:
    get_tenant_or_raise(session=session, tenant_id=tenant_id)
    return list(
        session.scalars(
            select(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id).order_by(ApiKeyRow.id)
        )
    )


def revoke_key(*, session: Session, tenant_id: int, key_id: int) -> ApiKeyRow:
    """Revoke one of the tenant's keys; a key of another tenant is not found."""
    row = session.get(ApiKeyRow, key_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"key {key_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
