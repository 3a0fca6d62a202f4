"""``gpufair gateway``: one address for every tenant's queries, in front of every node's daemon.

A thin reverse proxy (Starlette on uvicorn with httptools and uvloop; to the daemons,
kept-alive HTTP/1.1 connections written and read as bytes, :mod:`gpufair.upstream`). It follows the
API's routing table (``GET /v1/routes``, long-polled with its ETag, with the admin token) and
sends each query to the least-loaded live replica of its model (:mod:`gpufair.routing`):

- the request body is streamed through as it arrives, never parsed; the bytes already sent are
  kept until the answer comes, so a query can be sent again;
- the query's ``Authorization`` travels with it: the daemon checks the tenant's key
  (:mod:`executor.credentials`), so a key of another tenant is 403 here as on the daemon; a
  query with no ``Authorization`` at all is refused here (401) before its body is read;
- the daemon's answer comes back as it is (status, body, ``Retry-After`` of a 429 included);
- a query refused with 503 (the replica is gone or draining) or whose daemon failed at the
  transport (connection refused or reset: the daemon died) is sent once more, to another
  replica; a transport failure also marks the daemon dead (no query for ``DEAD_S``). A query
  that found no replica is answered 503 with ``Retry-After``, one that failed twice 502, and
  one whose daemon did not answer in ``--timeout-s`` 504 (it is not retried: it may be
  running);
- a model the table does not list is 404.

``GET /healthz`` says which routing table the gateway follows (503 before the first), which
daemons it holds dead and how many queries are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from executor.wire.routes import RoutingTable
from gpufair.routing import ROUTES_WAIT_S, Pick, Routes
from gpufair.upstream import Answer, Gone, Upstream

log = logging.getLogger(__name__)

# Answer headers the gateway's own server writes (the connection's are dropped upstream).
SERVERS_OWN = frozenset({b"date", b"server"})
MAX_BACKOFF_S = 10.0


class ReplayableBody:
    """A request's body streamed to a daemon as it arrives, and again from its first byte to
    a second daemon if the first failed: the chunks read so far are kept for that."""

    def __init__(self, request: Request) -> None:
        self._source = request.stream()
        self._chunks: list[bytes] = []
        self._complete = False

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in list(self._chunks):
            yield chunk
        if not self._complete:
            async for chunk in self._source:
                self._chunks.append(chunk)
                yield chunk
            self._complete = True


def _relay(answer: Answer) -> Response:
    """The daemon's answer as it is, less the headers of its connection."""
    response = Response(answer.content, status_code=answer.status)
    response.raw_headers += [(k, v) for k, v in answer.headers if k not in SERVERS_OWN]
    return response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def follow_routes(
    client: httpx.AsyncClient, routes: Routes, *, wait_s: float = ROUTES_WAIT_S
) -> None:
    """Long-poll ``/v1/routes`` for ever, handing each new table to ``routes``."""
    failures = 0
    while True:
        headers = {"If-None-Match": routes.etag} if routes.etag else {}
        try:
            response = await client.get(
                "/v1/routes", params={"wait": f"{wait_s:g}"}, headers=headers
            )
            if response.status_code != 304:
                response.raise_for_status()
                table = RoutingTable.model_validate_json(response.content)
                routes.update(table, response.headers.get("ETag"))
                log.info("routing table of allocation %d: %d model(s)", table.version,
                         len(table.models))  # fmt: skip
            failures = 0
        except (httpx.HTTPError, ValueError) as exc:
            failures += 1
            backoff = min(MAX_BACKOFF_S, 0.25 * 2**failures)
            log.warning("routing table pull failed (%s); retry in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)


def create_gateway_app(
    api_url: str,
    token: str,
    *,
    timeout_s: float = 30.0,
    routes: Routes | None = None,
    routes_wait_s: float = ROUTES_WAIT_S,
) -> Starlette:
    """The gateway's ASGI app: routes from the API at ``api_url`` (read with the admin
    ``token``), queries to the daemons, each answered within ``timeout_s``."""
    table = routes or Routes()
    upstream = Upstream(connect_timeout_s=min(timeout_s, 2.0))

    async def send(request: Request, pick: Pick, body: ReplayableBody | None) -> Answer:
        query = request.scope.get("query_string", b"")
        target = request.scope["raw_path"].decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        declared = request.headers.get("content-length", "")
        return await asyncio.wait_for(
            upstream.exchange(
                pick.url, request.method, target, request.headers.raw,
                body.stream if body is not None else None,
                int(declared) if declared.isdigit() else None,
            ),
            timeout_s,
        )  # fmt: skip

    async def proxy(request: Request) -> Response:
        model = request.path_params["model"]
        if request.method == "POST" and "authorization" not in request.headers:
            return _error(401, "send a key of the model's tenant: Authorization: Bearer <key>",
                          {"WWW-Authenticate": "Bearer"})  # fmt: skip
        if not table.knows(model):
            if not table.received:
                return _error(503, "the gateway has no routing table yet", {"Retry-After": "1"})
            return _error(404, f"model {model!r} is not served (not in the routing table)")
        body = ReplayableBody(request) if request.method == "POST" else None
        tried: set[str] = set()
        failure = ""
        refused: Answer | None = None  # a 503, answered as it is if no retry can be
        for attempt in range(2):
            pick = table.pick(model, frozenset(tried))
            if pick is None:
                break
            tried.add(pick.url)
            try:
                response = await send(request, pick, body)
            except TimeoutError:
                return _error(504, f"node {pick.node} did not answer in {timeout_s:g} s")
            except Gone as exc:
                table.failed(pick.url)
                failure = f"node {pick.node}: {exc}"
                log.warning("%s; marked dead for a while, query sent elsewhere", failure)
                continue
            finally:
                table.done(pick)
            if response.status == 503 and attempt == 0:
                refused = response
                continue
            return _relay(response)
        if refused is not None:
            return _relay(refused)
        if failure:
            return _error(502, f"model {model!r}: no replica answered ({failure})")
        return _error(503, f"model {model!r}: no live replica now", {"Retry-After": "1"})

    async def healthz(request: Request) -> Response:
        document = {
            "routes_version": table.table.version,
            "models": len(table.table.models),
            "dead": table.dead(),
            "in_flight": table.in_flight(),
        }
        return JSONResponse(document, status_code=200 if table.received else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, read=routes_wait_s + 10.0),
        ) as api:
            follower = asyncio.create_task(follow_routes(api, table, wait_s=routes_wait_s))
            try:
                yield
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
                upstream.close()

    methods = ["GET", "POST"]
    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/v1/models/{model}/{rest:path}", proxy, methods=methods),
            Route("/v2/models/{model}", proxy, methods=methods),
            Route("/v2/models/{model}/{rest:path}", proxy, methods=methods),
        ],
        lifespan=lifespan,
    )
