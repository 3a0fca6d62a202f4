"""``/v1/routes``: the routing table of every seated model's replicas, for the data plane's
routers (``gpufair gateway``) and clients (:mod:`gpufair.client`).

Long-polled like a node's plan (:mod:`api.longpoll`): a router holds ``GET /v1/routes?wait=S``
with ``If-None-Match`` of the table it routes by and gets the next one as soon as an
allocation is stored or a daemon advertises another URL. It takes the admin token: the table
names every tenant's models and every node's address. ``GET /v1/routes/me`` is the same for a
tenant's key, listing its own models only: what :mod:`gpufair.client` routes by.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response

from api.deps import AdminDep, StateDep, TenantOutsideTransaction
from api.longpoll import LongPollWait, long_poll
from api.services.dataplane import content_etag, routing_table
from api.state import AppState
from executor.wire.routes import RoutingTable

router = APIRouter(prefix="/routes")


IfNoneMatch = Annotated[str | None, Header()]


async def _long_poll_routes(
    state: AppState, tenant_id: int | None, wait: float, if_none_match: str | None
) -> Response:
    async def read() -> tuple[str, Any]:
        table = await state.db.read(
            lambda connection: routing_table(session=connection, tenant_id=tenant_id)
        )
        return content_etag("routes", table), table.model_dump(mode="json")

    return await long_poll(state, read=read, wait=wait, if_none_match=if_none_match, rechecks=True)


@router.get("", tags=["admin"], responses={200: {"model": RoutingTable}, 304: {}})
async def read_routes(
    _: AdminDep, state: StateDep, wait: LongPollWait = 0.0, if_none_match: IfNoneMatch = None
) -> Response:
    """Model id -> its tenant and replicas (node, the daemon's advertised URL, device, seat,
    dedicated streams, pool weight) in the newest allocation; with ``If-None-Match`` of the
    current ETag, 304 after waiting up to ``wait`` seconds for a different table."""
    return await _long_poll_routes(state, None, wait, if_none_match)


@router.get("/me", tags=["tenant"], responses={200: {"model": RoutingTable}, 304: {}})
async def read_my_routes(
    me: TenantOutsideTransaction,
    state: StateDep,
    wait: LongPollWait = 0.0,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The routing table of your own models, long-polled as ``GET /v1/routes``: the newest
    allocation's replicas of the tenant it seated under your id (a tenant re-created under a
    deleted one's name sees none of its predecessor's)."""
    return await _long_poll_routes(state, me.id, wait, if_none_match)
