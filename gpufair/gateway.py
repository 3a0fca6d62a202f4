"""``gpufair gateway``: one address for every tenant's queries, in front of every node's daemon.

A thin reverse proxy (Starlette on uvicorn with httptools and uvloop; to the daemons,
kept-alive HTTP/1.1 connections written and read as bytes, :mod:`gpufair.upstream`). It follows the
API's routing table (``GET /v1/routes``, long-polled with its ETag, with the admin token) and
sends each query to the least-loaded live replica of its model (:mod:`gpufair.routing`):

- the request body is streamed through as it arrives, never parsed; the bytes already sent are
  kept until the answer comes, so a query can be sent again. A body over ``--max-body-bytes``
  (the daemons' own limit by default) is refused here (413), by its declared length before
  any daemon is asked, so that a daemon refusing it mid-upload is not taken for a dead one;
  and while the bodies kept add up to ``--max-buffered-bytes`` a new query is answered 503
  with ``Retry-After``, so a flood of large bodies cannot exhaust the gateway's memory;
- the client's ``Expect`` is not forwarded (the gateway's own server has answered it; the
  upstream client sends its own with a large body, :mod:`gpufair.upstream`, so that a daemon
  refusing a query before its body answers before any of it is sent); ``HEAD`` is asked of
  the daemon as ``GET`` (the answer's body is read by its length, which a ``HEAD`` answer
  declares and never sends);
- the query's ``Authorization`` travels with it: the daemon checks the tenant's key
  (:mod:`executor.credentials`), so a key of another tenant is 403 here as on the daemon; a
  query with no ``Authorization`` at all is refused here (401) before its body is read;
- the daemon's answer comes back as it is (status, body, ``Retry-After`` of a 429 included);
- a query refused with 503 (the replica is draining or its plan loading) or 404 (its node
  has not fetched the plan that brings the model yet), or whose daemon failed at the
  transport (connection refused or reset: the daemon died), is sent once more, to another
  replica (:data:`gpufair.routing.TRY_ANOTHER_REPLICA`); a transport failure also marks the
  daemon dead (no query for ``DEAD_S``). A query that found no replica is answered 503 with
  ``Retry-After``, one that failed twice 502, and one whose daemon did not answer in
  ``--timeout-s`` 504 (it is not retried: it may be running), but 408 if it was the client's
  body that had not come in whole by then;
- a model the table does not list is 404; every error the gateway gives itself is JSON,
  ``{"error": message}``, an unknown path (404) and a wrong method (405) included;
- a daemon's answer over :data:`gpufair.upstream.MAX_ANSWER_BYTES` (a few kB is usual), and a
  replica whose URL is not ``http://`` (no TLS is spoken to the daemons), fail as a daemon
  gone does: the replica is held dead, the query sent elsewhere, the error says why.

The routing table's follower never stops while the gateway runs: a failed pull, whatever
the error (an unexpected one logged with its traceback), is retried with a backoff, and logged
once when pulls start to fail or fail otherwise (:mod:`executor.wire.apilink`); after a
table that came without an ETag to long-poll with (a proxy in between may drop it), the next
pull waits a backoff too, rather than being answered at once again and again.

``GET /healthz`` says which routing table the gateway follows (503 before the first), why the
last pull of the table failed (``routes_error``; null once one succeeds), which daemons it
holds dead, how many queries are in flight and how many body bytes it holds for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from executor.wire.apilink import ApiLink
from gpufair.routes_pull import RoutesPullFailed, one_line, pull_routes
from gpufair.routing import ROUTES_WAIT_S, TRY_ANOTHER_REPLICA, Pick, Routes
from gpufair.upstream import Answer, Gone, Upstream

log = logging.getLogger(__name__)

# Answer headers the gateway's own server writes (the connection's are dropped upstream).
SERVERS_OWN = frozenset({b"date", b"server"})
# Request headers not forwarded: the gateway's server has answered the client's Expect itself.
NOT_FORWARDED = frozenset({b"expect"})
MAX_BACKOFF_S = 10.0
ROUTES_PATH = "/v1/routes"  # the whole routing table, read with the admin token
# The daemons' own limit (executor.daemon.DEFAULT_MAX_BODY_BYTES, not imported: it pulls numpy).
MAX_BODY_BYTES = 64 * 1024 * 1024
# Half the gateway Deployment's memory limit (deploy/gateway.yaml: 1 GiB).
MAX_BUFFERED_BYTES = 512 * 1024 * 1024
# Answers the gateway gives while the client's body is still coming: its connection is closed
# after the answer, since the rest of that body is never read.
CLOSE = {"Connection": "close"}


class BodyTooLarge(Exception):
    """The query's body is over the gateway's limit: 413, the daemon is not at fault."""


class GatewayFull(Exception):
    """The bodies held for the queries in flight reached the gateway's budget: 503."""


@dataclass
class BodyBudget:
    """The body bytes every query in flight holds (kept for a retry), against a budget."""

    limit: int
    held: int = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise GatewayFull(f"the gateway holds {self.held} bytes of bodies already")
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


class ReplayableBody:
    """A request's body streamed to a daemon as it arrives, and again from its first byte to
    a second daemon if the first failed: the chunks read so far are kept for that, counted
    against ``budget`` until :meth:`release`, and the body is refused past ``limit`` bytes."""

    def __init__(self, request: Request, limit: int, budget: BodyBudget) -> None:
        self._source = request.stream()
        self._limit = limit
        self._budget = budget
        self._chunks: list[bytes] = []
        self._size = 0
        self._complete = False
        # Whether a read of the client's body is under way: a timeout then is the client's.
        self.awaiting_client = False

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in list(self._chunks):
            yield chunk
        while not self._complete:
            # Left set if the read is cancelled (the query's timeout): the client was late.
            self.awaiting_client = True
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                chunk = b""
                self._complete = True
            self.awaiting_client = False
            if not chunk:
                continue
            if self._size + len(chunk) > self._limit:
                raise BodyTooLarge(f"body exceeds {self._limit} bytes")
            self._budget.take(len(chunk))
            self._size += len(chunk)
            self._chunks.append(chunk)
            yield chunk

    def release(self) -> None:
        """The query is answered: its body's bytes leave the budget."""
        self._budget.give_back(self._size)
        self._chunks.clear()
        self._size = 0


def _relay(answer: Answer) -> Response:
    """The daemon's answer as it is, less the headers of its connection."""
    response = Response(answer.content, status_code=answer.status)
    response.raw_headers += [(k, v) for k, v in answer.headers if k not in SERVERS_OWN]
    return response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (an unknown path: 404, a wrong method: 405) in the JSON every
    other error of the gateway has, ``{"error": message}``, so a client reads them alike."""
    assert isinstance(exc, HTTPException)  # the only exception this handler is registered for
    if exc.status_code == 404:
        message = (f"no such path: {request.url.path} (the gateway serves "
                   "/v2/models/{model}..., /v1/models/{model}/... and /healthz)")  # fmt: skip
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {request.method} not allowed on {request.url.path} (allowed: {allowed})"
    else:
        message = exc.detail
    return _error(exc.status_code, message, dict(exc.headers or {}))


@dataclass
class RoutesPull:
    """How the routing table's pull goes: why the last one failed (None: it succeeded)."""

    error: str | None = None


def _backoff_s(failures: int) -> float:
    """How long to wait before the next pull of the routing table after ``failures`` in a row."""
    return min(MAX_BACKOFF_S, 0.25 * 2**failures)


async def follow_routes(
    client: httpx.AsyncClient,
    routes: Routes,
    *,
    wait_s: float = ROUTES_WAIT_S,
    pull: RoutesPull | None = None,
) -> None:
    """Long-poll ``/v1/routes`` for ever, handing each new table to ``routes`` and the outcome
    of each pull to ``pull``; a failure is retried with a backoff, the last table kept.

    No exception ends it (an unexpected one is logged with its traceback and retried like any
    failure): a follower gone would leave the gateway routing by a stale table for good. A
    table sent without an ETag (a proxy in between may drop it) cannot be long-polled, since
    the next pull would be answered at once: the next one waits a backoff instead."""
    pull = pull or RoutesPull()
    source = f"GET {str(client.base_url).rstrip('/')}{ROUTES_PATH}"
    link = ApiLink("routing table pulls", log)
    failures = 0  # in a row, for the backoff: failed pulls and tables without an ETag
    no_etag_told = False  # a proxy that drops the ETag drops it on every pull: one warning
    while True:
        try:
            followable = await pull_routes(client, ROUTES_PATH, routes, wait_s)
        except RoutesPullFailed as exc:
            failures += 1
            pull.error = str(exc)
            link.failed(pull.error, f"retry in {_backoff_s(failures):.1f}s")
        except Exception as exc:
            failures += 1
            pull.error = one_line(f"{source}: {type(exc).__name__}: {exc}")
            log.exception("routing table pull failed unexpectedly (%s); retry in %.1fs",
                          pull.error, _backoff_s(failures))  # fmt: skip
            link.failed(pull.error, "logged above", announced=True)  # a bug: every time
        else:
            pull.error = None
            link.succeeded()
            if followable:
                failures, no_etag_told = 0, False
                continue
            failures += 1
            log.log(logging.DEBUG if no_etag_told else logging.WARNING,
                    "%s: the routing table came without an ETag to long-poll with; next pull "
                    "in %.1fs", source, _backoff_s(failures))  # fmt: skip
            no_etag_told = True
        await asyncio.sleep(_backoff_s(failures))


def create_gateway_app(
    api_url: str,
    token: str,
    *,
    timeout_s: float = 30.0,
    routes: Routes | None = None,
    routes_wait_s: float = ROUTES_WAIT_S,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_buffered_bytes: int = MAX_BUFFERED_BYTES,
) -> Starlette:
    """The gateway's ASGI app: routes from the API at ``api_url`` (read with the admin
    ``token``), queries to the daemons, each answered within ``timeout_s``; a query's body is
    at most ``max_body_bytes``, those of all queries in flight at most ``max_buffered_bytes``."""
    table = routes or Routes()
    pull = RoutesPull()
    budget = BodyBudget(max_buffered_bytes)
    upstream = Upstream(connect_timeout_s=min(timeout_s, 2.0))

    async def send(request: Request, pick: Pick, body: ReplayableBody | None) -> Answer:
        query = request.scope.get("query_string", b"")
        target = request.scope["raw_path"].decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        declared = request.headers.get("content-length", "")
        method = "GET" if request.method == "HEAD" else request.method
        headers = [(k, v) for k, v in request.headers.raw if k not in NOT_FORWARDED]
        return await asyncio.wait_for(
            upstream.exchange(
                pick.url, method, target, headers,
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
            return _error(404, f"model {model!r} is not served (not in the routing table; a "
                               "model is named by its id, as POST /v1/models answered)")
        if request.method != "POST":
            return await forward(request, model, None)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return _error(413, f"body of {declared} bytes exceeds {max_body_bytes}", CLOSE)
        body = ReplayableBody(request, max_body_bytes, budget)
        try:
            return await forward(request, model, body)
        except BodyTooLarge as exc:
            return _error(413, str(exc), CLOSE)
        except GatewayFull as exc:
            log.warning("query of model %s refused: %s (limit %d)", model, exc, budget.limit)
            return _error(503, f"{exc}; retry shortly", {"Retry-After": "1", **CLOSE})
        except ClientDisconnect:
            log.debug("a client closed its connection before its query's body was whole")
            return _error(400, "the connection closed before the body was whole")
        finally:
            body.release()

    async def forward(request: Request, model: str, body: ReplayableBody | None) -> Response:
        """The query sent to a replica of ``model``, and once more to another if that one is
        gone or cannot serve it now (TRY_ANOTHER_REPLICA); the answer, or an error that says
        what failed."""
        tried: set[str] = set()
        failure = ""
        refused: Answer | None = None  # answered as it is if no retry can be
        for attempt in range(2):
            pick = table.pick(model, frozenset(tried))
            if pick is None:
                break
            tried.add(pick.url)
            try:
                response = await send(request, pick, body)
            except TimeoutError:
                if body is not None and body.awaiting_client:
                    return _error(408, f"the query's body did not come in whole within "
                                       f"{timeout_s:g} s", CLOSE)  # fmt: skip
                log.warning("node %s did not answer a query of model %s in %g s", pick.node,
                            model, timeout_s)  # fmt: skip
                return _error(504, f"node {pick.node} did not answer in {timeout_s:g} s")
            except Gone as exc:
                table.failed(pick.url)
                failure = f"node {pick.node}: {exc}"
                log.warning("%s; marked dead for a while, query sent elsewhere", failure)
                continue
            finally:
                table.done(pick)
            if response.status in TRY_ANOTHER_REPLICA and attempt == 0:
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
            "routes_error": pull.error,
            "dead": table.dead(),
            "in_flight": table.in_flight(),
            "body_bytes_held": budget.held,
        }
        return JSONResponse(document, status_code=200 if table.received else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, read=routes_wait_s + 10.0),
        ) as api:
            follower = asyncio.create_task(
                follow_routes(api, table, wait_s=routes_wait_s, pull=pull)
            )
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
        exception_handlers={HTTPException: _http_error},
    )
