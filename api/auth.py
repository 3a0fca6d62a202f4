"""Credentials: admin token, tenant API keys and node tokens, and who a bearer token is.

A tenant holds two kinds of key: API keys (``gft_``), which the control plane and the data
plane accept, and inference-only keys (``gfi_``), which only the data plane accepts (the
daemons check both against the credential document they long-poll,
:mod:`api.services.dataplane`): a key handed to a serving client cannot manage the tenant.

Tenant keys and node tokens are 256-bit random strings shown once when issued; only their
sha256 is stored, which is enough for a secret of that entropy (no salt or slow hash needed:
nothing can be guessed from the hash). The admin token comes from the API's configuration;
the development token is honoured only in development mode, so a production deployment that
forgot to set ``GPUFAIR_API_ADMIN_TOKEN`` is not open to anyone who read the docs.

This module says *who* a token belongs to; :mod:`api.deps` says which routes each role may
call, in one place.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, Connection, and_, or_, select
from sqlalchemy.orm import Session

from api.config import ApiConfig
from api.errors import Forbidden
from api.models import ApiKeyRow, NodeRow, TenantRow, as_utc, utcnow

TENANT_KEY_PREFIX = "gft_"
NODE_TOKEN_PREFIX = "gfn_"
INFERENCE_KEY_PREFIX = "gfi_"


@dataclass(frozen=True)
class Principal:
    """The caller behind a bearer token."""

    # "inference": a usable inference-only key, which no control-plane route takes (401 saying
    # so); it is identified only so that it is not taken for a guessed token.
    role: Literal["admin", "tenant", "node", "inference"]
    id: int = 0  # tenant or node id; 0 for the admin
    name: str = ""  # tenant or node name
    key_id: int = 0  # the tenant's API key that was presented; 0 for other roles


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_admin(token: str, config: ApiConfig) -> bool:
    """Whether ``token`` is the admin token (no database needed); Forbidden for the
    development token outside development mode."""
    if not config.admin_token or not hmac.compare_digest(
        token.encode(), config.admin_token.encode()
    ):
        return False
    if config.admin_token == config.development_admin_token and not config.dev_mode:
        raise Forbidden(
            "the development admin token is refused outside dev_mode; "
            "set GPUFAIR_API_ADMIN_TOKEN to a secret of your own"
        )
    return True


def key_usable(now: datetime) -> ColumnElement[bool]:
    """The SQL condition of an API key that is accepted at ``now``: neither revoked nor
    expired."""
    return and_(
        ApiKeyRow.revoked_at.is_(None),
        or_(ApiKeyRow.expires_at.is_(None), ApiKeyRow.expires_at > now),
    )


def key_usable_at(key: ApiKeyRow, now: datetime) -> bool:
    """:func:`key_usable` of a row already read, in Python."""
    return key.revoked_at is None and (key.expires_at is None or as_utc(key.expires_at) > now)


# How long a dashboard sign-in lasts.
DASHBOARD_SESSION_S = 12 * 3600


def _session_mac(config: ApiConfig, expires: int) -> str:
    # Keyed by the admin token: a new admin token ends every session signed with the old one.
    return hmac.new(
        config.admin_token.encode(), f"gpufair-dashboard:{expires}".encode(), hashlib.sha256
    ).hexdigest()


def dashboard_session(config: ApiConfig, now: datetime) -> str:
    """The dashboard's session cookie after a sign-in with the admin token: its expiry and a
    MAC of it, so the token itself is never stored in the browser or sent again."""
    expires = int(now.timestamp()) + DASHBOARD_SESSION_S
    return f"{expires}.{_session_mac(config, expires)}"


def is_dashboard_session(value: str, config: ApiConfig, now: datetime) -> bool:
    """Whether ``value`` is an unexpired session :func:`dashboard_session` made."""
    expires_text, _, mac = value.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if expires <= now.timestamp() or not config.admin_token:
        return False
    if config.admin_token == config.development_admin_token and not config.dev_mode:
        return False  # signed with the development token, which is refused here
    return hmac.compare_digest(mac.encode(), _session_mac(config, expires).encode())


def identify(
    *,
    session: Session | Connection,
    token: str,
    config: ApiConfig,
    now: datetime | None = None,
) -> Principal | None:
    """The principal ``token`` belongs to at ``now`` (default: the wall clock), or None if it
    is unknown, revoked or expired."""
    return identify_until(session=session, token=token, config=config, now=now)[0]


def identify_until(
    *,
    session: Session | Connection,
    token: str,
    config: ApiConfig,
    now: datetime | None = None,
) -> tuple[Principal | None, datetime | None]:
    """:func:`identify`, with when the tenant key expires (None: it does not, or it is not a
    tenant key), for :class:`api.credential_cache.CredentialCache` to keep it no longer."""
    if is_admin(token, config):
        return Principal(role="admin"), None
    digest = token_hash(token)
    if token.startswith(TENANT_KEY_PREFIX):
        tenant = session.execute(
            select(
                TenantRow.id, TenantRow.name, ApiKeyRow.id.label("key_id"), ApiKeyRow.expires_at
            )
            .join(ApiKeyRow, ApiKeyRow.tenant_id == TenantRow.id)
            .where(ApiKeyRow.token_hash == digest, key_usable(now or utcnow()))
        ).first()
        if tenant is None:
            return None, None
        principal = Principal(role="tenant", id=tenant.id, name=tenant.name, key_id=tenant.key_id)
        return principal, as_utc(tenant.expires_at) if tenant.expires_at else None
    if token.startswith(INFERENCE_KEY_PREFIX):
        key = session.execute(
            select(ApiKeyRow.tenant_id, ApiKeyRow.id, ApiKeyRow.expires_at).where(
                ApiKeyRow.token_hash == digest, key_usable(now or utcnow())
            )
        ).first()
        if key is None:
            return None, None
        principal = Principal(role="inference", id=key.tenant_id, key_id=key.id)
        return principal, as_utc(key.expires_at) if key.expires_at else None
    if token.startswith(NODE_TOKEN_PREFIX):
        node = session.execute(
            select(NodeRow.id, NodeRow.name).where(NodeRow.token_hash == digest)
        ).first()
        return (Principal(role="node", id=node.id, name=node.name) if node else None), None
    return None, None
