"""The executor daemon's HTTP surface (Starlette on uvicorn): inference, schema, health, metrics.

Routes (docs/architecture.md §3.3):

- ``POST /v1/models/{model}/infer`` — a structured-feature query, as JSON
  (``{"user": {"dense": [...], "sparse": {...}}, "candidates": {"dense": [[...]], "sparse":
  {...}}}``) or as a binary numpy archive (``Content-Type: application/x-npz``, see
  :mod:`executor.codec`). The reply is ``{"scores": [...]}`` in candidate order, or the raw
  float32 ``.npy`` array when the request says ``Accept: application/x-npy``.
  400 malformed query (the message names the field), 404 unknown model, 413 body too large,
  415 other content types, 429 + ``Retry-After`` when admission control refuses it, 503 model
  not loaded, 504 deadline passed, 500 the model failed.
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

import asyncio
import io
import logging
import time

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from executor import codec
from executor.metrics import ExecutorMetrics
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

    async def infer(request: Request) -> Response:
        arrival = time.monotonic()
        group: SessionGroup | None = None  # the replica serving the query, once resolved
        try:
            # Whatever can refuse a query without its body is decided before the body is
            # read: the event loop never reads or parses a body that admission control turns
            # away, so a flooding tenant's large JSON queries do not delay other tenants.
            group = runtime.route(request.path_params["model"])
            content_type = request.headers.get("content-type", "application/json")
            content_type = content_type.split(";", 1)[0].strip().lower()
            if content_type != "application/json" and content_type not in NPZ_TYPES:
                return _error(
                    415,
                    f"content type {content_type!r}: use application/json or application/x-npz",
                )
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_body_bytes:
                return _error(413, f"body of {declared} bytes exceeds {max_body_bytes}")
            runtime.check(group, arrival)
            body = await _read_body(request, max_body_bytes)
            if body is None:
                return _error(413, f"body exceeds {max_body_bytes} bytes")
            try:
                if content_type == "application/json":
                    query = codec.parse_query_json(group.model.schema, body)
                else:
                    query = codec.parse_query_npz(group.model.schema, body)
            except ValueError as exc:
                return answer(exc, group)
            pending = runtime.submit_to(group, query, arrival)
            group = pending.group  # a plan swap may have handed it to another replica
            scores = await _scores(pending)
        except SchedulingError as exc:
            return answer(exc, group)
        metrics.observe(group.tenant, group.model_id, "ok", time.monotonic() - arrival, group.sla_s)
        if NPY_TYPE in request.headers.get("accept", ""):
            out = io.BytesIO()
            np.save(out, scores, allow_pickle=False)
            return Response(out.getvalue(), media_type=NPY_TYPE)
        return JSONResponse({"scores": scores.tolist()})

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics_route),
            Route("/v1/models/{model}/schema", schema),
            Route("/v1/models/{model}/infer", infer, methods=["POST"]),
        ]
    )


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
