"""Tenants and their API keys.

Keys: the admin issues them (optionally expiring); a tenant lists its own, rotates the one it
signs in with (a new key, the old one revoked now or after a grace period, stored as its
expiry) and revokes its own — but never one that no other usable API key outlives, which would
lock it out sooner than the key would have (409): a key that is about to expire (a rotation's
grace) does not keep a tenant in. The tenant row is locked while that is decided, so two
concurrent revocations cannot both pass the check, and the key the request presented is read
again under the lock: one revoked meanwhile (by a concurrent rotation) rotates or revokes
nothing (401).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from api.auth import (
    INFERENCE_KEY_PREFIX,
    TENANT_KEY_PREFIX,
    key_usable,
    key_usable_at,
    new_token,
    token_hash,
)
from api.errors import Conflict, NotFound, Unauthorized
from api.models import ApiKeyRow, TenantRow, as_utc
from api.schemas import KeyScope, TenantCreate, TenantSelfUpdate, TenantUpdate
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


def list_tenants(
    *,
    session: Session,
    limit: int | None = None,
    after: int | None = None,
    name: str | None = None,
    criterion: str | None = None,
) -> list[TenantRow]:
    """Tenants by id: ``limit`` of them past id ``after``, of that name or criterion."""
    query = select(TenantRow).order_by(TenantRow.id).limit(limit)
    if after is not None:
        query = query.where(TenantRow.id > after)
    if name is not None:
        query = query.where(TenantRow.name == name)
    if criterion is not None:
        query = query.where(TenantRow.criterion == criterion)
    return list(session.scalars(query))


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


def issue_key(
    *,
    session: Session,
    tenant_id: int,
    now: datetime,
    expires_in_s: int | None = None,
    scope: KeyScope = "tenant",
    presented_key_id: int | None = None,
) -> tuple[ApiKeyRow, str]:
    """A new key for the tenant (an API key, or with ``scope="inference"`` an inference-only
    key), refused after ``expires_in_s`` when given; the key itself is returned once and never
    stored. With ``presented_key_id`` (a tenant issuing its own with that key), the presented
    key must still be usable (401): a key revoked meanwhile mints nothing."""
    if presented_key_id is not None:
        _presented_key(session, tenant_id, presented_key_id, now)  # the tenant locked, found
    else:
        get_tenant_or_raise(session=session, tenant_id=tenant_id)
    key = new_token(INFERENCE_KEY_PREFIX if scope == "inference" else TENANT_KEY_PREFIX)
    row = ApiKeyRow(
        tenant_id=tenant_id,
        prefix=key[:KEY_PREFIX_SHOWN],
        token_hash=token_hash(key),
        created_at=now,
        expires_at=None if expires_in_s is None else now + timedelta(seconds=expires_in_s),
    )
    session.add(row)
    session.flush()
    return row, key


def _lock_tenant(session: Session, tenant_id: int) -> None:
    # PostgreSQL: decisions about a tenant's keys are serial (SQLite's writes are anyway).
    if session.get(TenantRow, tenant_id, with_for_update=True) is None:
        raise NotFound(f"tenant {tenant_id} not found")


def _own_key(session: Session, tenant_id: int, key_id: int) -> ApiKeyRow:
    row = session.get(ApiKeyRow, key_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"key {key_id} not found")
    return row


def _presented_key(session: Session, tenant_id: int, key_id: int, now: datetime) -> ApiKeyRow:
    """The key a tenant's request presented, read again under the tenant's lock, which this
    takes (NotFound for a tenant gone). It was usable
    when the request was authenticated, but a change committed since — a concurrent request's
    on PostgreSQL, or another replica's that this process's credential cache has not seen — may
    have revoked it: then the request is refused (401) as if it had come a moment later, so one
    key rotated twice mints one key, and the answers are SQLite's, whose writers run in turn."""
    _lock_tenant(session, tenant_id)
    key = _own_key(session, tenant_id, key_id)
    if not key_usable_at(key, now):
        raise Unauthorized(
            f"key {key_id} was revoked or expired after this request presented it (a "
            "concurrent rotation or revocation came first)"
        )
    return key


def rotate_key(
    *, session: Session, tenant_id: int, key_id: int, grace_s: int, now: datetime
) -> tuple[ApiKeyRow, str]:
    """A new key for the tenant, and key ``key_id`` (the one presented) revoked now, or
    refused after ``grace_s`` seconds (an expiry already sooner is kept)."""
    old = _presented_key(session, tenant_id, key_id, now)
    row, key = issue_key(session=session, tenant_id=tenant_id, now=now)
    if grace_s == 0:
        old.revoked_at = now
    else:
        until = now + timedelta(seconds=grace_s)
        if old.expires_at is None or as_utc(old.expires_at) > until:
            old.expires_at = until
    session.flush()
    return row, key



def list_keys(
    *,
    session: Session,
    tenant_id: int,
    limit: int | None = None,
    after: int | None = None,
    active_at: datetime | None = None,
    active: bool | None = None,
) -> list[ApiKeyRow]:
    """The tenant's keys by id: ``limit`` of them past id ``after``; with ``active``, only
    those usable at ``active_at`` (true) or only those not (false)."""
    get_tenant_or_raise(session=session, tenant_id=tenant_id)
    query = (
        select(ApiKeyRow)
        .where(ApiKeyRow.tenant_id == tenant_id)
        .order_by(ApiKeyRow.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(ApiKeyRow.id > after)
    if active is not None and active_at is not None:
        usable = key_usable(active_at)
        query = query.where(usable if active else ~usable)
    return list(session.scalars(query))


def revoke_key(
    *,
    session: Session,
    tenant_id: int,
    key_id: int,
    now: datetime,
    presented_key_id: int | None = None,
) -> ApiKeyRow:
    """Revoke one of the tenant's keys; a key of another tenant is not found. With
    ``presented_key_id`` (a tenant revoking its own with that key), the presented key must
    still be usable (401), and refuse (409) to revoke an API key unless another usable one
    lasts at least as long: one that never expires, or expires no sooner. Counting every
    usable key would let a tenant revoke its one lasting key with one about to expire (a
    rotation's grace) and be locked out when that expires."""
    if presented_key_id is not None:
        _presented_key(session, tenant_id, presented_key_id, now)
    row = _own_key(session, tenant_id, key_id)
    if row.revoked_at is not None:
        return row
    if presented_key_id is not None and row.scope == "tenant":
        lasts = (
            ApiKeyRow.expires_at.is_(None)
            if row.expires_at is None
            else or_(ApiKeyRow.expires_at.is_(None), ApiKeyRow.expires_at >= row.expires_at)
        )
        others = session.scalar(
            select(func.count())
            .select_from(ApiKeyRow)
            .where(
                ApiKeyRow.tenant_id == tenant_id,
                ApiKeyRow.id != key_id,
                ApiKeyRow.prefix.startswith(TENANT_KEY_PREFIX),
                key_usable(now),
                lasts,
            )
        )
        if not others:
            raise Conflict(
                f"key {key_id} is your last usable key that lasts: every other API key is "
                "revoked, expired or expires sooner; rotate it (POST /v1/tenants/me/keys/"
                "rotate) instead, or ask the admin"
            )
    row.revoked_at = now
    session.flush()
    return row
