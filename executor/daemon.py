"""The executor daemon's HTTP surface (Starlette on uvicorn): inference, schema, health, metrics.

Routes (docs/architecture.md §3.3, docs/executor.md "HTTP"):

- ``POST /v2/models/{model}[/versions/{v}]/infer`` — the Open Inference Protocol (KServe v2):
  a query's tensors (:mod:`executor.codec`) as JSON or with the binary tensor data extension
  (``Inference-Header-Content-Length``), the format to send; the reply's output ``scores``
  comes back binary when the request asks for it (``binary_data_output``/``binary_data``).
  ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{model}`` (metadata:
  the query's tensors) and ``/v2/models/{model}/ready`` complete what Triton and KServe
  clients call.
- ``POST /v1/models/{model}/infer`` — gpufair's JSON query
  (``{"user": {"dense": [...], "sparse": {...}}, "candidates": {"dense": [[...]], "sparse":
  {...}}}``), or an ``.npz`` archive of the tensors (``Content-Type: application/x-npz``) for
  existing clients. The reply is ``{"scores": [...]}`` in candidate order, or the raw
  float32 ``.npy`` array when the request says ``Accept: application/x-npy``.
- Both: 400 malformed query (the message names the field), 404 unknown model, 413 body too
  large, 415 other content types or encodings, 429 + ``Retry-After`` when admission control
  refuses it, 503 model not loaded, 504 deadline passed, 500 the model failed; the body of
  every error is ``{"error": message}``, as the protocol has it.
- ``GET /v1/models/{model}/schema`` — the model's feature schema.
- ``GET /healthz`` — plan version and models served (503 until a plan is loaded).
- ``GET /metrics`` — Prometheus text format.

The app is plain Starlette rather than FastAPI: an inference request costs one route match,
one body read, a parse and a future hand-off to the session workers, and nothing else runs
per request (no dependency injection or response-model validation). Queries are queued on
the event loop's thread without blocking (submit only takes the device lock); the scores come
back through the query's future.

A request is routed once, on arrival, to the replica that will serve it (the least loaded
one when a model has several), and admission is checked twice on that replica. Before the
body is read, from the route and headers alone: an unknown or unloaded model, a wrong content
type, a declared length over the limit, and a replica that would refuse even a one-candidate
query now are answered at once, so the loop never reads or parses what it turns away (parsing
a 6 MB JSON query takes the loop tens of ms, which every other tenant's request would wait).
After parsing, the same replica admits the query again with its real number of candidates.
Were the replica picked again after the body is read, the early check would have judged a
replica that may not be the one the query is queued on. Only a plan swap moves a request:
a replica that drains meanwhile hands it to the new plan's replica.

Every error a request can meet is answered from one table, :data:`ERROR_ANSWERS`.
"""

from __future__ import annotations

import abc
import asyncio
import io
import logging
import time
from collections.abc import Callable

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from executor import codec
from executor.features import Query
from executor.metrics import ExecutorMetrics
from executor.models import ModelSchema
from executor.scheduling import (
    DeadlineExceeded,
    GroupClosed,
    ModelFailed,
    ModelUnavailable,
    NodeRuntime,
    Overloaded,
    Pending,
    SchedulingError,
    SessionGroup,
    UnknownModel,
)
from executor.wire import oip

log = logging.getLogger(__name__)

NPZ_TYPES = ("application/x-npz", "application/octet-stream")
NPY_TYPE = "application/x-npy"
# A reply to a query whose future is lost would never come: wait at most this beyond its deadline.
ANSWER_GRACE_S = 1.0


# How each error a request can meet is answered: its HTTP status, and the outcome it counts as
# in the metrics (None: not counted, as the request found no replica that could judge it).
# Looked up along the error's class hierarchy. One table for every route and every stage
# (routing, the check before the body is read, parsing, submit, the wait for the scores), so
# that a condition is answered the same wherever it is detected.
ERROR_ANSWERS: dict[type[Exception], tuple[int, str | None]] = {
    UnknownModel: (404, None),
    ModelUnavailable: (503, None),
    # A replica drained for a plan swap hands its queries to the new plan: what reaches the
    # client is a replica closed for the node's shutdown.
    GroupClosed: (503, None),
    Overloaded: (429, "rejected"),
    DeadlineExceeded: (504, "expired"),
    ModelFailed: (500, "failed"),
    ValueError: (400, "invalid"),  # the body is no query of the model (codec.QueryError)
}


def answer_error(exc: Exception) -> tuple[JSONResponse, str | None]:
    """The response to ``exc`` and the metrics outcome it counts as, from :data:`ERROR_ANSWERS`
    (``exc`` must be an instance of one of its classes)."""
    status, outcome = next(ERROR_ANSWERS[k] for k in type(exc).__mro__ if k in ERROR_ANSWERS)
    headers = None
    if isinstance(exc, Overloaded):  # when the client may expect room again
        headers = {"Retry-After": str(int(exc.retry_after_s))}
    return _error(status, str(exc), headers), outcome


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it exceeds ``limit`` bytes (the rest is unread)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    runtime: NodeRuntime,
    *,
    metrics: ExecutorMetrics | None = None,
    max_body_bytes: int = 64 * 1024 * 1024,
) -> Starlette:
    """The daemon's ASGI app over a runtime (which the caller owns and closes)."""
    metrics = metrics or ExecutorMetrics(runtime)

    def answer(exc: Exception, group: SessionGroup | None) -> JSONResponse:
        """The error response, counted in the metrics of the replica's tenant and model."""
        response, outcome = answer_error(exc)
        if outcome is not None and group is not None:
            metrics.observe(group.tenant, group.model_id, outcome, None, group.sla_s)
        return response

    async def healthz(request: Request) -> Response:
        deployment = runtime.deployment
        if deployment is None:
            return JSONResponse({"status": "waiting for a plan"}, status_code=503)
        return JSONResponse(
            {
                "status": "serving",
                "node": deployment.plan.node,
                "plan_version": deployment.plan.version,
                "models": sorted(deployment.routes),
                "broken": deployment.broken,
            }
        )

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    async def schema(request: Request) -> Response:
        try:
            group = runtime.group(request.path_params["model"])
        except SchedulingError as exc:
            return answer(exc, None)
        return JSONResponse(group.model.schema.to_dict())

    async def serve(request: Request, reader: BodyReader) -> Response:
        """A query from arrival to reply: route, the check before the body, read, parse,
        queue, wait for its scores. ``reader`` knows the route's body format."""
        arrival = time.monotonic()
        group: SessionGroup | None = None  # the replica serving the query, once resolved
        try:
            # Whatever can refuse a query without its body is decided before the body is
            # read: the event loop never reads or parses a body that admission control turns
            # away, so a flooding tenant's large JSON queries do not delay other tenants.
            group = runtime.route(request.path_params["model"])
            refusal = reader.refuse(request)
            if refusal is not None:
                return refusal
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_body_bytes:
                return _error(413, f"body of {declared} bytes exceeds {max_body_bytes}")
            runtime.check(group, arrival)
            body = await _read_body(request, max_body_bytes)
            if body is None:
                return _error(413, f"body exceeds {max_body_bytes} bytes")
            try:
                query, reply = reader.parse(request, group.model.schema, body)
            except ValueError as exc:
                return answer(exc, group)
            pending = runtime.submit_to(group, query, arrival)
            group = pending.group  # a plan swap may have handed it to another replica
            scores = await _scores(pending)
        except SchedulingError as exc:
            return answer(exc, group)
        metrics.observe(group.tenant, group.model_id, "ok", time.monotonic() - arrival, group.sla_s)
        return reply(scores)

    async def infer_v1(request: Request) -> Response:
        return await serve(request, V1_BODIES)

    async def infer_v2(request: Request) -> Response:
        return await serve(request, OIP_BODIES)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(
            {"name": "gpufair-executor", "version": "1", "extensions": ["binary_tensor_data"]}
        )

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        serving = runtime.deployment is not None
        return JSONResponse({"ready": serving}, status_code=200 if serving else 503)

    async def model_metadata(request: Request) -> Response:
        try:
            group = runtime.group(request.path_params["model"])
        except SchedulingError as exc:
            return answer(exc, None)
        inputs, outputs = codec.tensor_metadata(group.model.schema)
        return JSONResponse(
            {
                "name": group.model_id,
                "versions": [str(runtime.plan_version)],
                "platform": "pytorch",
                "inputs": inputs,
                "outputs": outputs,
            }
        )

    async def model_ready(request: Request) -> Response:
        try:
            group = runtime.group(request.path_params["model"])
        except SchedulingError as exc:
            return answer(exc, None)
        return JSONResponse({"name": group.model_id, "ready": True})

    # The protocol's paths, with and without a model version (every version is the plan's).
    versions = ("", "/versions/{version}")
    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics_route),
            Route("/v1/models/{model}/schema", schema),
            Route("/v1/models/{model}/infer", infer_v1, methods=["POST"]),
            Route("/v2", server_metadata),
            Route("/v2/health/live", live),
            Route("/v2/health/ready", ready),
            *(Route(f"/v2/models/{{model}}{v}", model_metadata) for v in versions),
            *(Route(f"/v2/models/{{model}}{v}/ready", model_ready) for v in versions),
            *(
                Route(f"/v2/models/{{model}}{v}/infer", infer_v2, methods=["POST"])
                for v in versions
            ),
        ]
    )


Reply = Callable[[np.ndarray], Response]


class BodyReader(abc.ABC):
    """One route's body format: what it refuses from the headers alone, and its parse."""

    @abc.abstractmethod
    def refuse(self, request: Request) -> Response | None:
        """A reply that refuses the request from its headers (415), or None."""

    @abc.abstractmethod
    def parse(self, request: Request, schema: ModelSchema, body: bytes) -> tuple[Query, Reply]:
        """The query of ``body`` and how to answer it with its scores; ValueError if bad."""


class V1Bodies(BodyReader):
    """gpufair's JSON, and ``.npz`` for existing clients; scores as JSON or ``.npy``."""

    def refuse(self, request: Request) -> Response | None:
        content_type = _content_type(request)
        if content_type != "application/json" and content_type not in NPZ_TYPES:
            return _error(
                415, f"content type {content_type!r}: use application/json or application/x-npz"
            )
        return None

    def parse(self, request: Request, schema: ModelSchema, body: bytes) -> tuple[Query, Reply]:
        if _content_type(request) == "application/json":
            query = codec.parse_query_json(schema, body)
        else:
            query = codec.parse_query_npz(schema, body)
        if NPY_TYPE in request.headers.get("accept", ""):
            return query, _npy_reply
        return query, _json_scores


class OipBodies(BodyReader):
    """The Open Inference Protocol: JSON, or binary with ``Inference-Header-Content-Length``."""

    def refuse(self, request: Request) -> Response | None:
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            return _error(415, f"content encoding {encoding!r}: send the body uncompressed")
        declared = request.headers.get(oip.HEADER_LENGTH)
        if declared is not None and not declared.isdigit():
            return _error(400, f"{oip.HEADER_LENGTH}: expected a byte count, got {declared!r}")
        return None

    def parse(self, request: Request, schema: ModelSchema, body: bytes) -> tuple[Query, Reply]:
        declared = request.headers.get(oip.HEADER_LENGTH)
        query, infer = codec.parse_query_oip(
            schema, body, None if declared is None else int(declared)
        )
        model = request.path_params["model"]

        def reply(scores: np.ndarray) -> Response:
            content, header_length = oip.encode_reply(
                model, {codec.SCORES: scores}, request_id=infer.id, binary=infer.binary_output
            )
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


def _content_type(request: Request) -> str:
    content_type = request.headers.get("content-type", "application/json")
    return content_type.split(";", 1)[0].strip().lower()


def _json_scores(scores: np.ndarray) -> Response:
    return JSONResponse({"scores": scores.tolist()})


def _npy_reply(scores: np.ndarray) -> Response:
    out = io.BytesIO()
    np.save(out, scores, allow_pickle=False)
    return Response(out.getvalue(), media_type=NPY_TYPE)


async def _scores(pending: Pending) -> np.ndarray:
    """The query's scores, or the error its future holds; a future that does not answer
    within :data:`ANSWER_GRACE_S` past the query's deadline counts as DeadlineExceeded."""
    timeout = pending.deadline - time.monotonic() + ANSWER_GRACE_S
    try:
        return await asyncio.wait_for(asyncio.wrap_future(pending.future), timeout)
    except DeadlineExceeded:  # the scheduler's answer (a TimeoutError too): as it is
        raise
    except TimeoutError as exc:  # wait_for's own: the future was lost
        model_id = pending.group.model_id
        raise DeadlineExceeded(f"model {model_id!r}: no answer by its deadline") from exc
