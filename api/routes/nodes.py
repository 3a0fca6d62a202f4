"""``/v1/nodes``: the admin registers nodes; each node's daemon pulls its plan and reports back.

The plan route is the node protocol's hot path: one indexed read, an ETag equal to the plan's
version, ``If-None-Match`` answered with 304, and ``?wait=S`` holding the request until the
plan changes or S seconds pass (:mod:`api.longpoll`). The node's data-plane credentials
(:mod:`api.services.dataplane`) are long-polled the same way.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from sqlalchemy import Connection

from api.auth import Principal
from api.deps import (
    AdminDep,
    CurrentNode,
    PollingNode,
    SessionDep,
    StateDep,
    UnidentifiedNode,
    in_one_worker_call,
)
from api.idempotency import IdempotencyKey, fingerprint, remember, replay_if_known
from api.longpoll import LongPollWait, long_poll
from api.models import NodeRow
from api.openapi import errors
from api.pagination import NEXT_LINK, Page, next_page
from api.schemas import (
    NAME_PATTERN,
    HeartbeatReply,
    NodeCreate,
    NodeCreated,
    NodePublic,
    PathId,
    ProfilesStored,
)
from api.services import nodes as service
from api.services.dataplane import content_etag, credential_document
from api.services.plans import plan_body_unless_current, plan_etag, plan_version_named
from executor.wire.credentials import CredentialDocument
from executor.wire.heartbeat import Heartbeat
from executor.wire.profiles import ProfilesPut

router = APIRouter(prefix="/nodes")
NodeName = Annotated[str, Path(pattern=NAME_PATTERN)]


def _created(node: NodeRow, token: str) -> NodeCreated:
    return NodeCreated.model_validate(
        {**NodePublic.model_validate(node).model_dump(), "token": token}
    )


@router.post(
    "", status_code=status.HTTP_201_CREATED, tags=["admin"],
    responses=errors(409, s409="the name is taken"),
)  # fmt: skip
@in_one_worker_call
def create_node(
    request: Request,
    data: NodeCreate,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    idempotency_key: IdempotencyKey = None,
) -> NodeCreated:
    """Register a node and its devices; the reply carries the node token, shown once (so a
    retry with the same ``Idempotency-Key`` is 409, not the token again)."""
    print_, now = fingerprint(request, data), state.clock()
    replay_if_known(session=session, owner="admin", key=idempotency_key, print_=print_, now=now)
    created = _created(*service.create_node(session=session, data=data))
    remember(session=session, owner="admin", key=idempotency_key, print_=print_, status=201,
             body=None, now=now)  # fmt: skip
    return created


@router.get("", tags=["admin"], responses=NEXT_LINK)
@in_one_worker_call
def list_nodes(
    request: Request,
    response: Response,
    _: AdminDep,
    session: SessionDep,
    page: Page,
    behind: Annotated[
        bool | None,
        Query(description="only nodes not serving their newest plan (true), or the others"),
    ] = None,
) -> list[NodePublic]:
    """Nodes with their devices, last heartbeat and the plan version they serve; a page by id
    (``limit``, ``after``; ``Link`` to the next)."""
    rows = service.list_nodes(
        session=session, limit=page.limit + 1, after=page.after, behind=behind
    )
    rows = next_page(
        request, response, rows, limit=page.limit, cursor="after", key=lambda r: r.id
    )
    return [NodePublic.model_validate(n) for n in rows]


@router.get("/{node}", tags=["admin"])
@in_one_worker_call
def read_node(node: NodeName, _: AdminDep, session: SessionDep) -> NodePublic:
    """One node with its devices and its last heartbeat's report."""
    return NodePublic.model_validate(service.get_node_or_raise(session=session, name=node))


@router.post("/{node}/token", tags=["admin"])
@in_one_worker_call
def rotate_token(node: NodeName, _: AdminDep, session: SessionDep) -> NodeCreated:
    """Issue a new token for the node; the old one is refused from now on."""
    return _created(*service.rotate_token(session=session, name=node))


@router.get(
    "/{node}/plan",
    tags=["node"],
    responses={200: {"description": "the node's plan (allocator.cluster.plan.NodePlan)"}, 304: {}},
)
async def read_plan(
    node: NodeName,
    caller: UnidentifiedNode,
    state: StateDep,
    wait: LongPollWait = 0.0,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The node's newest plan; with ``If-None-Match`` of the current ETag, 304, after waiting
    up to ``wait`` seconds for a newer one. A held request looks again only when woken: at once
    by this process's solve, within about ``RECHECK_S`` by the app's watcher of plans stored
    by any process (:class:`api.services.plans.StoredPlanWatcher`), and at its deadline."""

    def first_read(connection: Connection) -> tuple[Principal | None, tuple[int, bytes | None]]:
        # The token identified and, if it may, the plan read, in one worker-thread call.
        principal = caller.identify(connection)
        if principal is None or not caller.may_read(principal):
            return principal, (0, None)
        return principal, read_body(connection, principal)

    def read_body(connection: Connection, me: Principal) -> tuple[int, bytes | None]:
        return plan_body_unless_current(
            session=connection,
            node_id=me.id,
            node_name=me.name,
            if_none_match=if_none_match,
            rendered=state.rendered_plans,
        )

    me: Principal | None = None
    held = plan_version_named(if_none_match)

    async def read() -> tuple[str, bytes | None]:
        nonlocal me
        if me is None:
            # The first read, inside the long-poll so that a wake-up during it is not lost;
            # a token refused here raises before anything is sent.
            principal, (version, body) = await state.db.read(first_read)
            me = caller.authorise(principal)
            return plan_etag(version), body
        # Held and woken: a plan this process committed since, newer than the daemon's, is
        # sent as kept; a solve's wake-up then reads nothing for its 100 nodes.
        if held is not None:
            kept = state.rendered_plans.newer_than(node_id=me.id, version=held)
            if kept is not None:
                return plan_etag(kept[0]), kept[1]
        version, body = await state.db.read(partial(read_body, me=me))
        return plan_etag(version), body

    return await long_poll(
        state, read=read, wait=wait, if_none_match=if_none_match, rechecks=False
    )


@router.get(
    "/{node}/credentials",
    tags=["node"],
    responses={200: {"model": CredentialDocument}, 304: {}},
)
async def read_credentials(
    node: NodeName,
    me: PollingNode,
    state: StateDep,
    wait: LongPollWait = 0.0,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The data plane's credentials of this node (executor.wire.credentials): the salted
    hashes of the usable keys of each tenant its plans seat. Long-polled like the plan; a key
    issued, revoked or expired changes it at the latest at the wait's next recheck (about
    ``RECHECK_S``: an expiry wakes nothing, so this long-poll looks again on its own)."""

    async def read() -> tuple[str, Any]:
        document = await state.db.read(
            lambda connection: credential_document(
                session=connection, node_id=me.id, now=state.clock()
            )
        )
        return content_etag("credentials", document), document.model_dump(mode="json")

    return await long_poll(state, read=read, wait=wait, if_none_match=if_none_match, rechecks=True)


@router.post(
    "/{node}/heartbeat",
    tags=["node"],
    responses=errors(403, s403="another role's token, or SLA counts for a tenant and model "
                     "no recent plan of this node seats (`forbidden`)"),
)
@in_one_worker_call
def heartbeat(
    node: NodeName, data: Heartbeat, me: CurrentNode, session: SessionDep, state: StateDep
) -> HeartbeatReply:
    """Record the daemon's state and its SLA counts; the reply says whether a newer plan
    waits."""
    now = state.clock()
    history = timedelta(seconds=state.config.sla_history_s)
    _, version = service.record_heartbeat(
        session=session,
        node_id=me.id,
        data=data,
        now=now,
        prune_before=now - history if state.sla_prune.due(now) else None,
    )
    return HeartbeatReply(current_version=version, etag=plan_etag(version))


@router.put(
    "/{node}/profiles",
    tags=["node"],
    responses=errors(403, s403="another role's token, or a model no recent plan of this node "
                     "seats (`forbidden`)"),
)
@in_one_worker_call
def put_profiles(
    node: NodeName, data: ProfilesPut, me: CurrentNode, session: SessionDep
) -> ProfilesStored:
    """Store measured QPS-vs-streams curves; the next solve values seats and pools by them."""
    return ProfilesStored(
        stored=service.store_profiles(
            session=session, node_id=me.id, entries=data.profiles, footprints=data.footprints
        )
    )


@router.get(
    "/{node}/artifacts/{model}",
    tags=["node"],
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
@in_one_worker_call
def download_artifact(
    node: NodeName, model: PathId, me: CurrentNode, session: SessionDep
) -> Response:
    """The uploaded TorchScript file of a model seated in this node's current plan."""
    row = service.artifact_for_node(
        session=session, node_id=me.id, node_name=me.name, model_id=model
    )
    return Response(
        row.data,
        media_type="application/octet-stream",
        headers={"ETag": f'"{row.sha256}"', "X-Artifact-Sha256": row.sha256},
    )
