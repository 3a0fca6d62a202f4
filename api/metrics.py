"""Prometheus metrics of one app instance (``GET /metrics``) and the middleware that counts.

Each app gets its own registry, so tests can build many apps without clashing collectors.
Under ``gpufair serve --workers N`` the port is served by N processes and a scrape reaches one
of them, so the processes keep their values in prometheus_client's multiprocess files
(``PROMETHEUS_MULTIPROC_DIR``, a fresh directory ``gpufair serve`` makes for the run) and
``/metrics`` answers the sum over all of them (the allocation version: their maximum).
Every label has a bounded set of values, whatever callers send: requests are labelled by the
route's handler name (``read_plan``, or ``unmatched`` for any path no route takes), never by raw
path, which would give one series per node or model, and by method only among the methods
HTTP defines (``other`` for any made-up one).
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Where prometheus_client keeps each process's values when several processes serve one port;
# read by prometheus_client itself when it is imported, so it is set before the processes start.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gpufair_api_requests_total",
            "HTTP requests by handler, method and status",
            ["method", "handler", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gpufair_api_request_seconds",
            "HTTP request latency by handler",
            ["method", "handler"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
            registry=self.registry,
        )
        self.solve_seconds = Histogram(
            "gpufair_solve_seconds",
            "Wall time of one allocation solve, certificate check included",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.allocation_version = Gauge(
            "gpufair_allocation_version",
            "Version of the newest allocation this instance stored",
            registry=self.registry,
            multiprocess_mode="max",
        )

    def exposition(self) -> bytes:
        """The text ``GET /metrics`` sends: this app's registry, or, where the values live in
        multiprocess files, every process's values combined."""
        directory = os.environ.get(MULTIPROCESS_DIR_ENV)
        if not directory:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=directory)
        return generate_latest(combined)


class MetricsMiddleware:
    """Counts every HTTP request and times it to the end of its response."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            handler = getattr(scope.get("route"), "name", "unmatched")
            method = method_label(scope["method"])
            self.metrics.requests.labels(method, handler, str(status)).inc()
            self.metrics.latency.labels(method, handler).observe(time.perf_counter() - started)
