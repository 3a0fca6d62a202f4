"""Route dependencies: the database session and the one place where authorisation is decided.

Every route names what it needs as an ``Annotated`` alias — ``SessionDep`` for a transaction,
``AdminDep``, ``CurrentTenant`` or ``CurrentNode`` for its caller — and gets nothing else.
The rules, all here:

- no token, or one nobody issued (or revoked): 401;
- a valid token of another role: 403 (an admin token on a tenant route, a node token on an
  admin route, ...);
- a node token on another node's path: 404, as if that node did not exist; tenants are
  confined to their own rows by the services, which take the tenant's id from
  ``CurrentTenant`` and answer 404 for any row outside it.

Credentials are checked in a short transaction of their own, on the event loop (see
``_principal``), so a long-poll holds no database connection while it waits. Each request
that needs one gets one transaction (``SessionDep``): it commits when the route returns and
rolls back on any error; a concurrent writer's win surfaces as 412, a taken name as 409.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from api.auth import Principal, identify
from api.errors import Conflict, Forbidden, NotFound, PreconditionFailed, Unauthorized
from api.state import AppState, app_state, state_of

# One security scheme per role, so the OpenAPI document says which token each route takes.
_admin_scheme = HTTPBearer(
    scheme_name="AdminToken", description="settings.api.admin_token", auto_error=False
)
_tenant_scheme = HTTPBearer(
    scheme_name="TenantKey", description="a tenant API key (gft_...)", auto_error=False
)
_node_scheme = HTTPBearer(
    scheme_name="NodeToken", description="a node token (gfn_...)", auto_error=False
)

Credentials = HTTPAuthorizationCredentials | None
StateDep = Annotated[AppState, Depends(app_state)]


def _session(request: Request) -> Iterator[Session]:
    state = state_of(request)
    try:
        with state.db.session(write=request.method not in ("GET", "HEAD")) as session:
            yield session
    except StaleDataError as exc:
        raise PreconditionFailed(
            "the resource was changed by another request; read it again and retry"
        ) from exc
    except IntegrityError as exc:
        raise Conflict("the change conflicts with existing data (a name already taken?)") from exc


# scope="function": the transaction commits before the response is sent, so a failed commit
# becomes an error response rather than a 200 for a change that was never stored.
SessionDep = Annotated[Session, Depends(_session, scope="function")]


def _identify(state: AppState, token: str) -> Principal | None:
    with state.db.connection() as connection:
        return identify(session=connection, token=token, config=state.config)


async def _principal(state: AppState, credentials: Credentials, role: str) -> Principal:
    if credentials is None or not credentials.credentials:
        raise Unauthorized(f"this route needs a bearer {role} token")
    # An indexed read of well under a millisecond, done on the event loop: handing it to a
    # worker thread costs more (a GIL hand-off can wait out Python's 5 ms switch interval)
    # than the loop loses while it runs.
    principal = _identify(state, credentials.credentials)
    if principal is None:
        raise Unauthorized("unknown or revoked token")
    if principal.role != role:
        raise Forbidden(f"this route is for the {role}, not a {principal.role}")
    return principal


async def _admin(
    state: StateDep, credentials: Annotated[Credentials, Depends(_admin_scheme)]
) -> None:
    await _principal(state, credentials, "admin")


async def _tenant(
    state: StateDep, credentials: Annotated[Credentials, Depends(_tenant_scheme)]
) -> Principal:
    return await _principal(state, credentials, "tenant")


async def _node(
    request: Request,
    state: StateDep,
    credentials: Annotated[Credentials, Depends(_node_scheme)],
) -> Principal:
    principal = await _principal(state, credentials, "node")
    # A node's routes are under /nodes/{node}: another node's path does not exist for it.
    if request.path_params.get("node") != principal.name:
        raise NotFound(f"node {request.path_params.get('node')!r} not found")
    return principal


AdminDep = Annotated[None, Depends(_admin)]
CurrentTenant = Annotated[Principal, Depends(_tenant)]
CurrentNode = Annotated[Principal, Depends(_node)]
