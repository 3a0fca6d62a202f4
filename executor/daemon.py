"""The executor daemon's HTTP surface (Starlette on uvicorn): inference, schema, health, metrics.

Routes (DESIGN §3.3):

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

Admission is checked twice. Before the body is read, from the route and headers alone: an
unknown or unloaded model, a wrong content type, a declared length over the limit, and a
replica that would refuse even a one-candidate query now are answered at once, so the loop
never reads or parses what it turns away (parsing a 6 MB JSON query takes the loop tens of
ms, which every other tenant's request would wait). After parsing, ``submit`` admits the
query again with its real number of candidates.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from types import TracebackType
from typing import Any

import numpy as np
import uvicorn
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
    SessionGroup,
    UnknownModel,
)

log = logging.getLogger(__name__)

NPZ_TYPES = ("application/x-npz", "application/octet-stream")
NPY_TYPE = "application/x-npy"
# A reply to a query whose future is lost would never come: wait at most this beyond its deadline.
ANSWER_GRACE_S = 1.0


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _refused(exc: Overloaded) -> JSONResponse:
    return _error(429, str(exc), headers={"Retry-After": str(int(exc.retry_after_s))})


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

    def route(model_id: str) -> SessionGroup | JSONResponse:
        try:
            return runtime.group(model_id)
        except UnknownModel as exc:
            return _error(404, str(exc))
        except ModelUnavailable as exc:
            return _error(503, str(exc))

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
        group = route(request.path_params["model"])
        if isinstance(group, JSONResponse):
            return group
        return JSONResponse(group.model.schema.to_dict())

    async def infer(request: Request) -> Response:
        arrival = time.monotonic()
        model_id = request.path_params["model"]
        # Whatever can refuse a query without its body is decided before the body is read:
        # the event loop never reads or parses a body that admission control turns away, so
        # a flooding tenant's large JSON queries do not delay the other tenants' requests.
        group = route(model_id)
        if isinstance(group, JSONResponse):
            return group
        tenant, sla = group.tenant, group.sla_s
        content_type = request.headers.get("content-type", "application/json")
        content_type = content_type.split(";", 1)[0].strip().lower()
        if content_type != "application/json" and content_type not in NPZ_TYPES:
            return _error(
                415, f"content type {content_type!r}: use application/json or application/x-npz"
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return _error(413, f"body of {declared} bytes exceeds {max_body_bytes}")
        try:
            runtime.check_admission(model_id, arrival)
        except Overloaded as exc:
            metrics.observe(tenant, model_id, "rejected", None, sla)
            return _refused(exc)
        except UnknownModel as exc:  # the plan changed since the route was looked up
            return _error(404, str(exc))
        except ModelUnavailable as exc:
            return _error(503, str(exc))
        body = await _read_body(request, max_body_bytes)
        if body is None:
            return _error(413, f"body exceeds {max_body_bytes} bytes")
        try:
            if content_type == "application/json":
                query = codec.parse_query_json(group.model.schema, body)
            else:
                query = codec.parse_query_npz(group.model.schema, body)
        except ValueError as exc:
            metrics.observe(tenant, model_id, "invalid", None, sla)
            return _error(400, str(exc))
        try:
            pending = runtime.submit(model_id, query, arrival)
        except Overloaded as exc:  # the query's size counts too: admitted again, with its rows
            metrics.observe(tenant, model_id, "rejected", None, sla)
            return _refused(exc)
        except UnknownModel as exc:  # the plan changed since the route was looked up
            return _error(404, str(exc))
        except (ModelUnavailable, GroupClosed) as exc:
            return _error(503, str(exc))
        timeout = pending.deadline - time.monotonic() + ANSWER_GRACE_S
        try:
            scores = await asyncio.wait_for(asyncio.wrap_future(pending.future), timeout)
        except (DeadlineExceeded, TimeoutError) as exc:
            metrics.observe(tenant, model_id, "expired", None, sla)
            return _error(504, str(exc) or "deadline exceeded")
        except ModelFailed as exc:
            metrics.observe(tenant, model_id, "failed", None, sla)
            return _error(500, str(exc))
        metrics.observe(tenant, model_id, "ok", time.monotonic() - arrival, sla)
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


class BackgroundServer:
    """A uvicorn server on its own thread, for tests and the loopback benchmark.

    ``with BackgroundServer(app, "127.0.0.1", 0) as server:`` binds a free port (read it from
    ``server.port``) and stops the server on exit, after the requests in progress end or, with
    ``graceful_shutdown_s``, after at most that many seconds (a long-poll may hold one for long).
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        graceful_shutdown_s: int | None = None,
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self.host = host
        self.port = port

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = int(sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10.0)
