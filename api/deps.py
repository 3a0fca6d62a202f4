"""Route dependencies: the database session and the one place where authorisation is decided.

Every route names what it needs as an ``Annotated`` alias — ``SessionDep`` for a transaction,
``AdminDep``, ``CurrentTenant`` or ``CurrentNode`` for its caller — and gets nothing else.
The rules, all here:

- no token, or one nobody issued (or revoked, or expired): 401; an address that presented
  too many such tokens lately: 429 for any token (:mod:`api.ratelimit`);
- a valid token of another role: 403 (an admin token on a tenant route, a node token on an
  admin route, ...);
- a node token on another node's path: 404, as if that node did not exist; tenants are
  confined to their own rows by the services, which take the tenant's id from
  ``CurrentTenant`` and answer 404 for any row outside it.

No database call runs on the event loop (see :mod:`api.db`). Each request that needs the
database gets one transaction (``SessionDep``) under one of the gate's slots: its credentials
are checked in it (one worker-thread call) unless the process found the same token within the
last second (:mod:`api.credential_cache`: no call at all), the route's work runs in it (a
plain function, marked :func:`in_one_worker_call`, run with its reply's validation and its
commit in a second call), and it commits when the route returns and rolls back on any error; a
concurrent writer's win surfaces as 412, a taken name as 409, a busy database as 503. The admin
token needs no database at all. The credentials long-poll (``PollingNode``) checks its token in
a slot of its own and holds none while it waits; the plan long-poll (``UnidentifiedNode``)
checks it in its first read's slot and worker-thread call, with the same answers. Either checks
the token once, when the request arrives: a token revoked while its long-poll is held is
refused from the daemon's next request on, so a held long-poll may still send the plan a solve
stores during its wait (at most ``config.max_long_poll_s`` after the revocation).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from sqlite3 import SQLITE_CONSTRAINT_FOREIGNKEY
from typing import Annotated, ParamSpec, TypeVar, get_type_hints

from fastapi import Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, identify_until, is_admin
from api.errors import Conflict, Forbidden, NotFound, PreconditionFailed, Unauthorized
from api.state import AppState, app_state, state_of

# How each backend tells that a row names one that is not there (a foreign key).
FOREIGN_KEY_VIOLATION = "23503"  # PostgreSQL's SQLSTATE

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


def _end(session: Session, *, commit: bool) -> None:
    """Commit (or roll back) and give the connection back: one hop to a worker thread."""
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


def _refers_to_a_deleted_row(exc: IntegrityError) -> bool:
    """Whether the database refused a row for naming one that is not there: on PostgreSQL, a
    row (a tenant, model or node) deleted by a transaction that committed after this request
    read it, so the request's own checks found it."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    sqlite_code = getattr(exc.orig, "sqlite_errorcode", None)
    return sqlstate == FOREIGN_KEY_VIOLATION or sqlite_code == SQLITE_CONSTRAINT_FOREIGNKEY


@contextmanager
def commit_errors() -> Iterator[None]:
    """A concurrent writer's win as 412, a row deleted meanwhile as 404, a taken name as 409."""
    try:
        yield
    except StaleDataError as exc:
        raise PreconditionFailed(
            "the resource was changed by another request; read it again and retry"
        ) from exc
    except IntegrityError as exc:
        if _refers_to_a_deleted_row(exc):
            raise NotFound(
                "what this request refers to (a tenant, model or node) was deleted by another "
                "request meanwhile; nothing was changed"
            ) from exc
        raise Conflict("the change conflicts with existing data (a name already taken?)") from exc


async def _session(request: Request) -> AsyncIterator[Session]:
    state = state_of(request)
    write = request.method not in ("GET", "HEAD")
    async with state.db.slot(write=write):
        session = state.db.new_session(write=write)
        with commit_errors():
            try:
                yield session
            except BaseException:
                await run_in_threadpool(_end, session, commit=False)
                raise
            if session.in_transaction():
                await run_in_threadpool(_end, session, commit=True)
            else:
                # Committed in the route's own worker call (in_one_worker_call): the session
                # holds no connection, so closing it is bookkeeping, not a database call.
                session.close()


# scope="function": the transaction commits before the response is sent, so a failed commit
# becomes an error response rather than a 200 for a change that was never stored.
SessionDep = Annotated[Session, Depends(_session, scope="function")]

P = ParamSpec("P")
T = TypeVar("T")


def in_one_worker_call(endpoint: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """A route that takes ``SessionDep``, run with its reply's validation and its commit in one
    worker-thread call.

    FastAPI runs a plain route function in a worker thread, then validates what it returned
    in another (a plain route's reply may read the database), and the session's commit takes
    a third: three hops between the event loop and the thread pool, each a wait for the GIL
    when the server is busy. The wrapper is a coroutine to FastAPI (which then validates the
    already validated reply on the loop, a check of instances), and does all three in one
    call; the session dependency then finds the transaction over and closes it without a
    hop. A route that raises commits nothing: the dependency rolls back, as before.
    """
    returned = get_type_hints(endpoint).get("return")
    replies_itself = isinstance(returned, type) and issubclass(returned, Response)
    reply = None if returned is None or replies_itself else TypeAdapter(returned)

    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        result = endpoint(*args, **kwargs)
        if reply is not None:
            result = reply.validate_python(result, from_attributes=True)
        session = kwargs.get("session")
        if isinstance(session, Session):
            with commit_errors():
                session.commit()
        return result

    @functools.wraps(endpoint)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return await run_in_threadpool(call, *args, **kwargs)

    return run


def client_address(request: Request) -> str:
    """The address failed credentials are counted against (api.ratelimit)."""
    return request.client.host if request.client is not None else "unknown"


def _token(request: Request, state: AppState, credentials: Credentials, role: str) -> str:
    """The bearer token; 401 without one, 429 when its address failed too often lately."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized(f"this route needs a bearer {role} token")
    state.failed_credentials.check(client_address(request))
    return credentials.credentials


def _identify(state: AppState, token: str) -> Callable[[Session | Connection], Principal | None]:
    """Who ``token`` belongs to now, asked on a session or connection (keys may expire), and
    kept in the process's credential cache when found."""
    now = state.clock()
    generation = state.credentials.generation

    def lookup(connection: Session | Connection) -> Principal | None:
        principal, expires_at = identify_until(
            session=connection, token=token, config=state.config, now=now
        )
        if principal is not None:
            state.credentials.keep(
                token, principal, key_expires_at=expires_at, generation=generation
            )
        return principal

    return lookup


async def _known(state: AppState, token: str, session: Session | None = None) -> Principal | None:
    """Who ``token`` belongs to: from the credential cache (no database call, no thread hop)
    or, failing that, looked up in a worker thread — in the request's own transaction
    (``session``), or in a read of its own under a slot for a route that holds none."""
    kept = state.credentials.get(token, state.clock())
    if kept is not None:
        return kept
    if session is None:
        return await state.db.read(_identify(state, token))
    return await run_in_threadpool(_identify(state, token), session)


def _check_role(
    request: Request, state: AppState, principal: Principal | None, role: str
) -> Principal:
    if principal is None:
        state.failed_credentials.failed(client_address(request))
        raise Unauthorized("unknown, revoked or expired token")
    if principal.role == "inference":  # a valid key, not a guess: not a failed credential
        raise Unauthorized(
            "an inference-only key (gfi_...) is for queries to the daemons and the gateway; "
            "the control plane takes the tenant's API key (gft_...)"
        )
    if principal.role != role:
        raise Forbidden(f"this route is for the {role}, not the {principal.role}")
    return principal


async def _admin(
    request: Request, state: StateDep, credentials: Annotated[Credentials, Depends(_admin_scheme)]
) -> None:
    token = _token(request, state, credentials, "admin")
    if is_admin(token, state.config):
        return
    # Not the admin: whose token it is decides between 401 and 403.
    principal = await _known(state, token)
    _check_role(request, state, principal, "admin")


async def _tenant(
    request: Request,
    state: StateDep,
    session: SessionDep,
    credentials: Annotated[Credentials, Depends(_tenant_scheme)],
) -> Principal:
    token = _token(request, state, credentials, "tenant")
    principal = await _known(state, token, session)
    return _check_role(request, state, principal, "tenant")


def _own_path(request: Request, principal: Principal) -> Principal:
    # A node's routes are under /nodes/{node}: another node's path does not exist for it.
    if request.path_params.get("node") != principal.name:
        raise NotFound(f"node {request.path_params.get('node')!r} not found")
    return principal


async def _node(
    request: Request,
    state: StateDep,
    session: SessionDep,
    credentials: Annotated[Credentials, Depends(_node_scheme)],
) -> Principal:
    token = _token(request, state, credentials, "node")
    principal = await _known(state, token, session)
    return _own_path(request, _check_role(request, state, principal, "node"))


async def _tenant_outside_transaction(
    request: Request,
    state: StateDep,
    credentials: Annotated[Credentials, Depends(_tenant_scheme)],
) -> Principal:
    token = _token(request, state, credentials, "tenant")
    principal = await _known(state, token)
    return _check_role(request, state, principal, "tenant")


async def _polling_node(
    request: Request,
    state: StateDep,
    credentials: Annotated[Credentials, Depends(_node_scheme)],
) -> Principal:
    token = _token(request, state, credentials, "node")
    principal = await _known(state, token)
    return _own_path(request, _check_role(request, state, principal, "node"))


@dataclass(frozen=True)
class NodeCaller:
    """A node route's bearer token, not identified yet: the route identifies it in the same
    worker-thread call as its first read (:meth:`identify`, then :meth:`authorise` on the
    loop), one hop to a worker thread and one slot instead of two of each. The plan long-poll
    takes it: after a solve, each of a hundred nodes polls again at once, and each hop is a
    turn for the GIL and the event loop."""

    request: Request
    state: AppState
    token: str

    def identify(self, connection: Session | Connection) -> Principal | None:
        """Who the token belongs to now (blocking: in the route's worker-thread call)."""
        return _identify(self.state, self.token)(connection)

    def may_read(self, principal: Principal) -> bool:
        """Whether :meth:`authorise` will accept ``principal``: the route reads for it only
        then, in the same call."""
        return principal.role == "node" and principal.name == self.request.path_params.get("node")

    def authorise(self, principal: Principal | None) -> Principal:
        """The node, or the same 401, 403 or 404 as :data:`CurrentNode` (on the event loop)."""
        return _own_path(self.request, _check_role(self.request, self.state, principal, "node"))


async def _node_caller(
    request: Request,
    state: StateDep,
    credentials: Annotated[Credentials, Depends(_node_scheme)],
) -> NodeCaller:
    return NodeCaller(request, state, _token(request, state, credentials, "node"))


AdminDep = Annotated[None, Depends(_admin)]
CurrentTenant = Annotated[Principal, Depends(_tenant)]
CurrentNode = Annotated[Principal, Depends(_node)]
# The node of a route that holds no transaction (the plan long-poll).
PollingNode = Annotated[Principal, Depends(_polling_node)]
# The node of a route that identifies it in its own first read (the plan long-poll).
UnidentifiedNode = Annotated[NodeCaller, Depends(_node_caller)]
# The tenant of a route that holds no transaction while it works (the artifact upload, whose
# sandboxed check takes seconds); it opens its own.
TenantOutsideTransaction = Annotated[Principal, Depends(_tenant_outside_transaction)]

# ``If-Match`` of a PATCH or DELETE of a tenant or model: required (api.services.revisions
# answers 428 without it), declared optional so that its absence is that 428, not a 422.
IfMatch = Annotated[
    str | None,
    Header(
        description="required: the ETag read (a stale one gets 412; none, 428), or * to "
        "overwrite whatever is there"
    ),
]
# ``If-Match`` where it is optional (the artifact upload): checked when sent.
OptionalIfMatch = Annotated[
    str | None, Header(description="optional: the ETag read; a stale one gets 412")
]
