"""``/v1/routes``: the routing table of every seated model's replicas, for the data plane's
routers (``gpufair gateway``) and clients (:mod:`gpufair.client`).

Long-polled like a node's plan (:mod:`api.longpoll`): a router holds ``GET /v1/routes?wait=S``
with ``If-None-Match`` of the table it routes by and gets the next one as soon as an
allocation is stored or a daemon advertises another URL. It takes the admin token: the table
names every tenant's models and every node's address.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from api.deps import AdminDep, StateDep
from api.longpoll import long_poll
from api.services.dataplane import content_etag, routing_table
from executor.wire.routes import RoutingTable

router = APIRouter(prefix="/routes")


@router.get("", tags=["admin"], responses={200: {"model": RoutingTable}, 304: {}})
async def read_routes(
    _: AdminDep,
    state: StateDep,
    wait: Annotated[float, Query(ge=0, le=3600, description="long-poll seconds")] = 0.0,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Model id -> its tenant and replicas (node, the daemon's advertised URL, device, seat,
    dedicated streams, pool weight) in the newest allocation; with ``If-None-Match`` of the
    current ETag, 304 after waiting up to ``wait`` seconds for a different table."""

    async def read() -> tuple[str, Any]:
        table = await state.db.read(lambda connection: routing_table(session=connection))
        return content_etag("routes", table), table.model_dump(mode="json")

    return await long_poll(state, read=read, wait=wait, if_none_match=if_none_match)
