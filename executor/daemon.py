"""The executor daemon's HTTP surface: inference, schema, health, metrics.

Routes (docs/architecture.md §3.3, docs/executor.md "HTTP"):

- ``POST /v2/models/{model}[/versions/{v}]/infer`` — the Open Inference Protocol (KServe v2):
  a query's tensors (:mod:`executor.codec`) as JSON or with the binary tensor data extension
  (``Inference-Header-Content-Length``), the format to send; the reply's output ``scores``
  comes back binary when the request asks for it (``binary_data_output``/``binary_data``).
  ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{model}`` (metadata:
  the query's tensors) and ``/v2/models/{model}/ready`` complete what Triton and KServe
  clients call.
- ``POST /v1/models/{model}/infer`` — gpufair's JSON query, a convenience
  (``{"user": {"dense": [...], "sparse": {...}}, "candidates": {"dense": [[...]], "sparse":
  {...}}}``); the reply is ``{"scores": [...]}`` in candidate order.
- Both: 401 no credential (``Authorization: Bearer <key>``), 403 a credential that is no key
  of the model's tenant (:mod:`executor.credentials`; both before the body is read), 400
  malformed query (the message names the field), 404 unknown model, 413 body too
  large, 415 other content types or encodings, 429 + ``Retry-After`` when admission control
  refuses it (or its body is still coming in at its SLA), 503 + ``Retry-After`` model not
  loaded (its plan is loading, or it failed to load: the router tries another replica), 504
  deadline passed, 500 the model failed; the body of every error is ``{"error": message}``, as the
  protocol has it (routing's too: 404 for a path no route matches, 405 for another method).
- ``GET /v1/models/{model}/schema`` — the model's feature schema. It, the protocol's model
  metadata and model readiness need a key of the model's tenant too (401, 403, as a query): a
  model's features are its tenant's business.
- ``GET /healthz`` — plan version and models served (503 until a plan is loaded).
- ``GET /livez`` — whether the engine answers this front (200 with or without a plan; 503
  when it did not within ``ENGINE_ANSWER_S``: the liveness probe, which restarts a wedged
  node's pod, where a TCP probe passes as long as the front accepts connections).
- ``GET /metrics`` — Prometheus text format.

Every route is a plain Starlette app (:func:`create_front_app`), which tests and tools serve
on uvicorn in the engine's own process (:func:`create_app`). The front processes
(:mod:`executor.front.process`, the daemon) serve the same app on their own HTTP server
(:mod:`executor.front.http`), which calls the inference routes directly
(:class:`DirectRoute`: the request as an :class:`Exchange`, no ASGI in between) and every
other route through ASGI. An inference request costs its tenant's in-flight bound at the
front (:mod:`executor.front.budget`), one body read, a parse and one message to the engine
(two, with the admission call before the body, for a model's first request at a front or
after a refusal of one of its queries), and nothing else. It runs over an
:class:`~executor.front.engine.Engine`: over a link to the engine process in a front, or the
engine itself in one process.

A request is routed once, on arrival, to the replica that will serve it (the least loaded
one when a model has several), and admission is checked twice on that replica. Before the
body is read, from the route and headers alone: a wrong content type, a declared length over
the limit, an unknown or unloaded model, and a replica that would refuse even a one-candidate
query now are answered at once, so the front never reads or parses what it turns away
(parsing a 6 MB JSON query takes a front tens of ms). So is a request whose tenant is at its
in-flight bound at this front, without asking the engine. A request of a tenant with room
under its bound (at most half of it in flight: :meth:`TenantBudgets.roomy
<executor.front.budget.TenantBudgets.roomy>`), with a key the engine accepted for that tenant
here, is let in on the terms of the model's last admission at this front
(:meth:`~executor.front.engine.Engine.presume`) and admitted by the engine with its query, in
one message: one engine hop instead of two. The engine may refuse it then, after its body was
read; any refusal makes the model's next request ask the engine before its body again. A
request refused before its body is read is answered with ``Connection: close``: the front
does not drain a body it refused.
A body that has come in after the request's SLA is refused unparsed: the front is behind;
one still coming in at the SLA is refused there, unread, so that a stalled client holds its
tenant's in-flight bound no longer than that.
After parsing, the same replica admits the query again with its real number of candidates.
Were the replica picked again after the body is read, the early check would have judged a
replica that may not be the one the query is queued on. Only a plan swap moves a request: a
replica that drains meanwhile hands it to the new plan's replica.

Every error a request can meet is answered from one table,
:data:`executor.engine.answers.ERROR_ANSWERS`, and counted by the engine.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from executor import codec
from executor.credentials import presented_digest
from executor.engine.answers import ERROR_ANSWERS, answer_of
from executor.engine.core import EngineCore
from executor.features import Query
from executor.front.budget import TenantBudgets
from executor.front.engine import Engine, Ticket
from executor.front.local import LocalEngine
from executor.metrics import ExecutorMetrics
from executor.models.schema import ModelSchema
from executor.scheduling import NodeRuntime, Overloaded, SchedulingError
from executor.scheduling.errors import ModelUnavailable, NotPermitted, Unauthenticated
from executor.wire import oip

log = logging.getLogger(__name__)

__all__ = [
    "ERROR_ANSWERS",
    "DirectRoute",
    "Exchange",
    "FrontApp",
    "answer_error",
    "error_response",
    "create_app",
    "create_front",
    "create_front_app",
]

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MODEL_UNAVAILABLE_RETRY_S = 1  # Retry-After of a 503 for a model not loaded (yet)

# A request's body as a server received it; a view is valid until the request is answered.
Body = bytes | bytearray | memoryview


def answer_error(exc: Exception) -> tuple[JSONResponse, str | None]:
    """The response to ``exc`` and the metrics outcome it counts as, from :data:`ERROR_ANSWERS`
    (``exc`` must be an instance of one of its classes)."""
    status, outcome = answer_of(exc)
    headers = None
    if isinstance(exc, Overloaded):  # when the client may expect room again
        headers = {"Retry-After": str(int(exc.retry_after_s))}
    elif isinstance(exc, ModelUnavailable):  # a plan loads in about a second
        headers = {"Retry-After": str(MODEL_UNAVAILABLE_RETRY_S)}
    elif isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(status, str(exc), headers), outcome


def _credential_of(request: Request | Exchange) -> str | None:
    """The sha256 of the bearer key ``request`` presents (executor.credentials), or None."""
    return presented_digest(request.headers.get("authorization"))


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error as the protocol answers it: ``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _close_unread(response: Response) -> Response:
    """``response`` with the connection closed after it: its request's body was not read, and
    reading it to keep the connection would cost the front what refusing it unread saved (the
    client pays for its next connection instead)."""
    response.headers["Connection"] = "close"
    return response


class Exchange(Protocol):
    """An inference request as :func:`create_front_app`'s query path sees it, whichever server
    carries it: Starlette's (:class:`StarletteExchange`, tests and tools in one process) or the
    fronts' own (:mod:`executor.front.http`)."""

    @property
    def path_params(self) -> Mapping[str, str]:
        """The route's parameters (``model``)."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The request's headers, looked up by lower-case name."""

    async def read_body(self, limit: int, deadline: float | None = None) -> Body | None:
        """The whole body, or None as soon as it exceeds ``limit`` bytes (the rest unread);
        TimeoutError if it has not come in whole by ``deadline`` (``time.monotonic()``)."""


class StarletteExchange:
    """:class:`Exchange` of a Starlette request."""

    def __init__(self, request: Request) -> None:
        self._request = request

    @property
    def path_params(self) -> Mapping[str, str]:
        return self._request.path_params

    @property
    def headers(self) -> Mapping[str, str]:
        return self._request.headers

    async def read_body(self, limit: int, deadline: float | None = None) -> Body | None:
        chunks: list[bytes] = []
        size = 0
        left_s = None if deadline is None else deadline - time.monotonic()
        async with asyncio.timeout(left_s):
            async for chunk in self._request.stream():
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
        return b"".join(chunks)


@dataclass(frozen=True)
class DirectRoute:
    """An inference route that a server may call without ASGI: ``handle`` answers a POST to a
    path that ``pattern`` matches whole, its groups the route's parameters."""

    pattern: re.Pattern[str]
    handle: Callable[[Exchange], Awaitable[Response]]


def create_app(
    runtime: NodeRuntime,
    *,
    metrics: ExecutorMetrics | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The daemon's ASGI app over a runtime in this process (which the caller owns and closes):
    the front and the engine in one process, for tests and tools."""
    core = EngineCore(runtime, metrics)
    return create_front_app(LocalEngine(core), max_body_bytes=max_body_bytes)


@dataclass(frozen=True)
class FrontApp:
    """The daemon's HTTP surface over one engine: every route as an ASGI app, and the inference
    routes also as :class:`DirectRoute` s, which the fronts' server calls without ASGI."""

    asgi: Starlette
    direct: tuple[DirectRoute, ...]
    engine: Engine  # its server starts and stops it (the ASGI app's lifespan, or the server's)


def create_front_app(
    engine: Engine,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    budgets: TenantBudgets | None = None,
) -> Starlette:
    """The daemon's ASGI app over an engine (in this process or over a link)."""
    return create_front(engine, max_body_bytes=max_body_bytes, budgets=budgets).asgi


def create_front(
    engine: Engine,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    budgets: TenantBudgets | None = None,
) -> FrontApp:
    """The daemon's HTTP surface over an engine (in this process or over a link)."""
    bounds = budgets or TenantBudgets()

    async def healthz(request: Request) -> Response:
        health = await engine.health()
        if health is None:
            return JSONResponse(
                {"status": "waiting for a plan (and in API mode its credentials)"},
                status_code=503,
            )
        return JSONResponse(health)

    async def livez(request: Request) -> Response:
        await engine.health()
        return JSONResponse({"status": "alive"})

    async def metrics_route(request: Request) -> Response:
        return Response(await engine.metrics(), media_type="text/plain; version=0.0.4")

    async def schema(request: Request) -> Response:
        info = await engine.model(request.path_params["model"], _credential_of(request))
        return JSONResponse(info.schema.to_dict())

    async def serve(request: Exchange, reader: BodyReader) -> Response:
        """A query from arrival to reply: the checks before the body (its tenant's bound at this
        front, the engine's admission), read and parse it, queue, wait for its scores.
        ``reader`` knows the body format."""
        arrival = time.monotonic()
        model = request.path_params["model"]
        ticket: Ticket | None = None  # let in, and not yet handed to the engine
        presumed = False  # let in by this front on its own (Engine.presume)
        counted: str | None = None  # the tenant whose in-flight bound this request counts in
        credential: str | None = None  # the sha256 of the key it presents
        body_read = answered = False  # answered: with its scores, within its SLA
        try:
            # Whatever can refuse a query without its body is decided before the body is
            # read: the front never reads or parses a body that admission control turns
            # away, so a flooding tenant's large queries do not delay other tenants.
            refusal = reader.refuse(request)
            if refusal is not None:
                return refusal
            declared = _byte_count(request.headers.get("content-length"))
            if declared is not None and declared > max_body_bytes:
                return error_response(413, f"body of {declared} bytes exceeds {max_body_bytes}")
            # The tenant's key is checked on admission, before the body
            # (executor.credentials); a request counts in a tenant's in-flight bound at this
            # front before the engine is asked only when its key is one the engine accepted
            # for that tenant, so another tenant's key cannot spend the bound (front/budget.py).
            credential = _credential_of(request)
            try:
                counted = bounds.claim(model, credential)
            except Overloaded as over:
                engine.refused(model)
                return _close_unread(answer_error(over)[0])
            # A tenant with room under its bound, with a key the engine accepted for it here,
            # is let in on the terms of the model's last admission at this front: the engine
            # admits it with its query, one hop instead of two (it may still refuse it then).
            # One nearer its bound (a flooder) is checked by the engine before its body is
            # read, so that the front does not read bodies the engine would refuse.
            if counted is not None and bounds.roomy(counted):
                ticket = engine.presume(model, arrival, credential)
                presumed = ticket is not None
            if ticket is None:
                ticket = await engine.admit(model, arrival, credential)
                claimed, counted = counted, None
                counted = bounds.confirm(model, ticket, claimed, credential)
            # The body is received as it comes, in no queue: waiting for a slow client's bytes
            # holds up no other request, and the tenant's in-flight bound limits how many of
            # its bodies the front receives at once. A tenant behind's bodies are read one at
            # a time (TenantBudgets.read_turn), so that its flood's reads do not share the event
            # loop with every other tenant's; its slow client holds up only its own.
            # A body still coming in at the SLA could only be answered late: its read ends
            # there, so that a stalled client holds its tenant's place in the bound (and a
            # turn) no longer than that.
            deadline = arrival + ticket.sla_s
            turn = None if counted is None else bounds.read_turn(counted)
            try:
                if turn is None:
                    body = await request.read_body(max_body_bytes, deadline)
                else:
                    async with turn:
                        if time.monotonic() >= deadline:
                            raise Overloaded(
                                f"model {model!r}: its tenant's bodies are read one at a time "
                                "while it sends more than it is served, and its turn came after "
                                "its SLA",
                                1.0,
                            )
                        body = await request.read_body(max_body_bytes, deadline)
            except TimeoutError:
                raise Overloaded(
                    f"model {model!r}: its body was still coming in at its SLA", 1.0
                ) from None
            body_read = True
            if body is None:
                return error_response(413, f"body exceeds {max_body_bytes} bytes")
            if time.monotonic() > arrival + ticket.sla_s:  # it could only be answered late
                raise Overloaded(
                    f"model {model!r}: its body came after its SLA; the front is behind", 1.0
                )
            query, reply = reader.parse(request, ticket.schema, body)
            handed, ticket = ticket, None  # the engine counts its outcome from here on
            scores = await engine.infer(handed, query)
            answered = time.monotonic() - arrival <= handed.sla_s
        except (SchedulingError, ValueError) as exc:
            if presumed and isinstance(exc, (Unauthenticated, NotPermitted)):
                bounds.forget(credential)  # revoked, or its model moved: ask before the next body
            response, outcome = answer_error(exc)
            if ticket is not None:
                engine.abandon(ticket, outcome)
                ticket = None
            if isinstance(exc, Overloaded) and not body_read:
                return _close_unread(response)
            return response
        finally:
            if ticket is not None:  # its body was too large, or its client left
                engine.abandon(ticket, None)
            if counted is not None:
                bounds.leave(counted, answered)
        return reply(scores)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(
            {"name": "gpufair-executor", "version": "1", "extensions": ["binary_tensor_data"]}
        )

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        serving = await engine.health() is not None
        return JSONResponse({"ready": serving}, status_code=200 if serving else 503)

    async def model_metadata(request: Request) -> Response:
        info = await engine.model(request.path_params["model"], _credential_of(request))
        inputs, outputs = codec.tensor_metadata(info.schema)
        return JSONResponse(
            {
                "name": info.model_id,
                "versions": [str(info.version)],
                "platform": "pytorch",
                "inputs": inputs,
                "outputs": outputs,
            }
        )

    async def model_ready(request: Request) -> Response:
        info = await engine.model(request.path_params["model"], _credential_of(request))
        return JSONResponse({"name": info.model_id, "ready": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    def infer(reader: BodyReader) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await serve(StarletteExchange(request), reader)

        return endpoint

    # The protocol's paths, with and without a model version (every version is the plan's).
    versions = ("", "/versions/{version}")
    infer_paths = [
        ("/v1/models/{model}/infer", V1_BODIES),
        *((f"/v2/models/{{model}}{v}/infer", OIP_BODIES) for v in versions),
    ]
    inference = [(Route(path, infer(r), methods=["POST"]), r) for path, r in infer_paths]
    asgi = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/livez", livez),
            Route("/metrics", metrics_route),
            Route("/v1/models/{model}/schema", schema),
            Route("/v2", server_metadata),
            Route("/v2/health/live", live),
            Route("/v2/health/ready", ready),
            *(Route(f"/v2/models/{{model}}{v}", model_metadata) for v in versions),
            *(Route(f"/v2/models/{{model}}{v}/ready", model_ready) for v in versions),
            *(route for route, _ in inference),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _routing_error, SchedulingError: _scheduling_error},
    )
    # The same routes for a server that calls them without ASGI: Starlette's patterns.
    direct = tuple(
        DirectRoute(route.path_regex, functools.partial(serve, reader=reader))
        for route, reader in inference
    )
    return FrontApp(asgi, direct, engine)


async def _scheduling_error(request: Request, exc: Exception) -> Response:
    """What a route other than inference met at the engine (an unknown model, a refused key,
    an engine gone or not answering), answered from the one table, as a query's is."""
    assert isinstance(exc, SchedulingError)
    return answer_error(exc)[0]


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's refusals (no route for the path, a route's other method) in the protocol's
    error body, as every other error."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route for {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail
    return error_response(exc.status_code, message, dict(exc.headers or {}))


Reply = Callable[[np.ndarray], Response]


class BodyReader(abc.ABC):
    """One route's body format: what it refuses from the headers alone, and its parse."""

    @abc.abstractmethod
    def refuse(self, request: Exchange) -> Response | None:
        """A reply that refuses the request from its headers (415), or None."""

    @abc.abstractmethod
    def parse(self, request: Exchange, schema: ModelSchema, body: Body) -> tuple[Query, Reply]:
        """The query of ``body`` and how to answer it with its scores; ValueError if bad."""


class V1Bodies(BodyReader):
    """gpufair's JSON query; its scores as JSON."""

    def refuse(self, request: Exchange) -> Response | None:
        content_type = _content_type(request)
        if content_type != "application/json":
            return error_response(
                415,
                f"content type {content_type!r}: send application/json here, or binary "
                "tensors to /v2/models/{model}/infer",
            )
        return None

    def parse(self, request: Exchange, schema: ModelSchema, body: Body) -> tuple[Query, Reply]:
        text = bytes(body) if isinstance(body, memoryview) else body
        return codec.parse_query_json(schema, text), _json_scores


class OipBodies(BodyReader):
    """The Open Inference Protocol: JSON, or binary with ``Inference-Header-Content-Length``."""

    def refuse(self, request: Exchange) -> Response | None:
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            return error_response(415, f"content encoding {encoding!r}: send the body uncompressed")
        declared = request.headers.get(oip.HEADER_LENGTH)
        if declared is not None and _byte_count(declared) is None:
            return error_response(
                400,
                f"{oip.HEADER_LENGTH}: expected a byte count in ASCII digits, got {declared!r}",
            )
        return None

    def parse(self, request: Exchange, schema: ModelSchema, body: Body) -> tuple[Query, Reply]:
        query, infer = codec.parse_query_oip(
            schema, body, _byte_count(request.headers.get(oip.HEADER_LENGTH))
        )
        model = request.path_params["model"]

        def reply(scores: np.ndarray) -> Response:
            content, header_length = codec.scores_to_oip(model, scores, infer)
            if header_length is None:
                return Response(content, media_type="application/json")
            return Response(
                content,
                media_type=oip.BINARY_CONTENT_TYPE,
                headers={oip.HEADER_LENGTH: str(header_length)},
            )

        return query, reply


V1_BODIES = V1Bodies()
OIP_BODIES = OipBodies()


def _byte_count(value: str | None) -> int | None:
    """A header's byte count: ASCII digits only (``str.isdigit`` takes ``"¹"``, which ``int``
    refuses), and few enough of them for any body (``int`` refuses over 4300); else None."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


def _content_type(request: Exchange) -> str:
    content_type = request.headers.get("content-type", "application/json")
    return content_type.split(";", 1)[0].strip().lower()


def _json_scores(scores: np.ndarray) -> Response:
    return JSONResponse({"scores": scores.tolist()})
